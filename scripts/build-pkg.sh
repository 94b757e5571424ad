#!/usr/bin/env bash
# Builds the two wasm packages, each from the same crate with one feature:
#
# - pkg/: the npm package `creditgate` (feature `client`: CreditClient,
#   rateLimitHeaders, CreditError), one directory that works in Node 20+
#   (`npm install ./pkg`, then `import`), Deno and browsers/bundlers, chosen
#   by package.json "exports".
# - pkg-function/: the Edge Functions' module (feature `handler`:
#   createHandler, handle, createStripeHandler, CreditError), copied into
#   supabase/functions/credits/pkg and supabase/functions/stripe-webhook/pkg.
#
# Neither carries the other's code: a module is compiled on every cold start
# (the function's) or every import (the app's), so bytes are time.
#
#   scripts/build-pkg.sh        # release builds, wasm-opt -Oz, sizes printed
#
# Assumes the toolchain `cargo dev setup` installs: the wasm32 target,
# wasm-pack, wasm-bindgen-cli equal to Cargo.lock's wasm-bindgen, and the
# npm `binaryen` in ./node_modules (never Debian's wasm-opt: binaryen 108
# writes a module that validates and then fails to load, "Table.set():
# Argument 1 is invalid for table"). Idempotent: pkg/ is rebuilt each time.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
templates=scripts/pkg
wasm_opt=${WASM_OPT:-$root/node_modules/.bin/wasm-opt}

fail() { echo "build-pkg: $*" >&2; exit 1; }
command -v wasm-pack >/dev/null || fail "wasm-pack is not on PATH (cargo install wasm-pack --locked)"
command -v wasm-bindgen >/dev/null || fail "wasm-bindgen is not on PATH (cargo install wasm-bindgen-cli --version <Cargo.lock's>)"
[ -x "$wasm_opt" ] || fail "$wasm_opt is missing (npm install: the binaryen package)"

# wasm-pack looks for wasm-opt on PATH even when told not to run it on some
# paths; put the good one first so Debian's (or a GitHub download) never is.
export PATH="$(dirname "$wasm_opt"):$PATH"

# build <features> <dir> <package name>: one package in <dir>.
build() {
  local features=$1 out=$2 name=$3
  # 1. Compile and generate the JS glue (--target web: ES modules, and an
  #    `initSync` any runtime can feed with the .wasm bytes). --no-pack: the
  #    package.json and README are ours, written below.
  rm -rf "$out"
  wasm-pack build --release --target web --no-pack --out-dir "$out" --out-name creditgate "$root" \
    -- --no-default-features --features "$features"

  # 2. Shrink. (The target_features section stays, so wasm-opt accepts the
  #    bulk memory and other post-MVP operations rustc emits.)
  local wasm="$out/creditgate_bg.wasm" raw_bytes
  raw_bytes=$(stat -c %s "$wasm")
  "$wasm_opt" -Oz --strip-debug --strip-producers "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"

  # 3. The entry points. The JS CreditError lives in a wasm-bindgen snippet
  #    whose directory name carries a hash; every entry re-exports that very
  #    module, so `instanceof CreditError` holds for what the glue throws.
  local credit_error entry
  credit_error=$(cd "$out" && ls snippets/*/src/js/credit_error.js)
  [ "$(printf '%s\n' "$credit_error" | wc -l)" = 1 ] || fail "expected one credit_error.js snippet, found: $credit_error"
  for entry in node.js deno.js web.js raw.js; do
    sed "s#__CREDIT_ERROR__#${credit_error}#" "$templates/$entry" > "$out/$entry"
  done
  cp "$templates/index.d.ts" "$templates/raw.d.ts" "$templates/README.md" "$out/"

  # 4. package.json: version and metadata from Cargo.toml's [package].
  NAME=$name OUT=$out VERSION=$(cargo_field version) DESCRIPTION=$(cargo_field description) \
  LICENSE=$(cargo_field license) REPOSITORY=$(cargo_field repository) \
  node --input-type=module - <<'EOF'
import { writeFileSync } from "node:fs";
const env = process.env;
const pkg = {
  name: env.NAME,
  version: env.VERSION,
  description: env.DESCRIPTION,
  license: env.LICENSE,
  repository: { type: "git", url: env.REPOSITORY },
  type: "module",
  // Node picks "node", Deno "deno", browsers and bundlers "browser"/"default".
  exports: {
    ".": {
      types: "./index.d.ts",
      deno: "./deno.js",
      node: "./node.js",
      browser: "./web.js",
      default: "./web.js",
    },
    "./raw": { types: "./raw.d.ts", default: "./raw.js" },
    "./creditgate_bg.wasm": "./creditgate_bg.wasm",
    "./package.json": "./package.json",
  },
  main: "./node.js",
  module: "./web.js",
  types: "./index.d.ts",
  files: [
    "creditgate_bg.wasm", "creditgate.js", "creditgate.d.ts", "creditgate_bg.wasm.d.ts",
    "node.js", "deno.js", "web.js", "raw.js", "index.d.ts", "raw.d.ts", "snippets/", "README.md",
  ],
  // The entry points instantiate the module on import.
  sideEffects: true,
  engines: { node: ">=20" },
  keywords: ["supabase", "credits", "rate-limit", "billing", "postgrest", "wasm"],
};
// The Edge Functions' module is not published: it ships inside the functions.
if (env.NAME !== "creditgate") pkg.private = true;
writeFileSync(`${env.OUT}/package.json`, JSON.stringify(pkg, null, 2) + "\n");
EOF

  # 5. What shipped.
  local opt_bytes gzip_bytes
  opt_bytes=$(stat -c %s "$wasm")
  gzip_bytes=$(gzip -9 -c "$wasm" | wc -c)
  echo "build-pkg: $wasm ${opt_bytes} bytes (${raw_bytes} before wasm-opt), ${gzip_bytes} bytes gzipped"
}

cargo_field() {
  awk -v key="$1" '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && $1 == key { sub(/^[^=]*= *"/, ""); sub(/"$/, ""); print; exit }
  ' Cargo.toml
}

build client pkg creditgate
build handler pkg-function creditgate-function

# 6. The Edge Functions' copies (supabase/functions/*/pkg, git-ignored):
#    `supabase functions deploy` bundles only what is under supabase/functions
#    (imports from outside it do not deploy), and supabase/config.toml ships
#    the .wasm from there as a static file.
#    `credits` and `stripe-webhook` load the same module (pkg-function/).
for function_pkg in supabase/functions/credits/pkg supabase/functions/stripe-webhook/pkg; do
  if [ -d "$(dirname "$function_pkg")" ]; then
    rm -rf "$function_pkg"
    cp -r pkg-function "$function_pkg"
  fi
done
