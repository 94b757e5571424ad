export * from "./creditgate.js";
export { default } from "./creditgate.js";
