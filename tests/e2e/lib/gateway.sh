# Shared by the end-to-end scripts that run the gateway against real MCP servers: process
# bookkeeping, checks, and setting up a gateway with an owner, a service account, a management
# token, an application and attached integrations. Source it after setting BIN.
# shellcheck shell=bash

# What scripts/setup.sh installs for these scripts.
VENV="${KEYGATE_E2E_VENV:-$HOME/.cache/keygate-e2e/venv}"
PY="$VENV/bin/python"
EVERYTHING="${KEYGATE_E2E_NODE:-$HOME/.cache/keygate-e2e/node}/node_modules/@modelcontextprotocol/server-everything/dist/index.js"

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

# start_everything PORT TRANSPORT LOG: @modelcontextprotocol/server-everything serving TRANSPORT
# (streamableHttp or sse) on PORT, logging to $WORK/LOG.log, once it listens. Variables set on
# the call (KEYGATE_E2E_UPSTREAM=…) reach its environment.
start_everything() {
  [ -f "$EVERYTHING" ] || fail "no server-everything at $EVERYTHING: run scripts/setup.sh"
  PORT="$1" node "$EVERYTHING" "$2" >"$WORK/$3.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$1" "$!" "server-everything ($2, $3)"
}

# start_gateway: an owner (EMAIL/PASSWORD), a service account, the gateway on a free port (URL,
# GW) allowing loopback upstreams, and a management token (TOKEN, used by `api`). With
# KEYGATE_TLS_CERT_FILE exported it serves HTTPS (clients must trust its CA: CURL_CA_BUNDLE).
start_gateway() {
  PORT=$(free_port)
  URL="http://127.0.0.1:$PORT"
  [ -z "${KEYGATE_TLS_CERT_FILE:-}" ] || URL="https://127.0.0.1:$PORT"
  export KEYGATE_LISTEN="127.0.0.1:$PORT"
  # The upstreams are on loopback, which the SSRF guard refuses unless allow-listed.
  export KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS=127.0.0.1
  EMAIL=owner@example.com
  PASSWORD="correct horse battery"
  local owner sa cid csecret tok
  owner=$(echo "$PASSWORD" | "$BIN" --data-dir "$WORK/data" user add "$EMAIL" --role owner --password-stdin)
  check "user add" '.user.id' "$owner"
  sa=$("$BIN" --data-dir "$WORK/data" service-account create --name ci)
  check "service-account create" '.credentials.clientId and .credentials.clientSecret' "$sa"
  cid=$(echo "$sa" | jq -r .credentials.clientId)
  csecret=$(echo "$sa" | jq -r .credentials.clientSecret)
  "$BIN" --data-dir "$WORK/data" serve >"$WORK/serve.log" 2>&1 &
  GW=$!
  PIDS+=("$GW")
  for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "$URL/healthz" >/dev/null 2>&1 || fail "gateway did not start"
  tok=$(curl -s -u "$cid:$csecret" -d grant_type=client_credentials -d scope=management:all \
    --data-urlencode "audience=$URL/api/v1" "$URL/oauth2/token")
  check "management token" '.access_token' "$tok"
  TOKEN=$(echo "$tok" | jq -r .access_token)
}

api() { curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }

# create_app NAME: a public application; sets AID.
create_app() {
  local app
  app=$(api -X POST "$URL/api/v1/applications" \
    -d "$(jq -nc --arg n "$1" '{name:$n,oauth:{type:"public",redirectUris:["http://localhost:3000/callback"]}}')")
  check "application" '.application.id' "$app"
  AID=$(echo "$app" | jq -r .application.id)
}

integrate() { # integrate NAME UPSTREAM_URL -> the integration's slug, attached to application AID
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
