#!/usr/bin/env bash
# Tool policies through keygate with the official MCP SDK clients, over policy_upstream.py (the
# Python SDK's server, logging each call that reaches it): policies.py (the Python SDK's
# `ClientSession`, as a member and as the owner, on the pass-through and the aggregated route)
# covers no policies, a forbid by user and tool, an argument condition and an annotation
# condition, each checked against `POST /policies/evaluate`; policies_approval.mjs (the TypeScript
# SDK's `Client`, which answers elicitations) covers `@approval("user")`: accepted, declined, and
# a client without the elicitation capability. Tokens come from the Python SDK's OAuth flow
# (oauth_token.py). Member vs owner on the policy API and changes reaching a second replica are in
# crates/keygate/tests/policies.rs.
# Needs the venv and the Node prefix that scripts/setup.sh installs (KEYGATE_E2E_VENV,
# KEYGATE_E2E_TS).
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
export KEYGATE_E2E_TS="${KEYGATE_E2E_TS:-$HOME/.cache/keygate-e2e/ts}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"

"$PY" -c 'import mcp.client.streamable_http' 2>/dev/null || fail "no mcp SDK in $VENV: run scripts/setup.sh"
cmp -s "$HERE/typescript-client/package-lock.json" "$KEYGATE_E2E_TS/.keygate-lock" 2>/dev/null \
  || fail "the TypeScript SDK in $KEYGATE_E2E_TS is not the pinned one: run scripts/setup.sh"

UPORT=$(free_port)
CALLS_LOG="$WORK/calls.log"
"$PY" "$HERE/policy_upstream.py" "$UPORT" "$CALLS_LOG" >"$WORK/upstream.log" 2>&1 &
PIDS+=("$!")
wait_port "$UPORT" "$!" "policy_upstream.py"

start_gateway
create_app policies-e2e
SLUG=$(integrate bank "http://127.0.0.1:$UPORT/mcp")
MEMBER_EMAIL=member@example.com
member=$(echo "$PASSWORD" | "$BIN" --data-dir "$WORK/data" user add "$MEMBER_EMAIL" --role member --password-stdin)
check "member" '.user.id' "$member"
MEMBER_ID=$(echo "$member" | jq -r .user.id)

AGG_URL="$URL/apps/$AID/mcp"
token() { (cd "$HERE" && timeout 40 "$PY" oauth_token.py "$1" "$2" "$PASSWORD") || fail "no token for $2 at $1"; }
export MEMBER_AGG MEMBER_PASS OWNER_AGG OWNER_PASS
MEMBER_AGG=$(token "$AGG_URL" "$MEMBER_EMAIL")
MEMBER_PASS=$(token "$AGG_URL/$SLUG" "$MEMBER_EMAIL")
OWNER_AGG=$(token "$AGG_URL" "$EMAIL")
OWNER_PASS=$(token "$AGG_URL/$SLUG" "$EMAIL")
# The owner's id: the subject of their token.
OWNER_ID=$(python3 -c 'import base64, json, sys; p = sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sub"])' "$OWNER_AGG")
export MGMT_TOKEN="$TOKEN" MEMBER_ID MEMBER_EMAIL OWNER_ID OWNER_EMAIL="$EMAIL" APP_ID="$AID"

failed=()
(cd "$HERE" && timeout 120 "$PY" policies.py "$AGG_URL" "$SLUG" "$URL/api/v1" "$CALLS_LOG") || failed+=(python)

approval=$(api -X POST "$URL/api/v1/policies" -d "$(jq -nc '{name: "approve email", text: "@approval(\"user\")\npermit (principal, action == Action::\"call_tool\", resource) when { resource.name == \"send_email\" };\npermit (principal, action, resource) when { resource.name != \"send_email\" };"}')")
check "approval policy" '.policy.id' "$approval"
TOKEN_PASS="$OWNER_PASS" TOKEN_AGG="$OWNER_AGG" timeout 90 node "$HERE/policies_approval.mjs" \
  "$AGG_URL" "$SLUG" "$URL/api/v1" "$CALLS_LOG" || failed+=(typescript)

# Each approval left a trace event: two accepted (ok), two declined (denied).
sleep 1
events=$(api "$URL/api/v1/events?limit=200")
check "approval events" '[.items[] | select(.eventType == "approval")] | (map(select(.status == "ok")) | length) == 2 and (map(select(.status == "denied")) | length) == 2' "$events"

((${#failed[@]} == 0)) || fail "tool policies, client(s): ${failed[*]}"
kill -TERM "$GW"; wait "$GW" || fail "serve exited non-zero after SIGTERM"
echo "policies: ok"
