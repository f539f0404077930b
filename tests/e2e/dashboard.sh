#!/usr/bin/env bash
# The dashboard (/ui) in a real headless Chromium (Debian's chromium + chromium-driver, which
# scripts/setup.sh installs): dashboard.py signs in as an owner and as a member and operates
# the gateway through the pages against a real MCP server (server-everything), with the official
# MCP Python SDK as the agent, and axe-core (pinned by tests/e2e/axe) checks the main pages. With KEYGATE_E2E_SCREENSHOTS=DIR it saves the main pages there.
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

command -v chromedriver >/dev/null && [ -x /usr/bin/chromium ] ||
  fail "no chromium/chromedriver: run scripts/setup.sh"

export KEYGATE_E2E_AXE_JS="${KEYGATE_E2E_AXE:-$HOME/.cache/keygate-e2e/axe}/node_modules/axe-core/axe.min.js"
[ -f "$KEYGATE_E2E_AXE_JS" ] || fail "no axe-core at $KEYGATE_E2E_AXE_JS: run scripts/setup.sh"

UPORT=$(free_port)
start_everything "$UPORT" streamableHttp everything

start_gateway
MEMBER=member@example.com
echo "$PASSWORD" | "$BIN" --data-dir "$WORK/data" user add "$MEMBER" --role member --password-stdin >/dev/null ||
  fail "user add $MEMBER"

DPORT=$(free_port)
chromedriver --port="$DPORT" >"$WORK/chromedriver.log" 2>&1 &
PIDS+=("$!")
wait_port "$DPORT" "$!" chromedriver

timeout 180 "$PY" "$HERE/dashboard.py" "$URL" "http://127.0.0.1:$UPORT/mcp" \
  "http://127.0.0.1:$DPORT" "$EMAIL" "$MEMBER" "$PASSWORD" || fail "the dashboard in Chromium"

# The member's sign-out revoked her dashboard token through the revocation endpoint's logic.
! grep -q "could not revoke" "$WORK/serve.log" || fail "sign-out could not revoke the dashboard's token"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "dashboard: ok"
