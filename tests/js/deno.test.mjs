// The built package under Deno: resolved by name from node_modules (the
// tarball run.sh installs), so the "deno" export of pkg/package.json (the
// entry the Edge Function uses) runs.
import * as creditgate from "creditgate";
import { scenarios } from "./scenarios.mjs";

Deno.test("the package resolves to its Deno entry point", () => {
  const resolved = import.meta.resolve("creditgate");
  if (!/\/node_modules\/creditgate\/deno\.js$/.test(resolved)) throw new Error(`resolved to ${resolved}`);
});

for (const [name, scenario] of scenarios) {
  Deno.test(name, () => scenario(creditgate));
}
