// Compile-time checks of the package's TypeScript types (`deno check`): the
// signatures are real types, not `any`. Every `@ts-expect-error` below must
// be an error, so any `any` leaking into these signatures fails the check.
// Never executed.
import {
  type ChargeResult,
  type ChargeWithLimitResult,
  type CompleteResult,
  CreditClient,
  CreditError,
  type CreditErrorCode,
  type CreditWebhook,
  type RateLimitHeaders,
  rateLimitHeaders,
  type RateLimitResult,
  verifyWebhookSignature,
} from "creditgate";

export async function typed(): Promise<void> {
  const credits = new CreditClient({ url: "http://127.0.0.1:54321", serviceRoleKey: "key" });
  // @ts-expect-error: serviceRoleKey is required
  new CreditClient({ url: "http://127.0.0.1:54321" });

  const charge: ChargeResult = await credits.charge({ userId: "u", operation: "image", cost: 1, metadata: { a: [1, "b", null] } });
  const jobId: string = charge.jobId;
  // @ts-expect-error: jobId is a string
  const notNumber: number = charge.jobId;
  // @ts-expect-error: cost is required
  await credits.charge({ userId: "u", operation: "image" });
  // @ts-expect-error: cost is a number
  await credits.charge({ userId: "u", operation: "image", cost: "1" });
  // @ts-expect-error: metadata must be JSON (no functions)
  await credits.charge({ userId: "u", operation: "image", cost: 1, metadata: { f: () => 1 } });

  const completion: CompleteResult = await credits.complete({ jobId, actualCost: 0 });
  const refunded: number = completion.refunded;
  const { balance } = await credits.refund({ userId: "u", jobId, reason: "failed" });
  const granted: number = (await credits.grant({ userId: "u", amount: 5, reason: "top-up", idempotencyKey: "evt_1" })).balance;
  const current: number = await credits.balance("u");
  // @ts-expect-error: balance() resolves to a number
  const notString: string = await credits.balance("u");

  const limit: RateLimitResult = await credits.limit({ key: "k", limit: 10, windowSeconds: 60 });
  const headers: RateLimitHeaders = rateLimitHeaders(limit, "per-user");
  const policy: string = headers["RateLimit-Policy"];
  const retryAfter: string | undefined = headers["Retry-After"];
  // @ts-expect-error: Retry-After may be absent
  const alwaysThere: string = headers["Retry-After"];

  const both: ChargeWithLimitResult = await credits.chargeWithLimit({
    userId: "u", operation: "image", cost: 1, limitKey: "k", limit: 1, windowSeconds: 60,
  });
  if (both.success) {
    const id: string = both.jobId;
  } else {
    const none: null = both.jobId;
    const wait: number = both.retryAfter;
  }
  rateLimitHeaders(both);

  const ran = await credits.run({ userId: "u", operation: "image", cost: 1, idempotencyKey: "k" }, async (job) => {
    const held: number = job.balance;
    return { resultUrl: "https://x", actualCost: 1, pixels: 42 };
  });
  const pixels: number = ran.value.pixels;
  // @ts-expect-error: value keeps the callback's type
  const notPixels: string = ran.value.pixels;
  const settled: CompleteResult = ran.completion;

  try {
    await credits.charge({ userId: "u", operation: "image", cost: 1 });
  } catch (error) {
    if (error instanceof CreditError) {
      const code: CreditErrorCode = error.code;
      const status: number = error.status;
      const retryable: boolean = error.retryable;
      // @ts-expect-error: not a CreditErrorCode
      if (error.code === "insufficient_funds") throw error;
    }
  }
  const raw = '{"id":1,"type":"low_balance","userId":"u","payload":{},"createdAt":"2026-01-01T00:00:00Z"}';
  const verified: boolean = verifyWebhookSignature(raw, "t=1,v1=00", ["whsec_a", "whsec_b"], 600);
  verifyWebhookSignature(new TextEncoder().encode(raw), null, "whsec_a");
  // @ts-expect-error: the body is a string or bytes
  verifyWebhookSignature({ id: 1 }, "t=1,v1=00", "whsec_a");
  const webhook: CreditWebhook = JSON.parse(raw);
  const eventId: number = webhook.id;
  // @ts-expect-error: the user is userId
  const notUser: string = webhook.user_id;
  void [notNumber, refunded, balance, granted, current, notString, policy, retryAfter, alwaysThere, pixels, notPixels, settled, verified, eventId, notUser];
}
