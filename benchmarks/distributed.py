"""Tensor parallelism on this machine: time per greedy decode step with 1 and 2 processes, time in
collectives, bytes per rank (chapter 09).

    python benchmarks/distributed.py               # 3 rounds of (1 proc x 1 thread, 1 proc x 2 threads, 2 procs x 1 thread)
    python benchmarks/distributed.py --rounds 1 --steps 20     # quicker

Each configuration is a fresh `torchrun` (`course_lib.distributed.step_timing`): the shipped model,
an 8-token prompt, 5 untimed steps, then `--steps` steps timed one by one (median). Rounds
interleave the configurations so a burst of load on the shared machine hits all of them; the
table shows the median over rounds (each a median over steps; "in collectives" and
"outside them" are per-step medians, so they need not add up to the step exactly). Both 1-process rows are baselines: 1 thread (the same
compute per process as each TP rank gets) and 2 threads (the same 2 cores as 2 processes).

Why TP was slower in our runs (a 2-core VM shared with other jobs), and what changes elsewhere:
- this model is tiny (width 64): a decode step is ~1 ms of arithmetic, while each of the 10
  collectives per step (9 all-reduces of 64 floats, one all-gather of 2 numbers) is a gloo round
  trip through the kernel's TCP stack and needs BOTH processes scheduled on a loaded 2-core VM;
- with NCCL on GPUs in one node, an all-reduce of a few KB over NVLink takes ~10-20 us, and the
  model is large enough (width 4096+) that halving each rank's weight reads halves most of the
  step: decode is bound by reading weights, and TP splits exactly that;
- across nodes, every all-reduce crosses the network (InfiniBand, tens of us to ms): TP stays
  inside a node, and nodes are combined with pipeline or data parallelism instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from course_lib.core.files import atomic_write_text
from course_lib.core.paths import RUNS, display_path
from course_lib.distributed.step_timing import measure

CONFIGS = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)


def run(rounds: int, steps: int) -> list[dict]:
    by_config: dict[tuple[int, int], list[dict]] = {c: [] for c in CONFIGS}
    for r in range(rounds):
        for nproc, threads in CONFIGS:
            row = measure(nproc, threads, steps=steps)
            by_config[(nproc, threads)].append(row)
            print(f"round {r + 1}/{rounds}: {nproc} process(es) x {threads} thread(s): {row['step_ms']:.2f} ms/step",
                  file=sys.stderr, flush=True)
    out = []
    for (nproc, threads), rows in by_config.items():
        med = lambda k, rows=rows: statistics.median(r[k] for r in rows)  # noqa: E731
        summary = {"processes": nproc, "threads": threads, "rounds": len(rows), "step_ms": med("step_ms"),
                   "collective_ms": med("collective_ms"), "compute_ms": med("compute_ms"), "collective_calls": rows[0]["collective_calls"],
                   "sent_bytes_per_step": rows[0]["sent_bytes_per_step"], "weight_bytes": rows[0]["weight_bytes"],
                   "kv_bytes_full_context": rows[0]["kv_bytes_full_context"], "all_step_ms": [r["step_ms"] for r in rows]}
        if nproc == 1:
            summary["single_process_model_ms"] = med("single_process_model_ms")
        out.append(summary)
    return out


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["processes"] == 1 and r["threads"] == 1)["step_ms"]
    lines = ["| processes x threads | ms/step (median) | vs 1x1 | in collectives ms | outside them ms | collectives/step | bytes sent/step/rank "
             "| weights MB/rank | KV cache MB/rank (512 tokens) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['processes']} x {r['threads']} | {r['step_ms']:.2f} | {r['step_ms'] / base:.2f}x | "
                     f"{r['collective_ms']:.2f} | {r['compute_ms']:.2f} | {r['collective_calls']} | {r['sent_bytes_per_step']} | "
                     f"{r['weight_bytes'] / 1e6:.2f} | {r['kv_bytes_full_context'] / 1e6:.2f} |")
    model = [r for r in rows if "single_process_model_ms" in r]
    lines.append("")
    lines += [f"plain GPT.decode_step (no TP wrapper), {r['threads']} thread(s): {r['single_process_model_ms']:.2f} ms/step"
              for r in model]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/distributed.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: runs/bench/distributed-<time>.json)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps must be >= 1")
    rows = run(args.rounds, args.steps)
    print(table(rows))
    out = args.out or RUNS / "bench" / f"distributed-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    atomic_write_text(out, json.dumps(rows, indent=2) + "\n", overwrite=False)
    print(f"\nsaved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
