// creditgate for browsers and bundlers (Vite, webpack 5, esbuild, Rollup):
// the .wasm is fetched relative to this module, which bundlers understand
// as an asset reference. Uses top-level await.
import init from "./creditgate.js";

await init({ module_or_path: new URL("./creditgate_bg.wasm", import.meta.url) });

export * from "./creditgate.js";
export { CreditError } from "./__CREDIT_ERROR__";
