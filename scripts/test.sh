#!/usr/bin/env bash
# The whole test suite: unit and API tests (SQLite and PostgreSQL), then the end-to-end tests
# that drive the real binary with curl. CI runs exactly this (.ci/run).
#
# PostgreSQL: KEYGATE_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres);
# each test creates and drops its own database.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup.sh

if [ "${CI:-}" = "true" ]; then
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

cargo build --workspace --locked --bin keygate
cargo test --workspace --locked

passed=0
failed=0
for t in tests/e2e/*.sh; do
  echo "=== e2e: $t"
  if KEYGATE_BIN="$CARGO_TARGET_DIR/debug/keygate" bash "$t"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "e2e FAILED: $t"
  fi
done
echo "e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
