#!/usr/bin/env bash
# The official MCP Python SDK, through keygate's pass-through route /apps/{id}/mcp/{slug}, against
# the real MCP reference server (@modelcontextprotocol/server-everything): initialize, tools
# (echo, get-sum, progress, sampling and elicitation round trips), resources and prompts, over
# Streamable HTTP and over the legacy HTTP+SSE transport; then through the aggregated route
# /apps/{id}/mcp over two Streamable-HTTP integrations (two server-everything processes):
# prefixed tools and prompts, routed calls, namespaced sampling/elicitation ids, resources (see
# server_everything.py).
# Needs the venv and the Node prefix that scripts/setup.sh installs (KEYGATE_E2E_VENV,
# KEYGATE_E2E_NODE).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
VENV="${KEYGATE_E2E_VENV:-$HOME/.cache/keygate-e2e/venv}"
PY="$VENV/bin/python"
EVERYTHING="${KEYGATE_E2E_NODE:-$HOME/.cache/keygate-e2e/node}/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
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

"$PY" -c 'import mcp.client.sse, mcp.client.auth' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
[ -f "$EVERYTHING" ] || fail "no server-everything at $EVERYTHING: run scripts/setup.sh"

# --- the upstreams: one server-everything per transport (its PORT env var, transport as argv),
# and a second Streamable-HTTP one for the aggregated route. KEYGATE_E2E_UPSTREAM names each
# Streamable-HTTP one by its integration's slug: its get-env tool shows which process answered.
HTTP_UPORT=$(free_port)
KEYGATE_E2E_UPSTREAM=everything PORT="$HTTP_UPORT" node "$EVERYTHING" streamableHttp >"$WORK/everything-http.log" 2>&1 &
PIDS+=("$!")
wait_port "$HTTP_UPORT" "$!" "server-everything (streamableHttp)"
HTTP2_UPORT=$(free_port)
KEYGATE_E2E_UPSTREAM=everything2 PORT="$HTTP2_UPORT" node "$EVERYTHING" streamableHttp >"$WORK/everything-http2.log" 2>&1 &
PIDS+=("$!")
wait_port "$HTTP2_UPORT" "$!" "server-everything (streamableHttp, second)"
SSE_UPORT=$(free_port)
PORT="$SSE_UPORT" node "$EVERYTHING" sse >"$WORK/everything-sse.log" 2>&1 &
PIDS+=("$!")
wait_port "$SSE_UPORT" "$!" "server-everything (sse)"

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

# --- an application with all three integrations attached ---
app=$(api -X POST "$URL/api/v1/applications" \
  -d '{"name":"everything-e2e","oauth":{"type":"public","redirectUris":["http://localhost:3000/callback"]}}')
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
HTTP_SLUG=$(integrate everything "http://127.0.0.1:$HTTP_UPORT/mcp")
SSE_SLUG=$(integrate everything-sse "http://127.0.0.1:$SSE_UPORT/sse")
[ "$HTTP_SLUG" = everything ] || fail "slug of integration 'everything' is '$HTTP_SLUG'"
[ "$SSE_SLUG" = everything-sse ] || fail "slug of integration 'everything-sse' is '$SSE_SLUG'"
HTTP2_SLUG=$(integrate everything2 "http://127.0.0.1:$HTTP2_UPORT/mcp")
[ "$HTTP2_SLUG" = everything2 ] || fail "slug of integration 'everything2' is '$HTTP2_SLUG'"

# --- the SDK, once per transport, each with its own OAuth flow against its pass-through URL;
# then once against the aggregated URL, over the two Streamable-HTTP integrations (the legacy-SSE
# one stays attached: the aggregated route leaves it out, as it does any upstream it cannot use) ---
failed=()
for mode in http sse aggregated; do
  case $mode in
    http) args=("$URL/apps/$AID/mcp/$HTTP_SLUG" "$EMAIL" "$PASSWORD") ;;
    sse) args=("$URL/apps/$AID/mcp/$SSE_SLUG" "$EMAIL" "$PASSWORD") ;;
    aggregated) args=("$URL/apps/$AID/mcp" "$EMAIL" "$PASSWORD" "$HTTP_SLUG,$HTTP2_SLUG") ;;
  esac
  if ! timeout 50 "$PY" "$HERE/server_everything.py" "$mode" "${args[@]}"; then
    failed+=("$mode")
  fi
done
((${#failed[@]} == 0)) || fail "the MCP Python SDK through keygate, mode(s): ${failed[*]}"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "server_everything: ok"
