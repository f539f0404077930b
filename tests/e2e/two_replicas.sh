#!/usr/bin/env bash
# Two gateway processes on one PostgreSQL database, replicas behind one public URL: an MCP
# session initialized on one continues on the other, on the aggregated route (whose sealed
# Mcp-Session-Id any replica opens; once DELETEd on one, the other refuses it) and on the
# pass-through route, against the real @modelcontextprotocol/server-everything. The user's
# token comes from the official Python SDK's OAuth flow (oauth_token.py). The database is
# created for this run and dropped afterwards.
# Needs psql, and the venv and the Node prefix that scripts/setup.sh installs.
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client.auth' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
command -v psql >/dev/null || fail "psql is required"

# --- a database of its own on the test server ---
PG_BASE="${KEYGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB="keygate_e2e_replicas_$$_$RANDOM"
psql "$PG_BASE" -qc "CREATE DATABASE $DB" >/dev/null || fail "cannot create database $DB"
drop_db() { psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap 'cleanup; drop_db' EXIT
export KEYGATE_DATABASE_URL="${PG_BASE%/*}/$DB"

UPORT=$(free_port)
start_everything "$UPORT" streamableHttp everything

# --- replica A (with the owner, service account and application), then replica B: same
# database, same vault key (the data dir holds it), same public URL ---
start_gateway
create_app replicas
SLUG=$(integrate everything "http://127.0.0.1:$UPORT/mcp")
B_PORT=$(free_port)
B_URL="http://127.0.0.1:$B_PORT"
KEYGATE_LISTEN="127.0.0.1:$B_PORT" KEYGATE_PUBLIC_URL="$URL" \
  "$BIN" --data-dir "$WORK/data" serve >"$WORK/replica-b.log" 2>&1 &
PIDS+=("$!")
wait_port "$B_PORT" "$!" "replica B"

# rpc BASE PATH TOKEN SESSION JSON: POSTs one JSON-RPC message; the answer's headers go to
# $WORK/headers, its JSON-RPC message (from a JSON body or an SSE stream) to stdout.
rpc() {
  local session=()
  [ -n "$4" ] && session=(-H "Mcp-Session-Id: $4")
  curl -s -D "$WORK/headers" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H "Authorization: Bearer $3" \
    "${session[@]}" -d "$5" "$1$2" >"$WORK/body"
  if grep -q '^data:' "$WORK/body"; then sed -n 's/^data: *//p' "$WORK/body" | tail -n1; else cat "$WORK/body"; fi
}
session_id() { tr -d '\r' <"$WORK/headers" | sed -n 's/^[Mm]cp-[Ss]ession-[Ii]d: *//p'; }

INIT='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"replicas-e2e","version":"1"}}}'
INITIALIZED='{"jsonrpc":"2.0","method":"notifications/initialized"}'
for route in aggregated passthrough; do
  case $route in
    aggregated) path="/apps/$AID/mcp"; tool="${SLUG}_echo" ;;
    passthrough) path="/apps/$AID/mcp/$SLUG"; tool=echo ;;
  esac
  token=$(cd "$HERE" && timeout 40 "$PY" oauth_token.py "$URL$path" "$EMAIL" "$PASSWORD") \
    || fail "[$route] no user token"
  init=$(rpc "$URL" "$path" "$token" "" "$INIT")
  check "[$route] initialize on replica A" '.result.serverInfo.name' "$init"
  session=$(session_id)
  [ -n "$session" ] || fail "[$route] replica A issued no Mcp-Session-Id"
  rpc "$URL" "$path" "$token" "$session" "$INITIALIZED" >/dev/null
  message="across replicas via $route"
  call=$(jq -nc --arg t "$tool" --arg m "$message" \
    '{jsonrpc:"2.0",id:2,method:"tools/call",params:{name:$t,arguments:{message:$m}}}')
  answer=$(rpc "$B_URL" "$path" "$token" "$session" "$call")
  check "[$route] tools/call on replica B in A's session" \
    ".result.content[0].text == \"Echo: $message\"" "$answer"
  list=$(rpc "$B_URL" "$path" "$token" "$session" '{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
  check "[$route] tools/list on replica B" ".result.tools | map(.name) | index(\"$tool\")" "$list"
  echo "[$route] initialized on replica A, tools/call + tools/list on replica B: ok"
  if [ "$route" = aggregated ]; then
    # Ended on A (DELETE), the session is refused on B too, which had just served it.
    code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "Authorization: Bearer $token" \
      -H "Mcp-Session-Id: $session" "$URL$path")
    [ "$code" = 200 ] || fail "[$route] DELETE on replica A answered $code"
    ended=""
    for _ in $(seq 50); do
      answer=$(rpc "$B_URL" "$path" "$token" "$session" '{"jsonrpc":"2.0","id":4,"method":"tools/list"}')
      if echo "$answer" | jq -e '.id == 4 and .error.code == -32001' >/dev/null 2>&1; then ended=1; break; fi
      sleep 0.1
    done
    [ -n "$ended" ] || fail "[$route] replica B still serves the session replica A ended: $answer"
    echo "[$route] DELETE on replica A, then 404 on replica B: ok"
  fi
done

echo "two_replicas: ok"
