"""Compare the whole path's throughput of two checkouts of this repository, run in turn.

This machine's speed drifts by more than most changes give, from one minute to the next, so two
figures taken an hour apart say little. This runs the two checkouts alternately (each pair in the
other order than the one before: A B, B A, A B, ...), each on a topic fed afresh: the bare Faust
agent (``bench/bare_faust.py``, the ceiling) and then the whole path on one worker, over the
bundled sample, and prints for each run and as medians per checkout:

- ``ratio``: the whole path's ticks/s over the bare agent's msg/s in the same run;
- ``main_us``: the worker's main thread (its event loop) CPU µs per tick;
- ``busy``: the share of the run that thread was on a CPU;
- ``trading_us``: the trading processor's µs per tick, a gauge of the machine's speed in that run.

Usage::

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/compare.py --pairs 4 /tmp/before .

Each checkout's own code runs its worker and its bare agent (``PYTHONPATH`` is the checkout);
the Kafka broker is the one ``make up`` started. About 30 s a run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(root: str) -> dict:
    """Both measurements with the code of ``root`` (this script run under it with ``--one``)."""
    sys.path[:0] = [root, str(Path(root) / "bench")]
    from app.local import SAMPLE, Stack
    from pipeline import N_SAMPLE, bare_faust, cpu_seconds, metric_sum, whole_path

    tmp = Path(tempfile.mkdtemp(prefix="compare-"))
    stack = Stack(tmp / "stack", BAR_SECONDS="1", CONSENSUS_MIN_AGENTS="1")
    try:
        stack.declare_topics()
        stack.feed(SAMPLE, "max")
        bare_cpu: dict = {}
        bare_s = bare_faust(stack.env["TOPIC_PREFIX"] + "price.ticks", N_SAMPLE, "kafka", tmp, cpu=bare_cpu)
        if not isinstance(bare_s, float):
            raise RuntimeError(f"bare Faust agent: {bare_s}")
        w = stack.worker()
        w.start()
        t0, main0 = time.monotonic(), cpu_seconds(w.proc.pid, main_thread=True)
        ticks0 = metric_sum([w], "moondev_ticks_consumed_total")
        done: list = []
        first, last = whole_path([w], N_SAMPLE, on_consumed=lambda: done.extend(
            (time.monotonic(), cpu_seconds(w.proc.pid, main_thread=True))))
        m = w.metrics()
        trading = m['moondev_processing_seconds_sum{agent="trading"}'] / m['moondev_processing_seconds_count{agent="trading"}']
        whole = N_SAMPLE / (last - first)
        bare = N_SAMPLE / bare_s
        return {"ratio": whole / bare, "whole_ticks_s": whole, "bare_msg_s": bare,
                "main_us": (done[1] - main0) / (N_SAMPLE - ticks0) * 1e6, "busy": (done[1] - main0) / (done[0] - t0),
                "trading_us": trading * 1e6}
    finally:
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help="runs of each checkout, alternating")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("roots", nargs="*", help="two checkouts of this repository")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.one)), flush=True)
        return
    if len(args.roots) != 2 or not all((Path(r) / "app" / "main.py").is_file() for r in args.roots):
        ap.error("give two checkouts of this repository")
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    roots = [str(Path(r).resolve()) for r in args.roots]
    results: dict[str, list[dict]] = {r: [] for r in roots}
    for i in range(args.pairs):
        # The order within a pair alternates (A B, B A, ...): the second run of a pair was the
        # slower one in five pairs of six on 2026-12-07, whichever checkout it was.
        for root in roots if i % 2 == 0 else roots[::-1]:
            proc = subprocess.run([sys.executable, __file__, "--one", root], cwd=root, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": root})
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{i} {root}: failed\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(line[len("RESULT "):])
            results[root].append(r)
            print(f"{i} {root}: " + ", ".join(f"{k} {v:,.2f}" for k, v in r.items()), flush=True)
    for root, rs in results.items():
        if rs:
            print(f"median of {len(rs)} {root}: " + ", ".join(
                f"{k} {statistics.median(r[k] for r in rs):,.2f}" for k in rs[0]), flush=True)


if __name__ == "__main__":
    main()
