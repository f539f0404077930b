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
VENV="${KEYGATE_E2E_VENV:-$HOME/.cache/keygate-e2e/venv}"
PY="$VENV/bin/python"
EVERYTHING="${KEYGATE_E2E_NODE:-$HOME/.cache/keygate-e2e/node}/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
export KEYGATE_E2E_TS="${KEYGATE_E2E_TS:-$HOME/.cache/keygate-e2e/ts}"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
logs() { # the tails of every log, for a failure
  for f in "$WORK"/*.log; do echo "--- $(basename "$f") (tail)" >&2; tail -n 30 "$f" >&2; done
}
fail() { echo "FAIL: $*" >&2; logs; exit 1; }
check() { # check DESCRIPTION JQ_FILTER JSON
  echo "$3" | jq -e "$2" >/dev/null || fail "$1: $(echo "$3" | head -c 600)"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT PID WHAT: until something accepts on 127.0.0.1:PORT (10 s at most)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    kill -0 "$2" 2>/dev/null || fail "$3 exited before listening on port $1"
    sleep 0.1
  done
  fail "$3 is not listening on port $1 after 10 s"
}

"$PY" -c 'import mcp.client.auth' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
[ -f "$EVERYTHING" ] || fail "no server-everything at $EVERYTHING: run scripts/setup.sh"
cmp -s "$HERE/typescript-client/package-lock.json" "$KEYGATE_E2E_TS/.keygate-lock" 2>/dev/null \
  || fail "the TypeScript SDK in $KEYGATE_E2E_TS is not the pinned one: run scripts/setup.sh"

# --- the upstreams: two Streamable-HTTP server-everything processes (its PORT env var, transport
# as argv); the first is also the pass-through route's ---
UPORT=$(free_port)
PORT="$UPORT" node "$EVERYTHING" streamableHttp >"$WORK/everything.log" 2>&1 &
PIDS+=("$!")
wait_port "$UPORT" "$!" "server-everything (streamableHttp)"
UPORT2=$(free_port)
PORT="$UPORT2" node "$EVERYTHING" streamableHttp >"$WORK/everything2.log" 2>&1 &
PIDS+=("$!")
wait_port "$UPORT2" "$!" "server-everything (streamableHttp, second)"

# --- the gateway, an owner, a service account and its management token ---
PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
export KEYGATE_LISTEN="127.0.0.1:$PORT"
# The upstreams are on loopback, which the SSRF guard refuses unless allow-listed.
export KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS=127.0.0.1
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
GW=$!
PIDS+=("$GW")
for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$URL/healthz" >/dev/null 2>&1 || fail "gateway did not start"

tok=$(curl -s -u "$CID:$CSECRET" -d grant_type=client_credentials -d scope=management:all \
  --data-urlencode "audience=$URL/api/v1" "$URL/oauth2/token")
check "management token" '.access_token' "$tok"
TOKEN=$(echo "$tok" | jq -r .access_token)
api() { curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }

# --- an application with both integrations attached ---
app=$(api -X POST "$URL/api/v1/applications" \
  -d '{"name":"typescript-e2e","oauth":{"type":"public","redirectUris":["http://localhost:3000/callback"]}}')
check "application" '.application.id' "$app"
AID=$(echo "$app" | jq -r .application.id)

integrate() { # integrate NAME UPSTREAM_URL -> the integration's slug, attached to the application
  local integ iid code
  integ=$(api -w '\n%{http_code}' -X POST "$URL/api/v1/integrations" \
    -d "$(jq -nc --arg n "$1" --arg u "$2" '{name:$n,url:$u,authMode:"none"}')")
  [ "$(echo "$integ" | tail -n1)" = 201 ] || fail "create integration $1 -> $(echo "$integ" | tail -n1): $(echo "$integ" | head -n -1 | head -c 600)"
  integ=$(echo "$integ" | head -n -1)
  check "integration $1" '.integration.id and .integration.slug' "$integ"
  iid=$(echo "$integ" | jq -r .integration.id)
  code=$(api -o "$WORK/attach.out" -w '%{http_code}' -X POST "$URL/api/v1/applications/$AID/integrations/$iid")
  [ "$code" = 204 ] || fail "attach integration $1 -> $code: $(head -c 600 "$WORK/attach.out")"
  echo "$integ" | jq -r .integration.slug
}
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
