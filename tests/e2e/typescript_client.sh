#!/usr/bin/env bash
# The official MCP TypeScript SDK client (@modelcontextprotocol/sdk: `Client` over
# `StreamableHTTPClientTransport`) through keygate against the real MCP reference server
# (@modelcontextprotocol/server-everything): via the pass-through route /apps/{id}/mcp/{slug},
# then via the aggregated route /apps/{id}/mcp over two Streamable-HTTP integrations (two
# server-everything processes): initialize, tools (echo, get-sum, progress notifications, the
# sampling and elicitation round trips), prompts, resources, session termination (see
# typescript_client.mjs). The user's access token for each URL comes from the MCP Python SDK's
# OAuth flow with a headless login + consent (oauth_token.py); the TS client sends it as a static
# bearer header.
# Needs the venv and the two Node prefixes that scripts/setup.sh installs (KEYGATE_E2E_VENV,
# KEYGATE_E2E_NODE, KEYGATE_E2E_TS).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
export KEYGATE_E2E_TS="${KEYGATE_E2E_TS:-$HOME/.cache/keygate-e2e/ts}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client.auth' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
cmp -s "$HERE/typescript-client/package-lock.json" "$KEYGATE_E2E_TS/.keygate-lock" 2>/dev/null \
  || fail "the TypeScript SDK in $KEYGATE_E2E_TS is not the pinned one: run scripts/setup.sh"

# --- the upstreams: two Streamable-HTTP server-everything processes (its PORT env var, transport
# as argv); the first is also the pass-through route's ---
UPORT=$(free_port)
start_everything "$UPORT" streamableHttp everything
UPORT2=$(free_port)
start_everything "$UPORT2" streamableHttp everything2

# --- the gateway, an owner, a service account and its management token ---
start_gateway

# --- an application with both integrations attached ---
create_app typescript-e2e
SLUG=$(integrate everything "http://127.0.0.1:$UPORT/mcp")
[ "$SLUG" = everything ] || fail "slug of integration 'everything' is '$SLUG'"
SLUG2=$(integrate everything2 "http://127.0.0.1:$UPORT2/mcp")
[ "$SLUG2" = everything2 ] || fail "slug of integration 'everything2' is '$SLUG2'"

# --- the TS client, once per route, each with a user token whose aud is that route's URL ---
failed=()
for mode in passthrough aggregated; do
  case $mode in
    passthrough) mcp_url="$URL/apps/$AID/mcp/$SLUG"; slugs=() ;;
    aggregated) mcp_url="$URL/apps/$AID/mcp"; slugs=("$SLUG,$SLUG2") ;;
  esac
  if ! user_token=$(cd "$HERE" && timeout 40 "$PY" oauth_token.py "$mcp_url" "$EMAIL" "$PASSWORD"); then
    failed+=("$mode (OAuth)")
    continue
  fi
  if ! MCP_TOKEN="$user_token" timeout 50 node "$HERE/typescript_client.mjs" "$mode" "$mcp_url" "${slugs[@]}"; then
    failed+=("$mode")
  fi
done
((${#failed[@]} == 0)) || fail "the MCP TypeScript SDK through keygate, route(s): ${failed[*]}"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "typescript_client: ok"
