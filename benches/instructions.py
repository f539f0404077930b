#!/usr/bin/env python3
"""Instructions per proxied call, counted by callgrind: keygate beside a bare forwarder.

    python3 benches/instructions.py [--bin PROXY_BENCH] [--calls 1000,3000] [--otlp] [--sse]
                                    [--keep DIR]

Runs the proxy benchmark's closed loop (`--bench proxy -- sequential TARGET`, one call at a
time) under `valgrind --tool=callgrind` with two call counts per target; the difference of the
totals divided by the difference of the counts is one call, setup excluded. Every run starts
with as many direct calls (client to upstream) as it makes through its target, so:

    direct        the harness's client and upstream, one call     D
    forwarder     an axum-on-hyper forwarder's own instructions   bare − 2D
    keygate       pass-through's / aggregated's own instructions  pass − 2D, agg − 2D

and prints keygate's own instructions as a multiple of the forwarder's, then where keygate's
pass-through instructions go (callgrind's inclusive counts of its stages, per call). This is
the profile behind the cost benchmark's throughput floor: at saturation keygate makes the same
system calls per call as the forwarder (`KEYGATE_BENCH_PERF` there), so what it adds is these
user-space instructions. Instruction counts do not move with a machine's load, unlike times.

Without `--bin` it builds the bench binary (`cargo bench -p keygate-benches --bench proxy
--no-run`). `valgrind` comes from `benches/setup.sh valgrind`. With `--otlp` the gateway also
exports its spans (`KEYGATE_BENCH_OTLP`); with `--sse` the upstream answers every call in an SSE
stream of one event (`KEYGATE_BENCH_SSE`), the path of servers that stream. Takes 5–10 minutes.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TARGETS = ["direct", "bare", "pass-through", "aggregated"]

# Where a pass-through call's instructions go: (label, function regex), inclusive per call.
# Async functions appear as the poll of their `{{closure}}`; a '2 suffix (recursion) is left out.
STAGES = [
    ("listener and axum, the whole request", r"^keygate::listener::RequestService::call::\{\{closure\}\}$"),
    ("  axum's router (matchit, URL parameters)", r"^axum::routing::Router<S>::call_with_state$"),
    ("  the handler (extractors, trace start/finish)", r"^<F as axum::handler::Handler<\(M,T1,T2,T3\),S>>::call::\{\{closure\}\}$"),
    ("    forward: the stages", r"^keygate_proxy::passthrough::forward::\{\{closure\}\}$"),
    ("      authentication", r"^keygate_proxy::stage::authenticate::run::\{\{closure\}\}$"),
    ("      the send stage (hyper's client)", r"^keygate_proxy::stage::send::once::\{\{closure\}\}$"),
    ("      forwarded headers", r"^keygate_proxy::forwarded::request_headers$"),
    ("    trace: open the exchange", r"^keygate_proxy::traced::start$"),
    ("    trace: hand the answer to the observer", r"^keygate_proxy::traced::finish$"),
    ("response body (relay, observer)", r"^<keygate::listener::Tracked as http_body::Body>::poll_frame$"),
    ("  trace: read the answer, finish the event", r"^keygate_trace::observe::Observed<B>::end$"),
    ("trace writer task (batch, bind)", r"^keygate_trace::sink::writer::\{\{closure\}\}$"),
    ("SQLite statements (sqlx's worker thread)", r"^<sqlx_sqlite::connection::execute::ExecuteIter as core::iter::traits::iterator::Iterator>::next$"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def bench_binary():
    out = run(
        ["cargo", "bench", "-p", "keygate-benches", "--bench", "proxy", "--no-run",
         "--locked", "--message-format=json"],
        stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "proxy" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("instructions.py: cargo built no `proxy` bench binary")


def count(binary, target, calls, out_dir, otlp, sse):
    out = os.path.join(out_dir, f"{target}.{calls}")
    env = dict(os.environ, KEYGATE_BENCH_CALLS=str(calls))
    if otlp:
        env["KEYGATE_BENCH_OTLP"] = "1"
    if sse:
        env["KEYGATE_BENCH_SSE"] = "1"
    run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
         "sequential", target], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def annotate(path, inclusive):
    """Function → instructions, and the program's total."""
    text = run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
         "--threshold=100", path],
        stdout=subprocess.PIPE, text=True,
    ).stdout
    functions, total = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        name = m.group(2)
        if "PROGRAM TOTALS" in name:
            total = n
            continue
        name = re.sub(r"\s*\[[^\]]*\]\s*$", "", name)  # the object file
        name = re.sub(r"^[^:]*?:(?!:)", "", name, count=1)  # the source file
        functions[name] = functions.get(name, 0) + n
    if total is None:
        sys.exit(f"instructions.py: no totals in {path}")
    return functions, total


def library(function):
    """The crate (or C library) a function of callgrind's listing belongs to."""
    name = re.sub(r"^[<&*]+(dyn |mut )?", "", function)
    if name.startswith("_rjem") or name == "do_rallocx":
        return "allocator (jemalloc)"
    if re.match(r"(sqlite3|wal|btree|balance_|vdbe|pcache|memjrnl)", name):
        return "SQLite (C)"
    if name.startswith("__") or "@@GLIBC" in name or name.startswith("clock_gettime"):
        return "libc (memcpy, clock)"
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    if not m:
        return "other"
    crate = m.group(1)
    return "keygate's own code" if crate.startswith("keygate") else crate


def by_library(low_file, high_file, calls):
    (fa, _), (fb, _) = annotate(low_file, False), annotate(high_file, False)
    out = {}
    for name in set(fa) | set(fb):
        lib = library(name)
        out[lib] = out.get(lib, 0) + (fb.get(name, 0) - fa.get(name, 0)) / calls
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", help="a proxy bench binary built before")
    ap.add_argument("--calls", default="1000,3000", help="the two call counts (1000,3000)")
    ap.add_argument("--otlp", action="store_true", help="export spans too")
    ap.add_argument("--sse", action="store_true", help="the upstream answers in SSE streams")
    ap.add_argument("--keep", help="keep callgrind's files in this directory")
    args = ap.parse_args()
    low, high = (int(n) for n in args.calls.split(","))
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py: valgrind is missing; run `benches/setup.sh valgrind`")
    binary = args.bin or bench_binary()

    per_call, stages, libraries = {}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        os.makedirs(tmp, exist_ok=True)
        for target in TARGETS:
            print(f"counting {target} …", file=sys.stderr, flush=True)
            a = count(binary, target, low, tmp, args.otlp, args.sse)
            b = count(binary, target, high, tmp, args.otlp, args.sse)
            (_, ta), (_, tb) = annotate(a, False), annotate(b, False)
            per_call[target] = (tb - ta) / (high - low)
            if target in ("bare", "pass-through"):
                libraries[target] = by_library(a, b, high - low)
            if target == "pass-through":
                (fa, _), (fb, _) = annotate(a, True), annotate(b, True)
                for label, rx in STAGES:
                    pattern = re.compile(rx)
                    n = sum(v for k, v in fb.items() if pattern.search(k)) - sum(
                        v for k, v in fa.items() if pattern.search(k))
                    stages[label] = n / (high - low)

    d = per_call["direct"]
    own = {
        "forwarder": per_call["bare"] - 2 * d,
        "keygate pass-through": per_call["pass-through"] - 2 * d,
        "keygate aggregated": per_call["aggregated"] - 2 * d,
    }
    fwd = own["forwarder"]
    print(f"instructions per call (callgrind, {low} and {high} calls)"
          f"{' with span export' if args.otlp else ''}{', SSE answers' if args.sse else ''}")
    print(f"{'':<24}{'own':>10}{'×forwarder':>12}{'added':>10}")
    print(f"{'client + upstream':<24}{d:>10.0f}{'—':>12}{'—':>10}")
    for name, n in own.items():
        print(f"{name:<24}{n:>10.0f}{n / fwd:>11.2f}×{n - fwd:>+10.0f}")
    print()
    print("where a pass-through call goes (inclusive, per call)")
    for label, n in stages.items():
        print(f"{label:<50}{n:>10.0f}")
    print()
    print("what keygate pass-through adds over the forwarder, by library (own instructions)")
    bare, passing = libraries["bare"], libraries["pass-through"]
    added = {lib: passing.get(lib, 0) - bare.get(lib, 0) for lib in set(bare) | set(passing)}
    ranked = sorted(added.items(), key=lambda kv: -kv[1])
    for lib, n in ranked[:14]:
        print(f"{lib:<32}{n:>+10.0f}")
    rest = sum(n for _, n in ranked[14:])
    print(f"{'the rest':<32}{rest:>+10.0f}")


if __name__ == "__main__":
    main()
