// `cargo dev bench`: how long the wasm module takes to become usable in Deno.
// usage: deno run --allow-read instantiate.ts <dir of the package> <repeats>
// Prints JSON:
//   first_import_ms: importing the package's Deno entry in a fresh process
//     (read, compile, instantiate, glue): what a cold Edge Function pays once;
//   compile_ms_median, instantiate_ms_median: `repeats` compiles of the same
//     bytes, and instantiations of the compiled module (linked to stub
//     imports: linking and memory set-up, no calls into it).
const [dir, repeatsArg] = Deno.args;
const repeats = Number(repeatsArg ?? "20");
let started = performance.now();
const pkg = await import(new URL(`file://${dir}/deno.js`).href);
const firstImportMs = performance.now() - started;
const bytes = await Deno.readFile(`${dir}/creditgate_bg.wasm`);
const compileMs: number[] = [];
const instantiateMs: number[] = [];
for (let i = 0; i < repeats; i++) {
  started = performance.now();
  const module = await WebAssembly.compile(bytes);
  compileMs.push(performance.now() - started);
  const imports: Record<string, Record<string, WebAssembly.ImportValue>> = {};
  for (const wanted of WebAssembly.Module.imports(module)) {
    if (wanted.kind !== "function") throw new Error(`unexpected ${wanted.kind} import ${wanted.module}.${wanted.name}`);
    (imports[wanted.module] ??= {})[wanted.name] = () => {};
  }
  started = performance.now();
  await WebAssembly.instantiate(module, imports);
  instantiateMs.push(performance.now() - started);
}
const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
console.log(JSON.stringify({
  first_import_ms: firstImportMs,
  compile_ms_median: median(compileMs),
  instantiate_ms_median: median(instantiateMs),
  exports: Object.keys(pkg).length,
}));
