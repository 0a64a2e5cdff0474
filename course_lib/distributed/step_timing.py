"""What the tensor-parallel split costs and buys: time per decode step, time in collectives, bytes per rank.

Run under torchrun (one JSON line from rank 0), or call `measure(nproc, threads)` to launch it:

    torchrun --nproc_per_node 2 -m course_lib.distributed.step_timing --steps 40

Each rank prefills a prompt, runs `--warmup` greedy decode steps untimed, then times `--steps`
steps one by one (median). A step of 2 processes includes 9 all-reduces (the embedding, then 2 per
layer) and the argmax all-gather; "in collectives" is the wall time inside those calls, which is
transfer time PLUS waiting for the slower rank. The single-process model (`GPT.decode_step` and
an argmax, no communication at all) is timed in the same run when there is 1 process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from course_lib.distributed.comm import Comm
from course_lib.distributed.gather import all_gather_object
from course_lib.distributed.launch import run_torchrun
from course_lib.distributed.process_group import init_from_env, shutdown
from course_lib.distributed.tp_gpt import TPGPT, weight_bytes
from course_lib.text.gpt import load_gpt

PROMPT_IDS = [50, 4477, 3180, 5169, 220, 4103, 70, 18821]  # 8 token ids: only the shapes matter for speed


def _time_steps(step, token: torch.Tensor, n: int, comm: Comm | None = None) -> tuple[list[float], list[float]]:
    """Seconds of each of n steps (every step fed the token the previous one chose), and of the
    collectives inside each step."""
    times, in_comm = [], []
    spent = lambda: sum(s.seconds for s in comm.stats.values()) if comm else 0.0  # noqa: E731
    for _ in range(n):
        c0, t0 = spent(), time.perf_counter()
        token = step(token)
        times.append(time.perf_counter() - t0)
        in_comm.append(spent() - c0)
    return times, in_comm


def time_rank(model, comm: Comm, steps: int, warmup: int) -> dict:
    """This rank's row: median ms per greedy step, ms inside collectives, bytes. With world size 1
    (no process group needed: this also runs in a notebook's own process) the plain model is timed too."""
    tp = TPGPT(model, comm)
    idx = torch.tensor([PROMPT_IDS])
    cache = tp.new_cache(1, len(PROMPT_IDS) + warmup + steps + 2)
    with torch.no_grad():
        token = tp.argmax(tp.prefill(idx, cache=cache)[0])
        tp_step = lambda t: tp.argmax(tp.decode_step(t, cache))  # noqa: E731
        _time_steps(tp_step, token, warmup)
        comm.reset_stats()
        times, in_comm = _time_steps(tp_step, token, steps, comm)
        row = {"processes": comm.world_size, "threads": torch.get_num_threads(),
               "step_ms": 1000 * statistics.median(times),
               "collective_ms": 1000 * statistics.median(in_comm),  # the median step's share, not a mean
               "compute_ms": 1000 * statistics.median(t - c for t, c in zip(times, in_comm, strict=True)),
               "collective_calls": sum(s.calls for s in comm.stats.values()) // steps,
               "sent_bytes_per_step": sum(s.bytes for s in comm.stats.values()) // steps,
               "weight_bytes": weight_bytes(tp),
               "kv_bytes_full_context": tp.new_cache(1).k.numel() * 2 * 4}
        if comm.world_size == 1:  # the model itself, no TP wrapper: the baseline
            ref_cache = model.new_cache(1)
            model.prefill(idx, cache=ref_cache)
            ref_step = lambda t: model.decode_step(t, ref_cache).argmax(-1, keepdim=True)  # noqa: E731
            _time_steps(ref_step, token, warmup)
            row["single_process_model_ms"] = 1000 * statistics.median(_time_steps(ref_step, token, steps)[0])
            row["single_process_weight_bytes"] = weight_bytes(model)
    return row


def worker(steps: int, warmup: int) -> dict | None:
    """Under torchrun: every rank times its steps; rank 0 returns its row plus every rank's times."""
    info = init_from_env("cpu", timeout=120, command="-m course_lib.distributed.step_timing")
    row = time_rank(load_gpt(device="cpu"), Comm(info.rank, info.world_size), steps, warmup)
    rows = all_gather_object(row, info.world_size)
    shutdown()
    if info.rank != 0:
        return None
    out = dict(rows[0])
    out["step_ms_per_rank"] = [r["step_ms"] for r in rows]
    out["collective_ms_per_rank"] = [r["collective_ms"] for r in rows]
    return out


def measure(nproc: int, threads: int = 1, steps: int = 40, warmup: int = 5) -> dict:
    """Launch the timing worker with nproc processes of `threads` threads each -> rank 0's JSON row."""
    r = run_torchrun(nproc, "course_lib.distributed.step_timing", "--steps", str(steps), "--warmup", str(warmup),
                     threads=threads)
    if r.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} process(es) failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m course_lib.distributed.step_timing",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    row = worker(args.steps, args.warmup)
    if row is not None:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
