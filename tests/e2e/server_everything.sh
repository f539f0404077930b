#!/usr/bin/env bash
# The official MCP Python SDK, through keygate's pass-through route /apps/{id}/mcp/{slug}, against
# the real MCP reference server (@modelcontextprotocol/server-everything): initialize, tools
# (echo, get-sum, progress, sampling and elicitation round trips), resources and prompts, over
# Streamable HTTP and over the legacy HTTP+SSE transport; then through the aggregated route
# /apps/{id}/mcp over two Streamable-HTTP integrations (two server-everything processes) and the
# HTTP+SSE one: prefixed tools and prompts, routed calls, namespaced sampling/elicitation ids,
# resources, completions and resource subscriptions (see server_everything.py).
# Needs the venv and the Node prefix that scripts/setup.sh installs (KEYGATE_E2E_VENV,
# KEYGATE_E2E_NODE).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client.sse, mcp.client.auth' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"

# --- the upstreams: one server-everything per transport (its PORT env var, transport as argv),
# and a second Streamable-HTTP one for the aggregated route. KEYGATE_E2E_UPSTREAM names each
# Streamable-HTTP one by its integration's slug: its get-env tool shows which process answered.
HTTP_UPORT=$(free_port)
KEYGATE_E2E_UPSTREAM=everything start_everything "$HTTP_UPORT" streamableHttp everything-http
HTTP2_UPORT=$(free_port)
KEYGATE_E2E_UPSTREAM=everything2 start_everything "$HTTP2_UPORT" streamableHttp everything-http2
SSE_UPORT=$(free_port)
KEYGATE_E2E_UPSTREAM=everything-sse start_everything "$SSE_UPORT" sse everything-sse

# --- the gateway, an owner, a service account and its management token ---
start_gateway

# --- an application with all three integrations attached ---
create_app everything-e2e
HTTP_SLUG=$(integrate everything "http://127.0.0.1:$HTTP_UPORT/mcp")
SSE_SLUG=$(integrate everything-sse "http://127.0.0.1:$SSE_UPORT/sse")
[ "$HTTP_SLUG" = everything ] || fail "slug of integration 'everything' is '$HTTP_SLUG'"
[ "$SSE_SLUG" = everything-sse ] || fail "slug of integration 'everything-sse' is '$SSE_SLUG'"
HTTP2_SLUG=$(integrate everything2 "http://127.0.0.1:$HTTP2_UPORT/mcp")
[ "$HTTP2_SLUG" = everything2 ] || fail "slug of integration 'everything2' is '$HTTP2_SLUG'"

# --- the SDK, once per transport, each with its own OAuth flow against its pass-through URL;
# then once against the aggregated URL, over all three (the two Streamable-HTTP integrations
# first: the sampling and elicitation round trips go through them) ---
failed=()
for mode in http sse aggregated; do
  case $mode in
    http) args=("$URL/apps/$AID/mcp/$HTTP_SLUG" "$EMAIL" "$PASSWORD") ;;
    sse) args=("$URL/apps/$AID/mcp/$SSE_SLUG" "$EMAIL" "$PASSWORD") ;;
    aggregated) args=("$URL/apps/$AID/mcp" "$EMAIL" "$PASSWORD" "$HTTP_SLUG,$HTTP2_SLUG,$SSE_SLUG") ;;
  esac
  if ! timeout 50 "$PY" "$HERE/server_everything.py" "$mode" "${args[@]}"; then
    failed+=("$mode")
  fi
done
((${#failed[@]} == 0)) || fail "the MCP Python SDK through keygate, mode(s): ${failed[*]}"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "server_everything: ok"
