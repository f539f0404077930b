#!/usr/bin/env bash
# Compares the proxy benchmark of two revisions, run in alternation so that the machine's drift
# (on a shared VM one run can be 30 % off the next) hits both alike:
#
#   benches/compare.sh BASE NEW [ROUNDS] [SECTION]     e.g. benches/compare.sh 8c9296d HEAD 10 latency
#
# BASE or NEW may also be a bench binary built before (an executable file): it is run as is,
# so a comparison can be repeated without building again.
#
# Builds each revision's `proxy` bench binary in a temporary worktree (sharing CARGO_TARGET_DIR,
# so dependencies build once), then runs SECTION (`latency` by default) ROUNDS times (6) for
# each, in ABBA order, and prints every run's lines and, per row, the median of each side and
# the median of the paired differences NEW − BASE (the number to trust on a noisy machine) with
# how many rounds NEW was the higher.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: benches/compare.sh BASE NEW [ROUNDS] [SECTION]}
new=${2:?usage: benches/compare.sh BASE NEW [ROUNDS] [SECTION]}
rounds=${3:-6}
section=${4:-latency}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
work=$(mktemp -d)
trap 'git worktree remove --force "$work/tree" 2>/dev/null || true; rm -rf "$work"' EXIT

build() { # REV NAME: copies REV's bench binary (or REV, a binary) to $work/NAME
  if [ -f "$1" ] && [ -x "$1" ]; then
    cp "$1" "$work/$2"
    return
  fi
  git worktree remove --force "$work/tree" 2>/dev/null || true
  git worktree add -q --detach "$work/tree" "$1"
  local bin
  bin=$(cd "$work/tree" && cargo bench -p keygate-benches --bench proxy --no-run --locked \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "proxy" and m.get("executable"):
        print(m["executable"])')
  cp "$bin" "$work/$2"
}

build "$base" base
build "$new" new
echo "proxy $section: $base (base) vs $new (new), $rounds alternating rounds"
for r in $(seq "$rounds"); do
  # Odd rounds run BASE first, even rounds NEW first: whatever the first run of a pair leaves
  # behind (a warm page cache, a busy kernel tearing down the last process) falls on both.
  order="base new"
  [ $((r % 2)) -eq 0 ] && order="new base"
  for side in $order; do
    (cd benches && "$work/$side" "$section") 2>&1 |
      grep -E '^(direct|bare forward|pass-through|aggregated) ' | sed "s/^/$side $r: /"
  done
done | tee "$work/runs"
python3 - "$work/runs" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r'(base|new) (\d+): (\S+(?: forward)?)\s+(.*)', line)
    if not m:
        continue
    side, r, row, rest = m.groups()
    kind = 'throughput' if 'req/s' in rest else 'latency'
    values = [float(x) for x in re.findall(r'[\d.]+', rest)]
    runs.setdefault((row, kind), {}).setdefault(side, {})[int(r)] = values
print()
for (row, kind), sides in runs.items():
    base, new = sides.get('base', {}), sides.get('new', {})
    pairs = sorted(set(base) & set(new))
    if not pairs:
        continue
    cols = min(len(base[p]) for p in pairs)
    if kind == 'latency':
        names = ['p50', 'p99', 'max', 'added p50', 'added p99']
    else:
        names = ['req/s', '× direct']
    for i, name in enumerate(names[:cols]):
        b = statistics.median(base[p][i] for p in pairs)
        n = statistics.median(new[p][i] for p in pairs)
        d = statistics.median(new[p][i] - base[p][i] for p in pairs)
        higher = sum(new[p][i] > base[p][i] for p in pairs)
        print(f'{row:14} {name:10} base {b:10.3f}  new {n:10.3f}  paired Δ {d:+.3f} ({d / b * 100:+.1f} %)'
              f'  new higher in {higher}/{len(pairs)}')
EOF
