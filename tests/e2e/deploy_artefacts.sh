#!/usr/bin/env bash
# The deployment artefacts under deploy/ pass the linters and validators scripts/setup.sh
# installs: hadolint for the Dockerfile, kubernetes-validate (strict, offline schemas) for every
# resource the kustomization lists (each must exist and parse), `systemd-analyze verify` for the
# unit (with no finding at all) and `systemd-analyze security` for its sandbox, and `docker compose config` (or docker-compose) for the
# compose file. Where a tool is missing on this machine, a parse check stands in and says so.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${KEYGATE_BIN:?KEYGATE_BIN must point at the keygate binary}"
DEPLOY_VENV="${KEYGATE_E2E_DEPLOY_VENV:-$HOME/.cache/keygate-e2e/deploy-venv}"
PY="$DEPLOY_VENV/bin/python"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$PY" ] || fail "no deploy venv at $DEPLOY_VENV: run scripts/setup.sh"

echo "--- hadolint deploy/Dockerfile"
"$DEPLOY_VENV/bin/hadolint" deploy/Dockerfile || fail "hadolint found problems in deploy/Dockerfile"

echo "--- kustomization resources"
resources=$("$PY" - deploy/kubernetes/kustomization.yaml <<'PY'
import pathlib, sys, yaml
path = pathlib.Path(sys.argv[1])
k = yaml.safe_load(path.read_text())
assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1", k.get("apiVersion")
assert k["kind"] == "Kustomization", k.get("kind")
assert k.get("resources"), "the kustomization lists no resources"
kinds = []
for name in k["resources"]:
    res = path.parent / name
    assert res.is_file(), f"{res} is listed but does not exist"
    docs = [d for d in yaml.safe_load_all(res.read_text()) if d is not None]
    assert docs, f"{res} holds no resource"
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), res
        kinds.append(d["kind"])
    print(res)
for needed in ("Deployment", "Service", "PodDisruptionBudget"):
    assert needed in kinds, f"no {needed} among the resources"
PY
) || fail "deploy/kubernetes/kustomization.yaml"
echo "--- kubernetes-validate --strict"
# shellcheck disable=SC2086 # one path per word
"$DEPLOY_VENV/bin/kubernetes-validate" --strict $resources || fail "a Kubernetes manifest does not validate"
"$PY" - deploy/kubernetes/deployment.yaml <<'PY' || fail "deployment.yaml: replicas, probes, secrets, sandbox"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
spec = d["spec"]
assert spec["replicas"] >= 2, "several replicas"
c = spec["template"]["spec"]["containers"][0]
for probe in ("livenessProbe", "readinessProbe"):
    assert c[probe]["httpGet"]["port"] == "admin", f"{probe} on the admin port"
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
assert {"KEYGATE_DATABASE_URL", "KEYGATE_VAULT_KEY"} <= secret.keys(), "database URL and vault key from Secrets"
assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, "non-root"
assert c["securityContext"]["readOnlyRootFilesystem"] is True
assert c["securityContext"]["allowPrivilegeEscalation"] is False
PY

echo "--- systemd unit"
# verify checks that ExecStart exists: the unit is checked with the binary under test.
sed "s|/usr/local/bin/keygate|$BIN|" deploy/systemd/keygate.service >"$WORK/keygate.service"
if command -v systemd-analyze >/dev/null; then
  out=$(systemd-analyze verify "$WORK/keygate.service" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify has findings: $out"
  # The sandbox stays tight: systemd's own exposure score (0 best, 10 worst) at most 2.0.
  systemd-analyze security --offline=yes --threshold=20 "$WORK/keygate.service" >"$WORK/security.txt" 2>&1 ||
    fail "the unit's exposure grew: $(tail -n 1 "$WORK/security.txt")"
else
  echo "(no systemd-analyze here: a parse check only)"
  "$PY" - "$WORK/keygate.service" <<'PY' || fail "keygate.service does not parse"
import sys
section = None
for n, line in enumerate(open(sys.argv[1]), 1):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    if line.startswith("["):
        assert line.endswith("]"), f"line {n}: {line}"
        section = line[1:-1]
        continue
    assert section in ("Unit", "Service", "Install"), f"line {n} outside a section"
    assert "=" in line, f"line {n}: {line}"
PY
fi

echo "--- docker-compose.yml"
export KEYGATE_VAULT_KEY=validation-only
if docker compose version >/dev/null 2>&1; then
  docker compose -f deploy/docker-compose.yml config -q || fail "docker compose config"
elif command -v docker-compose >/dev/null; then
  docker-compose -f deploy/docker-compose.yml config -q || fail "docker-compose config"
else
  echo "(no docker compose here: a YAML check only)"
  "$PY" - deploy/docker-compose.yml <<'PY' || fail "docker-compose.yml"
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
services = c["services"]
for name, s in services.items():
    assert "image" in s or "build" in s, f"{name}: no image"
    for dep in s.get("depends_on", {}):
        assert dep in services, f"{name} depends on unknown {dep}"
PY
fi
echo "deploy artefacts: ok"
