"""Decode speed of the shipped course GPT against Hugging Face `generate` on the same weights.

    python benchmarks/decode.py --threads 1      # every table (tens of minutes on a loaded 2-core CPU)
    python benchmarks/decode.py --quick          # batch 1, context 128, 3 repeats, no compile, no goal row

The model is the shipped text GPT (`load_gpt()`); Hugging Face runs a `LlamaForCausalLM` holding the
same weights (`benchmarks/hf_llama.py`: identical logits), so speculative and prompt-lookup decoding
see what the model really predicts. Prompts are real: each row is held-out corpus listings ending in a
brand name (`course_lib.text.corpus.BRANDS`), cut to exactly `context - new` tokens, so no row is padded.

Variants (`VARIANTS`, name -> builder; a builder returns None where the variant does not apply):
- course cached loop: `GPT.generate(temperature=0)` (chapter 03's contiguous KV cache);
- static, compiled decode: `generate_static(compile="decode")`: eager prefill, the whole decode step
  compiled by inductor (one graph per batch size and cache bucket);
- static, compiled decode + prefill: `generate_static(compile=True)`: the prefill compiled too, at a
  bucketed prompt length (eager when the bucket leaves no room for the new tokens);
- HF generate: greedy, DynamicCache, `min_new_tokens` = `max_new_tokens` (no early stop);
- HF prompt lookup: the same with `prompt_lookup_num_tokens=8` (model-free n-gram drafts), batch 1 only;
- speculative (course): `speculative_generate(target, load_draft(), ..., k=4)`, added automatically
  when `course_lib.decoding.speculative` is importable.

Method: greedy, fp32. Every variant's tokens are compared with the fp32 greedy reference (the course
cached loop) before anything is timed; a variant that disagrees is reported and not timed. Then
`--repeats` rounds, each running every variant once in turn (a change of machine load hits all alike);
the median is reported. tokens/s counts new tokens only (batch x new / seconds, prefill included);
ratios are taken within the same run. Compilation happens in the untimed reference run. The goal row:
batch 1, 160 new tokens after a bare brand name (`--goal-prompts` brands, one after the other).
The bound that applies is measured in the same run: the head matvec alone, a 0-layer decode step
(`course_lib.decoding.speed`) and the DRAM streaming rate; then cached decode throughput against batch size
(`speed.batch_curve`) and the KV-cache memory formula. Results are printed as markdown and saved as JSON
under runs/bench/ (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hf_llama.py sits next to this file

from hf_llama import hf_available, to_hf_llama  # noqa: E402

from course_lib.caches.kv_cache import kv_cache_bytes  # noqa: E402
from course_lib.core.device import pick_device  # noqa: E402
from course_lib.core.files import atomic_write_text  # noqa: E402
from course_lib.core.paths import RUNS, display_path  # noqa: E402
from course_lib.core.timing import sync, time_fn  # noqa: E402
from course_lib.decoding.speed import batch_curve, step_costs  # noqa: E402
from course_lib.decoding.static import generate_static  # noqa: E402
from course_lib.text.corpus import BRANDS, generate_corpus  # noqa: E402
from course_lib.text.gpt import GPT, load_gpt  # noqa: E402
from course_lib.text.tokenizer import get_encoding  # noqa: E402

GOAL_NEW_TOKENS = 160
# A LLaMA-2-7B-shaped model (32 layers, 32 KV heads of 128, 6.74 B parameters), fp16, for the memory table.
LLAMA_7B = {"n_layer": 32, "n_kv_head": 32, "head_dim": 128, "params": 6_738_415_616, "bytes": 2}


@dataclass
class Setup:
    """What a variant builder gets: the models, the prompt batch (B, T), the number of new tokens."""

    model: GPT
    hf: object | None
    x: torch.Tensor
    new: int
    compile: bool
    draft: object | None = None

    @property
    def batch(self) -> int:
        return self.x.shape[0]


Builder = Callable[[Setup], Callable[[], torch.Tensor] | None]


def _hf(s: Setup, **kw) -> Callable[[], torch.Tensor] | None:
    if s.hf is None:
        return None
    mask = torch.ones_like(s.x)
    return lambda: s.hf.generate(input_ids=s.x, attention_mask=mask, max_new_tokens=s.new, min_new_tokens=s.new,
                                 do_sample=False, **kw)


VARIANTS: dict[str, Builder] = {
    "course cached loop": lambda s: lambda: s.model.generate(s.x, s.new, temperature=0),
    "static, compiled decode": lambda s: (lambda: generate_static(s.model, s.x, s.new, temperature=0.0, compile="decode")) if s.compile else None,
    "static, compiled decode + prefill": lambda s: (lambda: generate_static(s.model, s.x, s.new, temperature=0.0, compile=True)) if s.compile else None,
    "HF generate": lambda s: _hf(s),
    "HF prompt lookup (8)": lambda s: _hf(s, prompt_lookup_num_tokens=8) if s.batch == 1 else None,
}


def add_speculative_variant() -> str:
    """Add the course's speculative decoding (k=4) to VARIANTS when its module exists; say what happened."""
    try:
        from course_lib.decoding.speculative import load_draft, speculative_generate
    except ImportError as exc:
        return f"skipped ({exc})"
    draft_cache: dict[str, object] = {}

    def build(s: Setup):
        if s.batch != 1:
            return None
        if "draft" not in draft_cache:
            draft_cache["draft"] = load_draft(s.model.device)
        return lambda: speculative_generate(s.model, draft_cache["draft"], s.x, s.new, k=4, temperature=0.0)

    VARIANTS["speculative k=4 (course)"] = build
    return "speculative_generate(k=4) with load_draft()"


def brand_prompts(enc, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) ids: held-out listings, then a newline and a brand, cut to the last `length` tokens."""
    rows = []
    for b in range(batch):
        brand = BRANDS[(seed + b) % len(BRANDS)]
        ids: list[int] = []
        n = 8
        while len(ids) < length:
            text = "\n".join(generate_corpus(n, seed=1000 * seed + b, split="heldout")) + "\n" + brand
            ids = enc.encode(text)
            n *= 2
        rows.append(ids[-length:])
    return torch.tensor(rows)


def read_bandwidth(device: torch.device, mbytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of streaming reads over a buffer far larger than the CPU caches (DRAM): the best of
    a sum and of a matrix-vector product shaped like the output head."""
    w = torch.ones(mbytes * 2**20 // 4 // 64, 64, device=device)
    v = torch.ones(64, device=device)
    best = min(time_fn(lambda: w.sum(), device, repeats).seconds, time_fn(lambda: w @ v, device, repeats).seconds)
    return w.numel() * 4 / best


def run_group(setups: list[Setup], repeats: int, device: torch.device, label: dict) -> list[dict]:
    """Check every applicable variant against the reference, then time them in interleaved rounds.

    One group = one (batch, context) cell; `setups` holds one Setup per prompt set (the goal row runs
    several bare brand prompts one after the other, each is a call)."""
    fns: dict[str, list[Callable[[], torch.Tensor]]] = {}
    notes: dict[str, str] = {}
    refs = [s.model.generate(s.x, s.new, temperature=0) for s in setups]
    for name, build in VARIANTS.items():
        built = [build(s) for s in setups]
        if any(f is None for f in built):
            continue
        t0 = time.perf_counter()
        with torch.no_grad():
            outs = [f() for f in built]  # the first call compiles, where there is anything to compile
        first = time.perf_counter() - t0
        bad = [i for i, (o, r) in enumerate(zip(outs, refs, strict=True)) if not torch.equal(o.to(r.device), r)]
        notes[name] = f"first call {first:.1f} s"
        if bad:
            notes[name] += f"; tokens differ from the fp32 greedy reference (prompt set {bad}): not timed"
            print(f"  batch {label['batch']}, context {label['context']}: {name}: MISMATCH, not timed", flush=True)
            continue
        fns[name] = built
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, built in fns.items():
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                for f in built:
                    f()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    tokens = sum(s.batch * s.new for s in setups)
    rows = []
    for name in VARIANTS:
        if name not in notes:
            continue
        row = {**label, "method": name, "new_tokens": setups[0].new, "note": notes[name]}
        if name in times:
            secs = statistics.median(times[name])
            row.update(seconds=round(secs, 4), tokens_per_s=round(tokens / secs, 1),
                       ms_per_token_step=round(1000 * secs / (tokens / setups[0].batch), 2))
            print(f"  batch {label['batch']}, context {label['context']}: {name:34s} {tokens / secs:9.1f} tok/s", flush=True)
        rows.append(row)
    hf = next((r for r in rows if r["method"] == "HF generate" and "tokens_per_s" in r), None)
    course = next((r for r in rows if r["method"] == "course cached loop" and "tokens_per_s" in r), None)
    for r in rows:
        if "tokens_per_s" in r:
            r["vs_hf"] = round(r["tokens_per_s"] / hf["tokens_per_s"], 2) if hf else None
            r["vs_course_loop"] = round(r["tokens_per_s"] / course["tokens_per_s"], 2) if course else None
    return rows


def parse_ints(text: str, name: str, ap: argparse.ArgumentParser) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        ap.error(f"{name} takes comma-separated integers, e.g. {name} 1,4,16")
        raise  # unreachable: ap.error exits with code 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/decode.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    ap.add_argument("--contexts", default="128,512", help="total lengths at the end of generation (default 128,512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--goal-prompts", type=int, default=4,
                    help=f"bare brand prompts of the goal row (batch 1, {GOAL_NEW_TOKENS} new tokens); 0 skips it")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per cell; the median is reported")
    ap.add_argument("--curve-batches", default="1,2,4,8,16,32",
                    help="batch sizes of the throughput curve (cached decode steps; default 1,2,4,8,16,32)")
    ap.add_argument("--curve-context", type=int, default=128, help="context length of the throughput curve (default 128)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled static-cache variants")
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face even if transformers is installed")
    ap.add_argument("--quick", action="store_true", help="batch 1, context 128, 3 repeats, no compile, no goal row")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (default: runs/bench/decode-<time>.json)")
    return ap


def fmt(v: float | None, suffix: str = "x") -> str:
    return "" if v is None else f"{v}{suffix}"


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    batches = parse_ints(args.batch_sizes, "--batch-sizes", ap)
    contexts = parse_ints(args.contexts, "--contexts", ap)
    curve = parse_ints(args.curve_batches, "--curve-batches", ap)
    if args.quick:
        batches, contexts, args.repeats, args.no_compile, args.goal_prompts, curve = [1], [128], 3, True, 0, [1, 4, 16]
    if args.new_tokens < 1 or args.repeats < 1 or min(batches + curve) < 1 or args.goal_prompts < 0:
        ap.error("--new-tokens, --repeats and every batch size must be >= 1, --goal-prompts >= 0")
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; choose a new --out (earlier runs are never overwritten)")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    try:
        device = pick_device(args.device, verbose=False)
    except (ValueError, RuntimeError) as exc:
        ap.error(f"--device: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, enc = load_gpt(device=device), get_encoding()
    block = model.block_size
    if any(not args.new_tokens < c <= block for c in contexts):
        ap.error(f"every context must be in ({args.new_tokens}, {block}] (the prompt is context - new tokens)")
    if not 2 <= args.curve_context <= block:
        ap.error(f"--curve-context must be in [2, {block}]")
    hf_version = None if args.no_hf else hf_available()
    hf = to_hf_llama(model, device) if hf_version else None
    hf_note = "skipped (--no-hf)" if args.no_hf else (f"transformers {hf_version}" if hf else
                                                       "transformers not installed (benchmarks/requirements-bench.txt)")
    spec_note = add_speculative_variant()
    head_bytes = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}; "
          f"shipped model {model.num_params() / 1e6:.2f} M params; HF: {hf_note}; speculative: {spec_note}", flush=True)

    rows, floors = [], []
    for ctx in contexts:
        for B in batches:
            x = brand_prompts(enc, B, ctx - args.new_tokens).to(device)
            rows += run_group([Setup(model, hf, x, args.new_tokens, not args.no_compile)], args.repeats, device,
                              {"batch": B, "context": ctx})
            parts = step_costs(model, ctx, batch=B, repeats=args.repeats, parts=("head matvec", "0-layer step"))
            floors.append({"batch": B, "context": ctx, "head_matvec_ms": round(parts["head matvec"], 3),
                           "zero_layer_step_ms": round(parts["0-layer step"], 3)})
    if args.goal_prompts:
        setups = [Setup(model, hf, torch.tensor([enc.encode(b)], device=device), GOAL_NEW_TOKENS, not args.no_compile)
                  for b in BRANDS[:args.goal_prompts]]
        rows += run_group(setups, args.repeats, device, {"batch": 1, "context": f"brand + {GOAL_NEW_TOKENS}"})
    bw = read_bandwidth(device)

    print("\n| method | batch | context | tok/s (new tokens, median) | ms/step | vs HF generate | vs course loop |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "tokens_per_s" in r:
            print(f"| {r['method']} | {r['batch']} | {r['context']} | {r['tokens_per_s']:.1f} | {r['ms_per_token_step']:.2f} | "
                  f"{fmt(r['vs_hf'])} | {fmt(r['vs_course_loop'])} |")
        else:
            print(f"| {r['method']} | {r['batch']} | {r['context']} | {r['note']} |  |  |  |")
    print("\nfirst calls (untimed; compilation happens here):")
    for r in rows:
        print(f"  batch {r['batch']}, context {r['context']}, {r['method']}: {r['note']}")

    print(f"\n## The bound that applies\n\nDRAM streaming read bandwidth (best of sum / matrix-vector over 512 MB): "
          f"{bw / 1e9:.1f} GB/s. Output head: {head_bytes / 1e6:.1f} MB (fp32).\n")
    print("| batch | context | head matvec ms | head read rate GB/s | DRAM-bound head ms | 0-layer step ms | course loop ms/step |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for f in floors:
        loop = next((r for r in rows if (r["method"], r["batch"], r["context"]) == ("course cached loop", f["batch"], f["context"])), {})
        f["head_read_GBps"] = round(head_bytes / (f["head_matvec_ms"] / 1000) / 1e9, 1)
        f["dram_bound_head_ms"] = round(1000 * head_bytes / bw, 3)
        print(f"| {f['batch']} | {f['context']} | {f['head_matvec_ms']:.2f} | {f['head_read_GBps']:.1f} | "
              f"{f['dram_bound_head_ms']:.2f} | {f['zero_layer_step_ms']:.2f} | {loop.get('ms_per_token_step', '')} |")
    ones = [f for f in floors if f["batch"] == 1]
    fast = [f for f in ones if f["head_read_GBps"] > bw / 1e9]
    verdict = ("at batch 1 the head is read faster than DRAM can stream: it is served from the CPU caches, so DRAM "
               "bandwidth is not what limits a step; the floor is the 0-layer step (head matvec + per-step overhead)"
               if ones and len(fast) == len(ones) else
               f"at batch 1 the head is read faster than DRAM streams in {len(fast)} of {len(ones)} contexts: "
               "inconclusive (a busy machine?); rerun before naming a bound")
    print(f"\nVerdict (this run): {verdict}.")

    # ---- what batching buys
    curve_rows = batch_curve(model, curve, args.curve_context, repeats=args.repeats)
    print(f"\n## What batching buys (cached decode steps, context {args.curve_context}, prefill not counted)\n")
    print("| batch | ms/step | tokens/s | tokens/s vs previous batch |")
    print("|---:|---:|---:|---:|")
    prev = None
    for r in curve_rows:
        gain = None if prev is None else r["tokens_per_s"] / prev["tokens_per_s"]
        r["gain_vs_previous"] = None if gain is None else round(gain, 2)
        print(f"| {r['batch']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.0f} | {'' if gain is None else f'{gain:.2f}x'} |")
        prev = r

    # ---- KV-cache memory
    h = model.h_params
    print("\n## KV-cache memory: 2 × layers × kv-heads × head_dim × bytes × tokens × batch\n")
    print("| model | context | bytes/value | KV cache per sequence | weights | sequences whose cache equals the weights |")
    print("|---|---:|---:|---:|---:|---:|")
    mem = []
    for name, nl, nkv, hd, tokens, nb, weights in [
            ("course GPT (fp32)", h["n_layer"], h.get("n_kv_head") or h["n_head"], model.head_dim, block, 4, model.num_params() * 4),
            ("LLaMA-7B shape (fp16)", LLAMA_7B["n_layer"], LLAMA_7B["n_kv_head"], LLAMA_7B["head_dim"], 4096,
             LLAMA_7B["bytes"], LLAMA_7B["params"] * LLAMA_7B["bytes"])]:
        per_seq = kv_cache_bytes(nl, nkv, hd, tokens, 1, nb)
        mem.append({"model": name, "context": tokens, "kv_bytes_per_sequence": per_seq, "weight_bytes": weights})
        print(f"| {name} | {tokens} | {nb} | {per_seq / 2**20:,.2f} MiB | {weights / 2**20:,.1f} MiB | {weights / per_seq:,.1f} |")

    out = args.out or RUNS / "bench" / f"decode-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_text(out, json.dumps({
        "command": "python benchmarks/decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type, "hf": hf_note,
        "speculative": spec_note, "read_bandwidth_GBps": round(bw / 1e9, 2), "params": model.num_params(),
        "rows": rows, "floors": floors, "batch_curve": curve_rows, "kv_memory": mem}, indent=1, ensure_ascii=False))
    print(f"\nsaved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
