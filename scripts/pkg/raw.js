// creditgate without automatic loading: call `init(...)` (async) or
// `initSync({ module })` yourself with the .wasm bytes or a compiled module,
// e.g. when the .wasm is shipped as a static file of an Edge Function.
export * from "./creditgate.js";
export { default } from "./creditgate.js";
export { CreditError } from "./__CREDIT_ERROR__";
