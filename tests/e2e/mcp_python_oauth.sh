#!/usr/bin/env bash
# The official MCP Python SDK, given nothing but an application's MCP URL, gets an access token
# for it through keygate: metadata discovery, dynamic client registration, PKCE, the RFC 8707
# resource indicator, and a headless login + consent (see mcp_python_oauth.py).
# Needs the venv that scripts/setup.sh installs (KEYGATE_E2E_VENV).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
VENV="${KEYGATE_E2E_VENV:-$HOME/.cache/keygate-e2e/venv}"
PY="$VENV/bin/python"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { # check DESCRIPTION JQ_FILTER JSON
  echo "$3" | jq -e "$2" >/dev/null || fail "$1: $(echo "$3" | head -c 600)"
}

"$PY" -c 'import mcp.client.auth' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
export KEYGATE_LISTEN="127.0.0.1:$PORT"
kg() { "$BIN" --data-dir "$WORK/data" "$@"; }

EMAIL=owner@example.com
PASSWORD="correct horse battery"
owner=$(echo "$PASSWORD" | kg user add "$EMAIL" --role owner --password-stdin)
check "user add" '.user.id' "$owner"
sa=$(kg service-account create --name ci)
check "service-account create" '.credentials.clientId and .credentials.clientSecret' "$sa"
CID=$(echo "$sa" | jq -r .credentials.clientId)
CSECRET=$(echo "$sa" | jq -r .credentials.clientSecret)

"$BIN" --data-dir "$WORK/data" serve >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$URL/healthz" >/dev/null 2>&1 || { cat "$WORK/serve.log"; fail "gateway did not start"; }

tok=$(curl -s -u "$CID:$CSECRET" -d grant_type=client_credentials -d scope=management:all \
  --data-urlencode "audience=$URL/api/v1" "$URL/oauth2/token")
check "management token" '.access_token' "$tok"
TOKEN=$(echo "$tok" | jq -r .access_token)

app=$(curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -X POST \
  "$URL/api/v1/applications" \
  -d '{"name":"py","oauth":{"type":"public","redirectUris":["http://localhost:3000/callback"]}}')
check "application" '.application.id' "$app"
MCP_URL="$URL/apps/$(echo "$app" | jq -r .application.id)/mcp"

"$PY" "$HERE/mcp_python_oauth.py" "$URL" "$MCP_URL" "$EMAIL" "$PASSWORD" ||
  { echo "--- gateway log (tail)" >&2; tail -n 40 "$WORK/serve.log" >&2; fail "the MCP Python SDK's OAuth flow"; }

kill -TERM "$PID"; wait "$PID" || fail "serve exited non-zero after SIGTERM"; PID=""
echo "mcp_python_oauth: ok"
