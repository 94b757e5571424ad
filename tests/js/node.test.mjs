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

for (const [name, scenario] of scenarios) {
  test(name, () => scenario(creditgate));
}
