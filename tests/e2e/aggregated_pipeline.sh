#!/usr/bin/env bash
# The aggregated endpoint /apps/{id}/mcp carries the MCP features that cross it, for both official
# SDK clients (the Python `mcp` SDK: aggregated_pipeline.py; the TypeScript SDK:
# aggregated_pipeline.mjs), over these upstreams:
#   pipeline        pipeline_upstream.mjs, the TypeScript SDK's server (2025 era): cancellation
#                   it observes, tools/list_changed and resources/updated on demand, completions;
#   modern          modern_server.py, the Python SDK's server, spoken to in 2026-07-28: cancellation
#                   it observes (its request dropped);
#   everything-sse  @modelcontextprotocol/server-everything on the legacy HTTP+SSE transport;
#   split-lf/-crlf  split_upstream.py, raw upstreams whose SSE answers arrive in TCP writes cut
#                   inside a UTF-8 character (LF and CRLF lines), also used on the pass-through
#                   route /apps/{id}/mcp/{slug};
#   down            an integration whose server is not running.
# The TypeScript client also restarts the pipeline upstream (its session is then refused with
# 404 + -32001 and a new initialize works) and checks that a DELETEd session is refused. Each
# client gets static user tokens (oauth_token.py, the Python SDK's OAuth flow) for the three URLs.
# Needs the venv and the Node prefixes that scripts/setup.sh installs (KEYGATE_E2E_VENV,
# KEYGATE_E2E_NODE, KEYGATE_E2E_TS).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
export KEYGATE_E2E_TS="${KEYGATE_E2E_TS:-$HOME/.cache/keygate-e2e/ts}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client.streamable_http' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
cmp -s "$HERE/typescript-client/package-lock.json" "$KEYGATE_E2E_TS/.keygate-lock" 2>/dev/null \
  || fail "the TypeScript SDK in $KEYGATE_E2E_TS is not the pinned one: run scripts/setup.sh"

# --- the upstreams (the pipeline one is started by each client, which may restart it) ---
PIPE_PORT=$(free_port)
SSE_PORT=$(free_port)
start_everything "$SSE_PORT" sse everything-sse
LF_PORT=$(free_port)
"$PY" "$HERE/split_upstream.py" "$LF_PORT" lf >"$WORK/split-lf.log" 2>&1 &
PIDS+=("$!")
wait_port "$LF_PORT" "$!" "split_upstream.py lf"
CRLF_PORT=$(free_port)
"$PY" "$HERE/split_upstream.py" "$CRLF_PORT" crlf >"$WORK/split-crlf.log" 2>&1 &
PIDS+=("$!")
wait_port "$CRLF_PORT" "$!" "split_upstream.py crlf"
MODERN_PORT=$(free_port)
"$PY" "$HERE/modern_server.py" "$MODERN_PORT" >"$WORK/modern.log" 2>&1 &
PIDS+=("$!")
wait_port "$MODERN_PORT" "$!" "modern_server.py"
DOWN_PORT=$(free_port) # nothing listens there

# --- the gateway and an application with all six attached ---
start_gateway
create_app pipeline-e2e
for spec in "pipeline http://127.0.0.1:$PIPE_PORT/mcp" "modern http://127.0.0.1:$MODERN_PORT/mcp" "everything-sse http://127.0.0.1:$SSE_PORT/sse" \
  "split-lf http://127.0.0.1:$LF_PORT/mcp" "split-crlf http://127.0.0.1:$CRLF_PORT/mcp" \
  "down http://127.0.0.1:$DOWN_PORT/mcp"; do
  read -r name url <<<"$spec"
  slug=$(integrate "$name" "$url")
  [ "$slug" = "$name" ] || fail "slug of integration '$name' is '$slug'"
done

AGG_URL="$URL/apps/$AID/mcp"
token() { (cd "$HERE" && timeout 40 "$PY" oauth_token.py "$1" "$EMAIL" "$PASSWORD") || fail "no user token for $1"; }
TOKEN_AGG=$(token "$AGG_URL")
TOKEN_LF=$(token "$AGG_URL/split-lf")
TOKEN_CRLF=$(token "$AGG_URL/split-crlf")
TOKEN_DOWN=$(token "$AGG_URL/down")
export TOKEN_AGG TOKEN_LF TOKEN_CRLF TOKEN_DOWN PIPE_PORT
export KEYGATE_E2E_UPSTREAM_LOG="$WORK/pipeline.log"

failed=()
timeout 60 "$PY" "$HERE/aggregated_pipeline.py" "$AGG_URL" "$HERE/pipeline_upstream.mjs" || failed+=(python)
timeout 60 node "$HERE/aggregated_pipeline.mjs" "$AGG_URL" "$HERE/pipeline_upstream.mjs" || failed+=(typescript)
((${#failed[@]} == 0)) || fail "the aggregated pipeline, client(s): ${failed[*]}"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "aggregated_pipeline: ok"
