// creditgate's types: the same for every entry point (Node, Deno, browsers).
export * from "./creditgate.js";
