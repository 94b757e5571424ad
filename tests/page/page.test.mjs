// The demo page at / of the local stack, in real headless Chromium: the demo
// user generates (success), generates with a failing provider (refunded),
// and generates until rate-limited, and the page's numbers follow the
// database. Saves a screenshot to tests/output/page.png.
//
//   node --experimental-websocket --test tests/page
//
// Needs a running stack (CREDITGATE_URL, CREDITGATE_DB_URL, CREDITGATE_SERVICE_ROLE_KEY;
// defaults: the local stack), psql, playwright-core, and /usr/bin/chromium
// (or CHROMIUM_PATH).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { SERVICE_ROLE_KEY, URL, sql } from "../e2e/helpers.mjs";

const output = fileURLToPath(new globalThis.URL("../output/", import.meta.url));
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];

const databaseBalance = (userId) => Number(sql(`SELECT credits FROM public.users WHERE id = '${userId}'`));

test("the demo page: generate, a refunded failure, then the rate limit, with the numbers following", async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium", args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(`${URL}/`);
    const userId = (await page.textContent("#user-id")).trim();
    assert.match(userId, /^[0-9a-f-]{36}$/, "the stack filled in the demo user");

    // Enough credits for the run, whatever earlier runs spent (the service route).
    const topUp = await fetch(`${URL}/functions/v1/credits/grant`, {
      method: "POST",
      headers: { Authorization: `Bearer ${SERVICE_ROLE_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ userId, amount: 100, reason: "page test top-up" }),
    });
    assert.equal(topUp.status, 200, await topUp.clone().text());
    await page.reload();
    await page.waitForSelector("#balance[data-loaded='true']");
    const balance = async () => Number(await page.textContent("#balance"));
    const start = await balance();
    assert.equal(start, databaseBalance(userId), "the page shows the database's balance");

    let actions = 0;
    const generate = async (prompt) => {
      await page.fill("#prompt", prompt);
      await page.click("#generate");
      actions += 1;
      await page.waitForFunction((n) => Number(document.querySelector("#status").dataset.seq) >= n, actions);
      return page.getAttribute("#status", "data-state");
    };

    // 1. Success: charged once, the job completed.
    assert.equal(await generate("a watercolor fox in the snow"), "ok", await page.textContent("#status"));
    const cost = Number(await page.textContent("#jobs tbody tr:first-child td.num"));
    assert.ok(cost > 0);
    assert.equal(await balance(), start - cost);
    assert.equal(databaseBalance(userId), start - cost);
    assert.equal(await page.getAttribute("#jobs tbody tr:first-child", "data-status"), "completed");

    // 2. The provider fails: refunded automatically, the balance unchanged.
    await page.click("text=provider fails");
    assert.equal(await page.inputValue("#prompt"), "fail: the provider answers 500");
    assert.equal(await generate(await page.inputValue("#prompt")), "refunded", await page.textContent("#status"));
    assert.equal(await balance(), start - cost, "a failed generation costs nothing");
    assert.equal(databaseBalance(userId), start - cost);
    assert.equal(await page.getAttribute("#jobs tbody tr:first-child", "data-status"), "failed");
    const ledgerTop = await page.$$eval("#ledger tbody tr", (rows) => rows.slice(0, 2).map((row) => row.cells[2].textContent));
    assert.deepEqual(ledgerTop, ["refund", "charge"]);

    // The chart has a point per ledger entry shown, the last at the current balance.
    const points = await page.$$eval("#chart circle", (circles) => circles.map((c) => Number(c.dataset.balance)));
    const entries = Number(sql(`SELECT least(count(*), 100) FROM public.credit_ledger WHERE user_id = '${userId}'`));
    assert.equal(points.length, entries);
    assert.equal(points.at(-1), start - cost);

    // 3. Until the per-user limit says no: 429 shown, nothing charged for it.
    const remaining = Number(await page.getAttribute("#limit", "data-remaining"));
    assert.ok(remaining >= 0);
    let state = null;
    let successes = 1;
    for (let i = 0; i <= remaining; i++) {
      const before = await balance();
      state = await generate("a watercolor fox in the snow");
      if (state === "rate-limited") {
        assert.equal(await balance(), before, "the denied request charged nothing");
        break;
      }
      assert.equal(state, "ok", await page.textContent("#status"));
      successes += 1;
    }
    assert.equal(state, "rate-limited", "the page reached the rate limit");
    assert.match(await page.textContent("#status"), /Retry after \d+ s/);
    assert.equal(successes, 1 + remaining, "exactly the limit was allowed");
    assert.equal(await balance(), start - successes * cost);
    assert.equal(databaseBalance(userId), start - successes * cost);
    assert.deepEqual(errors, [], "no script errors");

    mkdirSync(output, { recursive: true });
    await page.screenshot({ path: `${output}page.png`, fullPage: true });
  } finally {
    await browser.close();
  }
});
