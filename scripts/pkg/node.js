// creditgate for Node.js (20+): the module is read from disk next to this
// file and instantiated synchronously, so importing is all it takes.
import { readFileSync } from "node:fs";
import { initSync } from "./creditgate.js";

initSync({ module: readFileSync(new URL("./creditgate_bg.wasm", import.meta.url)) });

export * from "./creditgate.js";
export { CreditError } from "./__CREDIT_ERROR__";
