#!/usr/bin/env bash
# The official MCP Python SDK as a 2026-07-28 (stateless) client of the aggregated route
# /apps/{id}/mcp, over one upstream of each era: a 2026-capable server on the Python SDK
# (modern_server.py) and the 2025-only reference server (@modelcontextprotocol/server-everything).
# Then the same SDK as a 2025-era client of the same route (era-specific fields, cancellation).
# See mcp_python_2026.py for what is checked; here, that the 2025 upstream saw one `initialize`
# (the gateway's, on the 2026 client's behalf) for all its requests, and the 2025 client's own.
# Needs the venv and the Node prefix that scripts/setup.sh installs (KEYGATE_E2E_VENV,
# KEYGATE_E2E_NODE).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client, mcp.server.mcpserver, uvicorn' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"

# --- the upstreams: one of each era ---
MODERN_PORT=$(free_port)
"$PY" "$HERE/modern_server.py" "$MODERN_PORT" >"$WORK/modern.log" 2>&1 &
PIDS+=("$!")
wait_port "$MODERN_PORT" "$!" "modern_server.py"
EVERYTHING_PORT=$(free_port)
start_everything "$EVERYTHING_PORT" streamableHttp everything

# --- the gateway and an application with both attached ---
start_gateway
create_app python-2026
MODERN_SLUG=$(integrate modern "http://127.0.0.1:$MODERN_PORT/mcp")
EVERYTHING_SLUG=$(integrate everything "http://127.0.0.1:$EVERYTHING_PORT/mcp")
[ "$MODERN_SLUG" = modern ] || fail "slug of integration 'modern' is '$MODERN_SLUG'"
[ "$EVERYTHING_SLUG" = everything ] || fail "slug of integration 'everything' is '$EVERYTHING_SLUG'"

timeout 70 "$PY" "$HERE/mcp_python_2026.py" "$URL/apps/$AID/mcp" "$EMAIL" "$PASSWORD" ||
  fail "the MCP Python SDK as a 2026-07-28 client of the aggregated route"
# The 2025 upstream saw one initialize for all the 2026 client's requests (the gateway's, on its
# behalf), and one for the 2025 client's session that follows it (that client's own).
inits=$(grep -c "Session initialized" "$WORK/everything.log" || true)
[ "$inits" = 2 ] || fail "server-everything saw $inits initialize handshakes, expected 2"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "mcp_python_2026: ok"
