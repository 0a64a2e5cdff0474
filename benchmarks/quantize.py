"""Weight-only quantization of the shipped text model: what it costs in quality, what it saves in bytes and time.

    python benchmarks/quantize.py --threads 1            # everything (~10 minutes on a loaded 2-core VM)
    python benchmarks/quantize.py --threads 1 --quick    # no held-out evaluation, 2 timing rounds

For fp32 (the shipped weights), bf16 (the whole model cast), int8 (per-channel) and int4 (groups of
--group-size inputs), all from `course_lib.caches.quantize`:
- held-out loss: the recipe's `course_lib.train.text.evaluate()` (loss on 2,000 held-out-split
  lines, never trained on), and its well-formed rate of 280 samples (20 per brand, T 0.7) with a
  95% Wilson interval;
- greedy agreement with fp32 over a fixed prompt set (`quality.agreement_prompts`: every brand,
  and each brand with the first word of 8 held-out listings): greedy, up to 160 new tokens or
  until the newline (included); identical lines k/n and the share of fp32's tokens produced before
  the first difference;
- weight bytes (every parameter and buffer, a tied table counted once);
- decode tok/s at batch 1 and 16: `GPT.generate` greedy, brand prompts left-padded, --new-tokens
  new tokens with no early stop; variants timed in interleaved rounds (one call of each per round,
  after a warm-up) so load drift hits all alike; medians; ratios vs fp32 of the same run;
- head kernels: the (B, 64) @ (64, 100277) head matvec alone in each storage and kernel, incl.
  PyTorch's packed `torch._weight_int8pack_mm` and `torch._weight_int4pack_mm_for_cpu`.
Results are printed as markdown and saved as JSON under runs/bench/ (never overwritten).
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
import torch.nn.functional as F

from course_lib.caches.quantize import (
    dequantize_int4,
    quantize,
    quantize_groups_int4,
    quantize_per_channel_int8,
    unpack_int4,
    weight_bytes,
)
from course_lib.core.files import atomic_write_text
from course_lib.core.paths import RUNS, display_path
from course_lib.core.stats import fmt_rate
from course_lib.core.timing import time_fn
from course_lib.decoding.batching import pad_batch
from course_lib.decoding.quality import agreement, agreement_prompts, greedy_lines
from course_lib.text.corpus import BRANDS, generate_corpus
from course_lib.text.gpt import load_gpt
from course_lib.text.tokenizer import get_encoding
from course_lib.train.text import TRAIN_SEED, evaluate

RECIPE_LINES, RECIPE_SEQ_LEN = 150000, 256  # the recipe's defaults (`python -m course_lib.train.text`)


def variants(model, group_size: int) -> dict:
    return {"fp32": model, "bf16": quantize(model, "bf16"), "int8": quantize(model, "int8"),
            f"int4 g{group_size}": quantize(model, "int4", group_size)}


@torch.no_grad()
def decode_speed(models: dict, enc, batch: int, new_tokens: int, rounds: int) -> dict:
    """Median seconds of generating new_tokens greedy tokens for `batch` brand prompts, per variant."""
    prompts = [BRANDS[i % len(BRANDS)] for i in range(batch)]
    ids, mask = pad_batch(enc, prompts, 512)
    calls = {name: (lambda m=m: m.generate(ids, new_tokens, temperature=0, attention_mask=mask)) for name, m in models.items()}
    for fn in calls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name] += time_fn(fn, "cpu", repeats=1, warmup=0).times
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def head_kernels(weight: torch.Tensor, group_size: int, repeats: int, compile_fused: bool = True) -> list[dict]:
    """ms of the head matvec at batch 1 and 16 for each storage and kernel (median of `repeats`).

    "int8 fused (compiled)" is what gpt-fast relies on: torch.compile turns dequantize-multiply-sum
    into one loop that reads int8 weights and never writes an fp32 copy of the table."""
    N, K = weight.shape
    q8, s8 = quantize_per_channel_int8(weight)
    p4, s4, lo4 = quantize_groups_int4(weight, group_size)
    wb = weight.bfloat16()
    # PyTorch's int4 CPU kernel: rows padded to a multiple of 16, codes as int32, (scale, zero) with
    # zero = minimum + 8 · scale (gpt-fast's convention: the kernel computes (code - 8) · scale + zero).
    Np = -(-N // 16) * 16
    codes = F.pad(unpack_int4(p4).to(torch.int32), (0, 0, 0, Np - N))
    sz = torch.stack([F.pad(s4, (0, 0, 0, Np - N), value=1.0), F.pad(lo4 + 8 * s4, (0, 0, 0, Np - N))], -1)
    packed4 = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    sz = sz.transpose(0, 1).contiguous()
    fused = torch.compile(lambda x: (x[:, None, :] * q8.to(x.dtype)).sum(-1) * s8) if compile_fused else None
    rows = []
    for B in (1, 16):
        x = torch.randn(B, K, generator=torch.Generator().manual_seed(0))
        fns = {"fp32 F.linear": lambda x=x: F.linear(x, weight),
               "bf16 (bf16 activations)": lambda x=x: F.linear(x.bfloat16(), wb),
               "int8 dequantize + F.linear (course)": lambda x=x: F.linear(x, q8.to(x.dtype)) * s8,
               "int8 torch._weight_int8pack_mm": lambda x=x: torch._weight_int8pack_mm(x, q8, s8),
               "int4 unpack + dequantize + F.linear (course)": lambda x=x: F.linear(x, dequantize_int4(p4, s4, lo4)),
               "int4 torch._weight_int4pack_mm_for_cpu":
                   lambda x=x: torch._weight_int4pack_mm_for_cpu(x, packed4, group_size, sz)[:, :N]}
        if fused is not None:
            fns["int8 fused multiply-sum (torch.compile)"] = lambda x=x: fused(x)
        ref = fns["int8 dequantize + F.linear (course)"]()
        assert torch.allclose(fns["int8 torch._weight_int8pack_mm"](), ref, atol=1e-3), "int8 kernels disagree"
        ref4 = fns["int4 unpack + dequantize + F.linear (course)"]()
        assert torch.allclose(fns["int4 torch._weight_int4pack_mm_for_cpu"](), ref4, atol=1e-3), "int4 kernels disagree"
        if fused is not None:
            assert torch.allclose(fused(x), ref, atol=1e-3), "the compiled int8 kernel disagrees"
        for name, fn in fns.items():
            rows.append({"kernel": name, "batch": B, "ms": time_fn(fn, "cpu", repeats, warmup=2).ms})
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size (divides 64 and 192; default 32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="new tokens per timed generate call (default 64)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds; the median is reported (default 5)")
    ap.add_argument("--per-brand", type=int, default=8, help="held-out openings per brand in the agreement prompt set (default 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled int8 head kernel")
    ap.add_argument("--quick", action="store_true", help="skip evaluate() (held-out loss, samples); 2 timing rounds")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (default: runs/bench/quantize-<time>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; choose a new --out (earlier runs are never overwritten)")
    if args.new_tokens < 1 or args.rounds < 1 or args.per_brand < 0 or (args.threads is not None and args.threads < 1):
        ap.error("--new-tokens, --rounds and --threads must be >= 1, --per-brand >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    enc = get_encoding()
    model = load_gpt()
    try:
        models = variants(model, args.group_size)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")

    rows = {name: {"variant": name, "weight_bytes": weight_bytes(m)} for name, m in models.items()}
    if not args.quick:
        train_lines = generate_corpus(RECIPE_LINES, TRAIN_SEED, split="train")
        for name, m in models.items():
            t0 = time.perf_counter()
            ev = evaluate(m, train_lines, RECIPE_SEQ_LEN, TRAIN_SEED, torch.device("cpu"))
            rows[name].update(heldout_loss=ev["loss"]["heldout_split"], well_formed=ev["well_formed"])
            print(f"{name}: held-out loss {ev['loss']['heldout_split']:.4f}, well-formed {fmt_rate(ev['well_formed'])} "
                  f"({time.perf_counter() - t0:.0f} s)")
    prompts = agreement_prompts(args.per_brand)
    ref = greedy_lines(model, enc, prompts)
    for name, m in models.items():
        rows[name]["agreement"] = agreement(ref, ref if m is model else greedy_lines(m, enc, prompts))
    for B in (1, 16):
        sec = decode_speed(models, enc, B, args.new_tokens, rounds)
        for name, s in sec.items():
            rows[name][f"tok_s_b{B}"] = round(B * args.new_tokens / s, 1)
            rows[name][f"vs_fp32_b{B}"] = round(sec["fp32"] / s, 2)
    kernels = head_kernels(model.lm_head.weight.detach(), args.group_size, repeats=3 if args.quick else 11,
                           compile_fused=not args.no_compile)

    fp32 = rows["fp32"]
    print(f"\n{len(prompts)} agreement prompts, {fp32['agreement']['tokens']} fp32 greedy tokens; "
          f"decode: {args.new_tokens} new tokens, median of {rounds} interleaved rounds\n")
    print("| variant | weight MB | vs fp32 | held-out loss | Δ loss (nats) | well-formed (280 samples) | identical greedy lines "
          "| token agreement | tok/s B=1 | vs fp32 | tok/s B=16 | vs fp32 |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        loss = r.get("heldout_loss")
        dl = "" if loss is None else f"{loss - fp32['heldout_loss']:+.4f}"
        wf = fmt_rate(r["well_formed"]) if "well_formed" in r else ""
        a = r["agreement"]
        print(f"| {r['variant']} | {r['weight_bytes'] / 1e6:.2f} | {fp32['weight_bytes'] / r['weight_bytes']:.2f}x smaller "
              f"| {'' if loss is None else f'{loss:.4f}'} | {dl} | {wf} | {fmt_rate(a['identical'])} | {a['token_agreement']:.3f} "
              f"| {r['tok_s_b1']} | {r['vs_fp32_b1']}x | {r['tok_s_b16']} | {r['vs_fp32_b16']}x |")
    print("\n| head matvec kernel (100277 x 64) | B=1 ms | B=16 ms |\n|---|---:|---:|")
    for name in dict.fromkeys(k["kernel"] for k in kernels):
        ms = {k["batch"]: k["ms"] for k in kernels if k["kernel"] == name}
        print(f"| {name} | {ms[1]:.3f} | {ms[16]:.3f} |")

    out = args.out or RUNS / "bench" / f"quantize-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_text(out, json.dumps({"command": "python benchmarks/quantize.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                                       "group_size": args.group_size, "new_tokens": args.new_tokens, "rounds": rounds,
                                       "prompts": prompts, "rows": list(rows.values()), "head_kernels": kernels}, indent=1),
                      overwrite=False)
    print(f"\nsaved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
