#!/usr/bin/env bash
# The built package (pkg/) under Node and Deno, against a running stack:
#
#   tests/js/run.sh
#
# Needs: pkg/ (scripts/build-pkg.sh; built here if missing), the npm tools
# of the top-level package.json (Deno, playwright-core), /usr/bin/chromium
# (or CHROMIUM_PATH), psql, and a running stack:
#   CREDITGATE_URL               default http://127.0.0.1:54321
#   CREDITGATE_SERVICE_ROLE_KEY  default the local well-known key
#   CREDITGATE_DB_URL            default postgresql://postgres:postgres@127.0.0.1:54322/postgres
#                                (test users are created in auth.users there)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
deno="$root/node_modules/.bin/deno"

[ -f "$root/pkg/package.json" ] || bash "$root/scripts/build-pkg.sh"
[ -x "$deno" ] || { echo "tests/js: $deno missing (npm install at the top level)" >&2; exit 1; }

cd "$here"
# The package as a user gets it: packed (only the files package.json ships)
# and installed from the tarball, a real copy in node_modules/creditgate.
tarballs=$(mktemp -d)
trap 'rm -rf "$tarballs"' EXIT
tarball=$(cd "$root/pkg" && npm pack --silent --pack-destination "$tarballs" | tail -1)
rm -rf node_modules/creditgate
npm install --no-audit --no-fund --no-package-lock --no-save --silent "$tarballs/$tarball"

status=0
echo "== node --test (Node $(node --version)): the node entry, and the web entry in headless Chromium"
node --test node.test.mjs browser.test.mjs || status=1
echo "== deno check: the package's TypeScript types"
"$deno" check types.check.ts || status=1
echo "== deno test ($("$deno" --version | head -1))"
# --no-check: the scenarios are JS using node: modules; the types are checked above.
"$deno" test --no-check --allow-net --allow-read --allow-env --allow-run=psql deno.test.mjs || status=1
exit $status
