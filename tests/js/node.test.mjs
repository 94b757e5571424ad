// The built package under Node: packed and installed from the tarball by
// run.sh (as a user gets it), imported by name, so the "node" export of
// pkg/package.json is what runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as creditgate from "creditgate";
import { scenarios } from "./scenarios.mjs";

test("the package resolves to its Node entry point", () => {
  assert.match(import.meta.resolve("creditgate"), /\/node_modules\/creditgate\/node\.js$/);
});

test("the package is the client only: the Edge Functions' handler is a separate build", () => {
  assert.equal(typeof creditgate.CreditClient, "function");
  assert.equal(typeof creditgate.rateLimitHeaders, "function");
  for (const handlerExport of ["createHandler", "handle", "createStripeHandler", "CreditsHandler", "StripeHandler"]) {
    assert.equal(creditgate[handlerExport], undefined, handlerExport);
  }
});

for (const [name, scenario] of scenarios) {
  test(name, () => scenario(creditgate));
}
