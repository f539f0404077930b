#!/usr/bin/env bash
# The README's quickstart ("From start to a tool call in five minutes"), run as it is written:
# the block is cut out of README.md and run by bash with `keygate` and `npx` on PATH (the binary
# under test, and a stand-in npx that runs the pinned @modelcontextprotocol/server-everything
# that scripts/setup.sh installs), a free port for the gateway (KEYGATE_LISTEN) and for the
# MCP server (3001 replaced), a temporary HOME and data directory, the owner's password on
# stdin, and a scripted browser as $BROWSER. It must end with the tool's answer.
set -euo pipefail

BIN="${KEYGATE_BIN:?set KEYGATE_BIN to the keygate binary}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib/gateway.sh
source "$HERE/lib/gateway.sh"
[ -f "$EVERYTHING" ] || fail "no server-everything at $EVERYTHING: run scripts/setup.sh"

# --- the block, from its heading to the end of its first code fence ---
BLOCK=$(awk '/^## From start to a tool call in five minutes/ {on=1; next}
             on && /^```sh/ {code=1; next}
             code && /^```/ {exit}
             code {print}' "$HERE/../../README.md")
[ -n "$BLOCK" ] || fail "no quickstart block in README.md"
echo "$BLOCK" | grep -q '^keygate login' || fail "the quickstart does not sign in with keygate login"

# --- what the block runs with ---
mkdir -p "$WORK/bin" "$WORK/home"
ln -s "$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")" "$WORK/bin/keygate"
cat >"$WORK/bin/npx" <<NPX
#!/usr/bin/env bash
# npx -y @modelcontextprotocol/server-everything ARGS → the pinned copy.
while [ "\$1" = -y ]; do shift; done
[ "\$1" = @modelcontextprotocol/server-everything ] || { echo "unexpected npx \$*" >&2; exit 1; }
shift
exec node "$EVERYTHING" "\$@"
NPX
chmod +x "$WORK/bin/npx"
GW_PORT=$(free_port)
MCP_PORT=$(free_port)
PASSWORD="correct horse battery staple"
export PATH="$WORK/bin:$PATH" HOME="$WORK/home" KEYGATE_DATA_DIR="$WORK/data"
export KEYGATE_LISTEN="127.0.0.1:$GW_PORT" PORT="$MCP_PORT"
export BROWSER="$HERE/lib/browser.sh" KEYGATE_E2E_COOKIES="$WORK/cookies"
export KEYGATE_E2E_EMAIL=you@example.com KEYGATE_E2E_PASSWORD="$PASSWORD"
export KEYGATE_E2E_BROWSER_LOG="$WORK/browser.log"
# The block starts the MCP server in the background and goes on; a person reads its banner
# before signing in, so the scripted browser waits for its port (it once raced and lost).
export KEYGATE_E2E_READY_PORTS="$MCP_PORT"
echo "$BLOCK" | sed "s/:3001/:$MCP_PORT/g" >"$WORK/quickstart.sh"
# Background jobs of the block are killed with this script.
printf 'trap "kill \\$(jobs -p) 2>/dev/null" EXIT\n' | cat - "$WORK/quickstart.sh" >"$WORK/run.sh"

# --- run it: the owner's password is its stdin ---
if ! echo "$PASSWORD" | timeout 120 bash -e "$WORK/run.sh" >"$WORK/quickstart.log" 2>&1; then
  cat "$WORK/quickstart.log" >&2
  fail "the README's quickstart failed"
fi
grep -q '"text":"Echo: hello"' "$WORK/quickstart.log" ||
  { cat "$WORK/quickstart.log" >&2; fail "the quickstart's tools/call did not answer"; }
echo "readme_quickstart: ok"
