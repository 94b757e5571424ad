// The built package's browser entry (pkg/web.js) in real headless Chromium:
// the page imports it as a browser (or a bundler's output) would, fetching
// the .wasm over HTTP, and calls the stack cross-origin (CORS). Run by
// `node --test` (run.sh); playwright-core drives /usr/bin/chromium.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { API_URL, SERVICE_ROLE_KEY, createUser } from "./scenarios.mjs";

const pkgDir = fileURLToPath(new URL("../../pkg/", import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };

let server;
let browser;
let page;

before(async () => {
  // A static server for pkg/ and an empty page: the page's origin differs
  // from the API's, as an app's would.
  server = createServer(async (request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, "http://x").pathname));
    if (path === "/") {
      response.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>creditgate</title>");
      return;
    }
    if (!path.startsWith("/pkg/")) return response.writeHead(404).end();
    try {
      const body = await readFile(join(pkgDir, path.slice("/pkg/".length)));
      response.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" }).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  assert.deepEqual(errors, []);
});

after(async () => {
  await browser?.close();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve()));
});

/** Runs `body(creditgate, args)` in the page, with pkg/web.js imported there. */
function inPage(body, args) {
  return page.evaluate(async ({ source, args }) => {
    const creditgate = await import("/pkg/web.js");
    // eslint-disable-next-line no-new-func
    const run = new Function("creditgate", "args", `return (${source})(creditgate, args);`);
    return run(creditgate, args);
  }, { source: body.toString(), args });
}

test("in a browser: charge, insufficient credits as a CreditError, run refunding on throw", async () => {
  const userId = createUser();
  const outcome = await inPage(async ({ CreditClient, CreditError }, { url, key, userId }) => {
    const credits = new CreditClient({ url, serviceRoleKey: key });
    const granted = await credits.grant({ userId, amount: 5, reason: "browser test" });
    const charge = await credits.charge({ userId, operation: "image_generation", cost: 2 });
    const refused = await credits.charge({ userId, operation: "image_generation", cost: 10 }).catch((e) => e);
    const thrown = await credits
      .run({ userId, operation: "image_generation", cost: 1 }, () => { throw new Error("generator down"); })
      .catch((e) => e.message);
    return {
      granted: granted.balance,
      charged: charge.balance,
      isCreditError: refused instanceof CreditError && refused instanceof Error,
      code: refused.code,
      status: refused.status,
      details: refused.details,
      thrown,
      after: await credits.balance(userId),
    };
  }, { url: API_URL, key: SERVICE_ROLE_KEY, userId });
  assert.deepEqual(outcome, {
    granted: 5,
    charged: 3,
    isCreditError: true,
    code: "insufficient_credits",
    status: 402,
    details: { balance: 3, needed: 10 },
    thrown: "generator down",
    after: 3,
  });
});

test("in a browser: a rate-limit denial and its headers", async () => {
  const outcome = await inPage(async ({ CreditClient, rateLimitHeaders }, { url, key, limitKey }) => {
    const credits = new CreditClient({ url, serviceRoleKey: key });
    const request = { key: limitKey, limit: 1, windowSeconds: 10 };
    const allowed = await credits.limit(request);
    const denied = await credits.limit(request);
    return { allowed: allowed.success, denied: denied.success, retryAfter: denied.retryAfter, reset: denied.reset, headers: rateLimitHeaders(denied) };
  }, { url: API_URL, key: SERVICE_ROLE_KEY, limitKey: `browser:${crypto.randomUUID()}` });
  assert.equal(outcome.allowed, true);
  assert.equal(outcome.denied, false);
  assert.deepEqual(outcome.headers, {
    "RateLimit-Policy": '"default";q=1;w=10',
    "RateLimit": `"default";r=0;t=${outcome.reset}`,
    "Retry-After": String(outcome.retryAfter),
  });
});

test("in a browser: invalid input is refused without a request", async () => {
  const outcome = await inPage(async ({ CreditClient }) => {
    const credits = new CreditClient({ url: "http://127.0.0.1:9", serviceRoleKey: "key" });
    const error = await credits.charge({ userId: "", operation: "x", cost: 0 }).catch((e) => e);
    return { code: error.code, field: error.details.field };
  });
  assert.deepEqual(outcome, { code: "invalid_argument", field: "userId" });
});
