#!/usr/bin/env bash
# A new user's first session, with nothing but the CLI and curl: create an owner and a service
# account, get a token, create an integration and an application, attach, list, paginate,
# rotate the secret, archive; then bad configuration, vault key rotation and SIGTERM.
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { # check DESCRIPTION JQ_FILTER JSON
  echo "$3" | jq -e "$2" >/dev/null || fail "$1: $(echo "$3" | head -c 600)"
}

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
export KEYGATE_LISTEN="127.0.0.1:$PORT"
kg() { "$BIN" --data-dir "$WORK/data" "$@"; }

start() {
  "$BIN" --data-dir "$WORK/data" serve >"$WORK/serve.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  cat "$WORK/serve.log"; fail "gateway did not start"
}

# --- CLI: owner and service account (one JSON document on stdout each) ---
owner=$(echo "correct horse battery" | kg user add owner@example.com --role owner --password-stdin)
check "user add" '.user.id and .user.email == "owner@example.com" and .user.role == "owner"' "$owner"
[ "$(stat -c %a "$WORK/data/vault.key")" = 600 ] || fail "vault.key is not mode 600"
sa=$(kg service-account create --name ci --description "curl test")
check "service-account create" '.serviceAccount.id and (.credentials.clientId | startswith("sa_")) and .credentials.clientSecret' "$sa"
CID=$(echo "$sa" | jq -r .credentials.clientId)
CSECRET=$(echo "$sa" | jq -r .credentials.clientSecret)

start
grep -q "keygate user add" "$WORK/serve.log" || fail "serve did not print how to create the owner"

# --- token ---
tok=$(curl -s -u "$CID:$CSECRET" -d grant_type=client_credentials -d scope=management:all \
  --data-urlencode "audience=$URL/api/v1" "$URL/oauth2/token")
check "token" '.access_token and .token_type == "Bearer" and .expires_in > 0' "$tok"
TOKEN=$(echo "$tok" | jq -r .access_token)
api() { curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
jwks=$(curl -s "$URL/.well-known/jwks.json")
check "jwks" '.keys[0].kty == "EC" and .keys[0].alg == "ES256" and (.keys[0] | has("d") | not)' "$jwks"

# --- integration with a server token: never echoed ---
integ=$(api -X POST "$URL/api/v1/integrations" -d '{"name":"GitHub","url":"https://mcp.github.example/mcp","authMode":"server_token","serverToken":"ghp_curl_test_secret"}')
check "integration" '.integration.serverTokenConfigured == true and .integration.authMode == "server_token" and .integration.validationStatus == "pending"' "$integ"
echo "$integ" | grep -q ghp_curl_test_secret && fail "server token echoed"
IID=$(echo "$integ" | jq -r .integration.id)

# --- application: secret shown once ---
app=$(api -X POST "$URL/api/v1/applications" -d '{"name":"My App","oauth":{"type":"confidential","redirectUris":["http://localhost:3000/callback"],"pkceRequired":true,"scopes":[],"allowedResources":[]}}')
check "application" '.application.id and (.oauth.clientId | startswith("app_")) and (.oauth.clientSecret | length > 20) and (.application.mcpUrlTemplate | endswith("/mcp{/integration}"))' "$app"
AID=$(echo "$app" | jq -r .application.id)
APP_CLIENT=$(echo "$app" | jq -r .oauth.clientId)
APP_SECRET=$(echo "$app" | jq -r .oauth.clientSecret)
got=$(api "$URL/api/v1/applications/$AID")
check "get application hides the secret" '.application.oauth | has("clientSecret") | not' "$got"

# --- attach, list ---
code=$(api -o /dev/null -w '%{http_code}' -X POST "$URL/api/v1/applications/$AID/integrations/$IID")
[ "$code" = 204 ] || fail "attach answered $code"
ids=$(api "$URL/api/v1/applications/$AID/integrations")
check "attached" ".integrationIds == [\"$IID\"]" "$ids"

# --- paginate with limit=1 ---
api -X POST "$URL/api/v1/applications" -d '{"name":"Second","oauth":{"type":"public","redirectUris":["http://127.0.0.1/cb"]}}' >/dev/null
page1=$(api "$URL/api/v1/applications?limit=1")
check "page 1" '(.items | length) == 1 and (.nextCursor | type) == "string"' "$page1"
page2=$(api "$URL/api/v1/applications?limit=1&cursor=$(echo "$page1" | jq -r .nextCursor)")
check "page 2" '(.items | length) == 1 and .nextCursor == null' "$page2"
[ "$(echo "$page1" | jq -r '.items[0].id')" != "$(echo "$page2" | jq -r '.items[0].id')" ] || fail "pages repeat"

# --- rotate: the old secret stops working at once ---
before=$(curl -s -u "$APP_CLIENT:$APP_SECRET" -d grant_type=client_credentials "$URL/oauth2/token")
check "app secret authenticates" '.error == "unauthorized_client"' "$before"
rot=$(api -X POST "$URL/api/v1/applications/$AID/rotate-secret")
check "rotate" '(.oauth.clientSecret | length > 20)' "$rot"
after=$(curl -s -u "$APP_CLIENT:$APP_SECRET" -d grant_type=client_credentials "$URL/oauth2/token")
check "old secret refused" '.error == "invalid_client"' "$after"

# --- archive ---
code=$(api -o /dev/null -w '%{http_code}' -X DELETE "$URL/api/v1/applications/$AID")
[ "$code" = 204 ] || fail "archive answered $code"
check "archived" '.application.archivedAt != null' "$(api "$URL/api/v1/applications/$AID")"

# --- errors keep the format and carry x-request-id ---
hdrs=$(api -D - -o "$WORK/err.json" "$URL/api/v1/applications/not-a-uuid")
echo "$hdrs" | grep -qi '^x-request-id:' || fail "no x-request-id"
check "400" '.error == "validation_error" and .statusCode == 400 and .requestId' "$(cat "$WORK/err.json")"

# --- SIGTERM: clean exit ---
kill -TERM "$PID"; wait "$PID" || fail "serve exited non-zero after SIGTERM"; PID=""

# --- bad configuration: exit 64 naming the field, nothing bound ---
set +e
KEYGATE_LISTEN=nowhere "$BIN" --data-dir "$WORK/data" serve 2>"$WORK/bad.log"; rc=$?
set -e
[ "$rc" = 64 ] || fail "bad config exited $rc"
grep -q '`listen`' "$WORK/bad.log" || fail "bad config message does not name the field: $(cat "$WORK/bad.log")"

# --- vault key rotation, then the gateway still opens its data ---
old_key=$(cat "$WORK/data/vault.key")
rot=$(kg vault rotate-key)
check "rotate-key" '.rotated >= 1' "$rot"
[ "$(cat "$WORK/data/vault.key")" != "$old_key" ] || fail "key file unchanged"
start
check "after rotation" '.integration.serverTokenConfigured == true' "$(api "$URL/api/v1/integrations/$IID")"
kill -TERM "$PID"; wait "$PID"; PID=""
echo "management_cli: ok"
