#!/usr/bin/env bash
# The official MCP Python SDK on the aggregated route /apps/{id}/mcp over a session's whole life,
# against the real @modelcontextprotocol/server-everything: a Streamable-HTTP integration next to
# a legacy HTTP+SSE one (whose tools must be listed and callable), a restart of the Streamable
# upstream (the client is told to initialize again, never handed an empty list or the upstream's
# own 400), and the end of a session (after the SDK's DELETE its id is refused with 404). See
# aggregated_lifecycle.py. Needs the venv and the Node prefix that scripts/setup.sh installs.
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client.streamable_http' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
[ -f "$EVERYTHING" ] || fail "no server-everything at $EVERYTHING: run scripts/setup.sh"

# The Streamable-HTTP upstream is started (and restarted) by aggregated_lifecycle.py itself.
HTTP_UPORT=$(free_port)
SSE_UPORT=$(free_port)
start_everything "$SSE_UPORT" sse everything-sse

start_gateway
create_app lifecycle-e2e
HTTP_SLUG=$(integrate everything "http://127.0.0.1:$HTTP_UPORT/mcp")
SSE_SLUG=$(integrate everything-sse "http://127.0.0.1:$SSE_UPORT/sse")

KEYGATE_E2E_UPSTREAM_LOG="$WORK/everything-http.log" timeout 90 "$PY" "$HERE/aggregated_lifecycle.py" \
  "$URL/apps/$AID/mcp" "$EMAIL" "$PASSWORD" "$HTTP_SLUG" "$SSE_SLUG" "$EVERYTHING" "$HTTP_UPORT" \
  || fail "the MCP Python SDK over an aggregated session's life"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "aggregated_lifecycle: ok"
