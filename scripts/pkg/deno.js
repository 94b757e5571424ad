// creditgate for Deno (and Supabase Edge Functions). A local copy of the
// package needs --allow-read for the .wasm beside this file; a remote one
// (https:) is fetched. The API needs --allow-net for the project's host.
import { initSync } from "./creditgate.js";

const wasmUrl = new URL("./creditgate_bg.wasm", import.meta.url);
const bytes = wasmUrl.protocol === "file:"
  ? await Deno.readFile(wasmUrl)
  : new Uint8Array(await (await fetch(wasmUrl)).arrayBuffer());
initSync({ module: bytes });

export * from "./creditgate.js";
export { CreditError } from "./__CREDIT_ERROR__";
