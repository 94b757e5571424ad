// The built package under Node: installed like any npm package
// (`npm install ../../pkg`, see package.json) and imported by name, so the
// "node" export of pkg/package.json is what runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as creditgate from "creditgate";
import { scenarios } from "./scenarios.mjs";

test("the package resolves to its Node entry point", () => {
  assert.match(import.meta.resolve("creditgate"), /\/pkg\/node\.js$/);
});

for (const [name, scenario] of scenarios) {
  test(name, () => scenario(creditgate));
}
