#!/usr/bin/env bash
# The official MCP Python SDK over HTTPS: the gateway serves TLS with a certificate from a CA
# made here (openssl), which the SDK's HTTP client (SSL_CERT_FILE) and curl (CURL_CA_BUNDLE)
# trust. server_everything.py runs its Streamable-HTTP pass-through and aggregated checks against
# two @modelcontextprotocol/server-everything upstreams through https:// URLs, OAuth flow
# included; curl checks that HTTP/2 is offered by ALPN. Needs what scripts/setup.sh installs.
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"
"$PY" -c 'import mcp.client.streamable_http' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"

# --- a CA and the gateway's certificate for 127.0.0.1 ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=keygate e2e CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/tls.crt" 2>/dev/null
export KEYGATE_TLS_CERT_FILE="$WORK/tls.crt" KEYGATE_TLS_KEY_FILE="$WORK/tls.key"
export CURL_CA_BUNDLE="$WORK/ca.pem" SSL_CERT_FILE="$WORK/ca.pem"

UPORT1=$(free_port)
KEYGATE_E2E_UPSTREAM=everything start_everything "$UPORT1" streamableHttp everything-1
UPORT2=$(free_port)
KEYGATE_E2E_UPSTREAM=everything2 start_everything "$UPORT2" streamableHttp everything-2

start_gateway
case "$URL" in https://*) ;; *) fail "the gateway URL is not https: $URL" ;; esac
version=$(curl -sS --http2 -o /dev/null -w '%{http_version}' "$URL/healthz")
[ "$version" = 2 ] || fail "HTTP/2 was not negotiated over TLS (got HTTP/$version)"

create_app https-e2e
SLUG1=$(integrate everything "http://127.0.0.1:$UPORT1/mcp")
SLUG2=$(integrate everything2 "http://127.0.0.1:$UPORT2/mcp")

failed=()
timeout 50 "$PY" "$HERE/server_everything.py" http "$URL/apps/$AID/mcp/$SLUG1" "$EMAIL" "$PASSWORD" ||
  failed+=(pass-through)
timeout 50 "$PY" "$HERE/server_everything.py" aggregated "$URL/apps/$AID/mcp" "$EMAIL" "$PASSWORD" \
  "$SLUG1,$SLUG2" || failed+=(aggregated)
((${#failed[@]} == 0)) || fail "the MCP Python SDK over HTTPS, route(s): ${failed[*]}"

kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "mcp_python_https: ok"
