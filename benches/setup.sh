#!/usr/bin/env bash
# Installs what the cost benchmark (`cargo bench -p keygate-benches --bench cost`) runs beside
# keygate: nginx, the reference proxy, from Debian's packages (`nginx-light` where the release
# still has it, else `nginx`), `wrk`, the saturating load generator, and `taskset` (util-linux),
# which pins each proxy to its own core. Does nothing when all three are already there. The
# benchmark runs this itself when one is missing; the test suite never needs it.
# `benches/setup.sh valgrind` installs valgrind instead, for `benches/instructions.py`.
set -euo pipefail

missing=()
if [ "${1:-}" = valgrind ]; then
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
else
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
fi
((${#missing[@]} == 0)) && exit 0

SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)
export DEBIAN_FRONTEND=noninteractive

packages=()
for m in "${missing[@]}"; do
  if [ "$m" = nginx ]; then
    # nginx-light (core modules only, which is all the benchmark uses) left Debian after
    # bookworm; the plain package is the same server with more modules.
    if apt-cache show nginx-light >/dev/null 2>&1; then packages+=(nginx-light); else packages+=(nginx); fi
  else
    packages+=("$m")
  fi
done

echo "benches/setup.sh: installing ${packages[*]}" >&2
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${packages[@]}" >&2; then
  "${SUDO[@]}" apt-get update >&2
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${packages[@]}" >&2
fi
# A service the package started (where policy-rc.d allows it) would hold port 80 for nothing.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  "${SUDO[@]}" systemctl disable --now nginx >&2 || true
fi
