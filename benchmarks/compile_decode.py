"""Compiled static-cache decoding vs eager, on the shipped text model (chapter 06).

    python benchmarks/compile_decode.py                       # CPU, inductor, 64 new tokens, 7 repeats
    python benchmarks/compile_decode.py --out assets/bench/compile_decode_cpu.json   # what chapter 06 shows

Variants (greedy, batch 1, prompt "农夫山泉", the same tokens checked before anything is timed):
- eager, contiguous cache: `GPT.generate(temperature=0)` (chapter 03's KVCache);
- eager, static cache: `decoding.static.generate_static` with the uncompiled step;
- compiled, contiguous cache: `torch.compile(model.decode_step)` (defaults: dynamo marks the growing
  length dynamic after one recompile);
- compiled, static cache: `static_cache.compile_decode_step()` (fullgraph, static shapes: one graph);
- on CUDA also the static step with `mode="reduce-overhead"` (CUDA graphs).

Method: the first call of each variant is timed separately as "first run" (it includes compilation);
then `--repeats` rounds, each timing every variant once in turn (so a change in machine load hits all
variants alike); the median per variant is reported as new tokens per second, with its ratio to the
eager contiguous loop. Graph counts come from dynamo's counters. Results are printed as a markdown
table and written as JSON (default: a new file under runs/bench/).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from course_lib.caches.static_cache import StaticKVCache, compile_decode_step, forward_static
from course_lib.core.device import pick_device
from course_lib.core.files import atomic_write_text
from course_lib.core.paths import RUNS, display_path
from course_lib.decoding.static import generate_static
from course_lib.text.gpt import load_gpt
from course_lib.text.tokenizer import get_encoding


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def unique_graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@torch.no_grad()
def contiguous_loop(model, step, idx: torch.Tensor, new: int) -> torch.Tensor:
    """Chapter 03's loop with a pluggable decode step: prefill, then `step(token, cache)`."""
    logits, cache = model.prefill(idx)
    out = [idx]
    for i in range(new):
        tok = logits.argmax(-1, keepdim=True)
        out.append(tok)
        if i + 1 < new:
            logits = step(tok, cache)
    return torch.cat(out, dim=1)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/compile_decode.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="农夫山泉")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported (default 7)")
    ap.add_argument("--max-len", type=int, default=None,
                    help="static cache length; attention reads all of it (default: prompt + new tokens rounded up to 8, as gpt-fast)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: the model is tiny)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: runs/bench/compile_decode-<time>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.new_tokens < 2 or args.repeats < 1 or args.threads < 1:
        ap.error("--new-tokens must be >= 2, --repeats and --threads >= 1")
    try:
        device = pick_device(args.device, verbose=False)
    except (ValueError, RuntimeError) as exc:
        ap.error(f"--device: {exc}")
    torch.set_num_threads(args.threads)
    model, enc = load_gpt(device=device), get_encoding()
    idx = torch.tensor([enc.encode(args.prompt)], device=device)
    new = args.new_tokens
    if args.max_len is None:
        args.max_len = min(model.block_size, -(-(idx.shape[1] + new) // 8) * 8)
    if not idx.shape[1] + new <= args.max_len <= model.block_size:
        ap.error(f"need prompt + --new-tokens ({idx.shape[1] + new}) <= --max-len <= block_size {model.block_size}")
    cache = StaticKVCache.for_model(model, 1, args.max_len)  # one cache, reused: every call re-prefills it

    variants = {
        "eager, contiguous cache": lambda: model.generate(idx, new, temperature=0),
        "eager, static cache": lambda: generate_static(model, idx, new, temperature=0.0, cache=cache, step=forward_static),
    }
    compiled_contiguous = torch.compile(model.decode_step)
    variants["compiled, contiguous cache"] = lambda: contiguous_loop(model, compiled_contiguous, idx, new)
    compiled_static = compile_decode_step()
    variants["compiled, static cache"] = lambda: generate_static(model, idx, new, temperature=0.0, cache=cache, step=compiled_static)
    if device.type == "cuda":
        graphs_step = compile_decode_step(mode="reduce-overhead")
        variants["compiled, static cache, CUDA graphs"] = lambda: generate_static(model, idx, new, temperature=0.0, cache=cache, step=graphs_step)

    reference = variants["eager, contiguous cache"]()
    first_run, graphs = {}, {}
    for name, fn in variants.items():
        before = unique_graphs()
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        first_run[name] = time.perf_counter() - t0
        graphs[name] = unique_graphs() - before
        if not torch.equal(out, reference):
            print(f"error: {name} does not reproduce the eager greedy tokens", file=sys.stderr)
            return 1
        fn()  # a second untimed run: the contiguous compiled step recompiles once on its second length
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["eager, contiguous cache"])
    rows = []
    for name in variants:
        med = statistics.median(times[name])
        rows.append({"variant": name, "graphs": graphs[name] if name.startswith("compiled") else None,
                     "first_run_s": round(first_run[name], 2), "median_s": round(med, 4),
                     "tok_per_s": round(new / med, 1), "vs_eager_contiguous": round(base / med, 2)})
    meta = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "new_tokens": new, "max_len": args.max_len, "prompt": args.prompt,
            "repeats": args.repeats, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/compile_decode.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"torch {meta['torch']}, {meta['device']}, threads {meta['threads']}, {new} new tokens, static max_len "
          f"{args.max_len}, median of {args.repeats}")
    print("| variant | graphs | first run s | tok/s (median) | vs eager contiguous |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        g = "" if r["graphs"] is None else r["graphs"]
        print(f"| {r['variant']} | {g} | {r['first_run_s']:.2f} | {r['tok_per_s']:.1f} | {r['vs_eager_contiguous']:.2f}x |")
    out = args.out or RUNS / "bench" / f"compile_decode-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_text(out, json.dumps({"meta": meta, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    print(f"saved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
