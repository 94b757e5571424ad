#!/usr/bin/env bash
# tests/browser.rs under wasm-bindgen-test in real headless Chromium, against
# a running stack:
#
#   tests/wasm/run.sh
#
# Needs: wasm-pack, wasm-bindgen-cli (= Cargo.lock's wasm-bindgen),
# chromium + chromedriver (/usr/bin), psql, and a running stack:
#   CREDITGATE_URL               default http://127.0.0.1:54321 (must answer CORS)
#   CREDITGATE_SERVICE_ROLE_KEY  default the local well-known key
#   CREDITGATE_DB_URL            default postgresql://postgres:postgres@127.0.0.1:54322/postgres
# The browser cannot reach the database, so the test users are created here
# (in auth.users) and their ids compiled into the test.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

export CREDITGATE_URL=${CREDITGATE_URL:-http://127.0.0.1:54321}
export CREDITGATE_SERVICE_ROLE_KEY=${CREDITGATE_SERVICE_ROLE_KEY:-eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU}
db_url=${CREDITGATE_DB_URL:-postgresql://postgres:postgres@127.0.0.1:54322/postgres}

ids=()
for _ in 1 2 3 4 5; do
  id=$(cat /proc/sys/kernel/random/uuid)
  psql "$db_url" -v ON_ERROR_STOP=1 -qAt \
    -c "INSERT INTO auth.users (id, email) VALUES ('$id', '$id@creditgate.test')"
  ids+=("$id")
done
CREDITGATE_TEST_USER_IDS=$(IFS=,; echo "${ids[*]}")
export CREDITGATE_TEST_USER_IDS

# Only the browser suite: the unit tests run natively (cargo test).
exec wasm-pack test --headless --chrome --test browser
