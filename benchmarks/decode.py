"""Decode speed of the course GPT: no cache (full head / last-position head) vs KV cache vs compile vs Hugging Face,
the bound that applies on this machine, and what batching buys.

    python benchmarks/decode.py                 # the full tables (a few minutes on 2 CPU cores)
    python benchmarks/decode.py --quick         # batch 1, one context, 3 repeats, no compile, short batch curve

What is measured (the LLMs-from-scratch / gpt-fast conventions), every timing through
`course_lib.timing.time_fn` (one untimed warm-up, device synchronised before the clock is read,
median of `--repeats` runs):
- tokens/s counts NEW tokens only (batch × new_tokens / seconds), greedy, no early stop;
- "context" is the total length at the end of generation (prompt = context - new tokens), so at
  context 512 the last steps attend over the full window of the shipped model;
- two no-cache loops: "no cache, full head" computes the 100k-wide output head at every position
  of the window (a plain forward pass) and reads the last row; "no cache" is
  `GPT.generate(use_cache=False)`, which computes the head at the last position only (nanoGPT's
  inference form): the fair baseline the cache is compared with;
- Hugging Face: `LlamaForCausalLM.generate` (DynamicCache, greedy) on a random-init model of the
  same size (same vocab, width, depth, heads, SwiGLU width, tied embeddings), fp32, if
  `transformers` is installed (benchmarks/requirements-bench.txt); skipped otherwise;
- the bound that applies: in the same run, the head matvec alone ((B, 64) @ (64, 100277)) and a
  decode step of the same model with 0 layers (embedding, final norm, head, argmax, per-step
  overhead; `course_lib.speed`); the head's effective read rate is compared with the DRAM
  streaming bandwidth measured over 512 MB, to say whether DRAM bandwidth limits the step at all;
- the batch curve: cached decode steps per second against batch size (prefill not counted), and
  the KV-cache memory formula next to the weights' memory.

The weights are random: speed does not depend on their values, and the benchmark needs no checkpoint.
Results are printed as markdown tables and saved as JSON under runs/bench/ (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from course_lib.device import pick_device
from course_lib.files import atomic_write_text
from course_lib.gpt import DEFAULT_H_PARAMS, GPT
from course_lib.kv_cache import kv_cache_bytes
from course_lib.layers import swiglu_hidden
from course_lib.paths import RUNS, display_path
from course_lib.speed import batch_curve, step_costs
from course_lib.timing import time_fn

# A LLaMA-2-7B-shaped model (32 layers, 32 KV heads of 128, 6.74 B parameters), fp16, for the memory table.
LLAMA_7B = {"n_layer": 32, "n_kv_head": 32, "head_dim": 128, "params": 6_738_415_616, "bytes": 2}


def read_bandwidth(device: torch.device, mbytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of streaming reads over a buffer far larger than the CPU caches (DRAM): the best of
    a sum and of a matrix-vector product shaped like the output head."""
    w = torch.ones(mbytes * 2**20 // 4 // 64, 64, device=device)
    v = torch.ones(64, device=device)
    best = min(time_fn(lambda: w.sum(), device, repeats).seconds, time_fn(lambda: w @ v, device, repeats).seconds)
    return w.numel() * 4 / best


@torch.no_grad()
def greedy_full_head(model: GPT, x: torch.Tensor, new: int) -> torch.Tensor:
    """The unfair no-cache loop: a plain forward pass (head at every position), then the last row."""
    for _ in range(new):
        x = torch.cat([x, model(x[:, -model.block_size:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@torch.no_grad()
def greedy_compiled_loop(model: GPT, step, x: torch.Tensor, new: int) -> torch.Tensor:
    """gpt-fast's shape: eager prefill, then a compiled one-token decode step."""
    logits, cache = model.prefill(x)
    tok = logits.argmax(-1, keepdim=True)
    out = [tok]
    for _ in range(new - 1):
        tok = step(tok, cache).argmax(-1, keepdim=True)
        out.append(tok)
    return torch.cat([x, *out], dim=1)


def build_hf(h: dict, device: torch.device):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None, "transformers not installed (pip install -r benchmarks/requirements-bench.txt)"
    cfg = LlamaConfig(vocab_size=h["vocab_size"], hidden_size=h["n_embd"], intermediate_size=swiglu_hidden(h["n_embd"]),
                      num_hidden_layers=h["n_layer"], num_attention_heads=h["n_head"], num_key_value_heads=h["n_head"],
                      max_position_embeddings=h["block_size"], rms_norm_eps=1e-6, rope_theta=h["rope_theta"],
                      tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().to(device)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    import transformers
    return model, f"transformers {transformers.__version__}"


def variants(model: GPT, step, hf, x: torch.Tensor, new: int, with_nocache: bool) -> dict:
    """name -> zero-argument function generating `new` greedy tokens after x."""
    methods = {"KV cache": lambda: model.generate(x, new, temperature=0)}
    if with_nocache:
        methods["no cache, full head"] = lambda: greedy_full_head(model, x, new)
        methods["no cache"] = lambda: model.generate(x, new, temperature=0, use_cache=False)
    if step is not None:
        methods["KV cache + compile"] = lambda: greedy_compiled_loop(model, step, x, new)
    if hf is not None:
        mask = torch.ones_like(x)
        methods["HF generate"] = lambda: hf.generate(input_ids=x, attention_mask=mask, max_new_tokens=new,
                                                     min_new_tokens=new, do_sample=False)
    return methods


def parse_ints(text: str, name: str, ap: argparse.ArgumentParser) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        ap.error(f"{name} takes comma-separated integers, e.g. {name} 1,4,16")
        raise  # unreachable: ap.error exits with code 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    ap.add_argument("--contexts", default="128,512", help="total lengths at the end of generation (default 128,512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration; the median is reported")
    ap.add_argument("--nocache-max-batch", type=int, default=1,
                    help="run the no-cache loops only up to this batch size (they are slow: default 1)")
    ap.add_argument("--curve-batches", default="1,2,4,8,16,32",
                    help="batch sizes of the throughput curve (cached decode steps; default 1,2,4,8,16,32)")
    ap.add_argument("--curve-context", type=int, default=128, help="context length of the throughput curve (default 128)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face even if transformers is installed")
    ap.add_argument("--quick", action="store_true", help="batch 1, context 128, 3 repeats, no compile, curve 1,4,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (default: runs/bench/decode-<time>.json)")
    return ap


def fmt_x(v: float | None) -> str:
    return "" if v is None else f"{v}x"


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    batches = parse_ints(args.batch_sizes, "--batch-sizes", ap)
    contexts = parse_ints(args.contexts, "--contexts", ap)
    curve = parse_ints(args.curve_batches, "--curve-batches", ap)
    if args.quick:
        batches, contexts, args.repeats, args.no_compile, curve = [1], [128], 3, True, [1, 4, 16]
    block = DEFAULT_H_PARAMS["block_size"]
    if args.new_tokens < 1 or args.repeats < 1 or min(batches + curve) < 1:
        ap.error("--new-tokens, --repeats and every batch size must be >= 1")
    if any(not args.new_tokens < c <= block for c in contexts):
        ap.error(f"every context must be in ({args.new_tokens}, {block}] (the prompt is context - new tokens)")
    if not 2 <= args.curve_context <= block:
        ap.error(f"--curve-context must be in [2, {block}]")
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; choose a new --out (earlier runs are never overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    h = dict(DEFAULT_H_PARAMS, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(h).eval().to(device)
    n_params = model.num_params()
    head_bytes = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    hf, hf_note = (None, "skipped (--no-hf)") if args.no_hf else build_hf(h, device)
    step = None
    compile_note = "skipped (--no-compile)"
    if not args.no_compile:
        try:
            step = torch.compile(model.decode_step, dynamic=True)
            greedy_compiled_loop(model, step, torch.zeros(1, 8, dtype=torch.long, device=device), 3)  # compile now
            compile_note = "inductor, dynamic=True, decode step only"
        except Exception as exc:  # no compiler toolchain, unsupported platform...
            step, compile_note = None, f"skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"

    bw = read_bandwidth(device)
    rows, floors = [], []
    new = args.new_tokens
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}; "
          f"model {n_params / 1e6:.2f} M params; HF: {hf_note}; compile: {compile_note}", flush=True)
    for ctx in contexts:
        for B in batches:
            g = torch.Generator().manual_seed(ctx * 100 + B)
            x = torch.randint(0, 100_000, (B, ctx - new), generator=g).to(device)
            ref = model.generate(x, new, temperature=0)  # the cached output every variant must reproduce
            parts = step_costs(model, ctx, batch=B, repeats=args.repeats, parts=("head matvec", "0-layer step"))
            floors.append({"batch": B, "context": ctx, "head_matvec_ms": round(parts["head matvec"], 3),
                           "zero_layer_step_ms": round(parts["0-layer step"], 3)})
            for name, fn in variants(model, step, hf, x, new, B <= args.nocache_max_batch).items():
                with torch.no_grad():
                    out = fn()
                    if name in ("no cache", "no cache, full head", "KV cache + compile"):
                        assert torch.equal(out, ref), f"{name} disagrees with the cached greedy output"
                    assert out.shape == (B, ctx), f"{name} produced {tuple(out.shape)}, expected {(B, ctx)}"
                    secs = time_fn(fn, device, args.repeats).seconds
                ms_step = 1000 * secs / new
                rows.append({"method": name, "batch": B, "context": ctx, "new_tokens": new, "seconds": round(secs, 4),
                             "tokens_per_s": round(B * new / secs, 1), "ms_per_step": round(ms_step, 2),
                             "zero_layer_floor_ms": round(parts["0-layer step"], 2),
                             "floor_share": round(parts["0-layer step"] / ms_step, 2)})
                print(f"  ctx {ctx:4d}  batch {B:3d}  {name:20s} {B * new / secs:9.1f} tok/s", flush=True)

    def find(method, B, ctx):
        return next((r for r in rows if (r["method"], r["batch"], r["context"]) == (method, B, ctx)), None)

    for r in rows:
        base, full, hfr = (find(m, r["batch"], r["context"]) for m in ("no cache", "no cache, full head", "HF generate"))
        r["vs_no_cache"] = round(r["tokens_per_s"] / base["tokens_per_s"], 1) if base else None
        r["vs_full_head"] = round(r["tokens_per_s"] / full["tokens_per_s"], 1) if full else None
        r["vs_hf"] = round(r["tokens_per_s"] / hfr["tokens_per_s"], 2) if hfr else None
    ratios = []
    for ctx in contexts:
        kv, nc, full, hfr = (find(m, 1, ctx) for m in ("KV cache", "no cache", "no cache, full head", "HF generate"))
        if kv and nc and full:
            ratios.append(f"batch 1, context {ctx}: KV cache / no cache (last head) = {kv['tokens_per_s'] / nc['tokens_per_s']:.1f}x; "
                          f"last head / full head = {nc['tokens_per_s'] / full['tokens_per_s']:.1f}x; "
                          f"KV cache / full head = {kv['tokens_per_s'] / full['tokens_per_s']:.1f}x")
        if kv and hfr:
            ratios.append(f"batch 1, context {ctx}: KV cache / HF generate = {kv['tokens_per_s'] / hfr['tokens_per_s']:.2f}x")

    print("\n| method | batch | context | tok/s (new tokens, median) | ms/step | vs no cache | vs full head | vs HF | 0-layer floor ms | floor / step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['batch']} | {r['context']} | {r['tokens_per_s']:.1f} | {r['ms_per_step']:.2f} | "
              f"{fmt_x(r['vs_no_cache'])} | {fmt_x(r['vs_full_head'])} | {fmt_x(r['vs_hf'])} | "
              f"{r['zero_layer_floor_ms']:.2f} | {r['floor_share']:.2f} |")
    print()
    for line in ratios:
        print(line)

    # ---- the bound that applies
    print(f"\n## The bound that applies\n\nDRAM streaming read bandwidth (best of sum / matrix-vector over 512 MB): "
          f"{bw / 1e9:.1f} GB/s. Output head: {head_bytes / 1e6:.1f} MB (fp32).\n")
    print("| batch | context | head matvec ms | head read rate GB/s | DRAM-bound head ms | 0-layer step ms | cached step ms | layers ms (step - floor) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f in floors:
        kv = find("KV cache", f["batch"], f["context"])
        rate = head_bytes / (f["head_matvec_ms"] / 1000) / 1e9
        f["head_read_GBps"] = round(rate, 1)
        f["dram_bound_head_ms"] = round(1000 * head_bytes / bw, 3)
        print(f"| {f['batch']} | {f['context']} | {f['head_matvec_ms']:.2f} | {rate:.1f} | {f['dram_bound_head_ms']:.2f} | "
              f"{f['zero_layer_step_ms']:.2f} | {kv['ms_per_step']:.2f} | {kv['ms_per_step'] - f['zero_layer_step_ms']:.2f} |")
    ones = [f for f in floors if f["batch"] == 1]  # at batch 1 the head matvec is pure weight reading
    fast = [f for f in ones if f["head_read_GBps"] > bw / 1e9]
    verdict = (f"at batch 1 the head is read faster than DRAM can stream ({len(fast)} of {len(ones)} contexts): it is "
               "served from the CPU caches, so DRAM bandwidth is not what limits a step; the floor is the 0-layer step "
               "(head matvec + per-step overhead), and the layers add the rest"
               if fast and len(fast) == len(ones) else
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
    best = max(curve_rows, key=lambda r: r["tokens_per_s"])
    stop = next((r for r in curve_rows if r["gain_vs_previous"] is not None and r["gain_vs_previous"] < 1.2), None)
    print(f"\nbest tokens/s at batch {best['batch']} ({best['tokens_per_s']:.0f}); "
          + (f"the first step that adds less than 20%: to batch {stop['batch']} ({stop['gain_vs_previous']:.2f}x)"
             if stop else "every step of the curve still adds at least 20%"))

    # ---- KV-cache memory
    print("\n## KV-cache memory: 2 × layers × kv-heads × head_dim × bytes × tokens × batch\n")
    print("| model | context | bytes/value | KV cache per sequence | weights | sequences whose cache equals the weights |")
    print("|---|---:|---:|---:|---:|---:|")
    mem = []
    for name, nl, nkv, hd, tokens, nb, weights in [
            ("course GPT (fp32)", h["n_layer"], h["n_head"], h["n_embd"] // h["n_head"], block, 4, n_params * 4),
            ("LLaMA-7B shape (fp16)", LLAMA_7B["n_layer"], LLAMA_7B["n_kv_head"], LLAMA_7B["head_dim"], 4096,
             LLAMA_7B["bytes"], LLAMA_7B["params"] * LLAMA_7B["bytes"])]:
        per_seq = kv_cache_bytes(nl, nkv, hd, tokens, 1, nb)
        mem.append({"model": name, "context": tokens, "kv_bytes_per_sequence": per_seq, "weight_bytes": weights})
        print(f"| {name} | {tokens} | {nb} | {per_seq / 2**20:,.2f} MiB | {weights / 2**20:,.1f} MiB | {weights / per_seq:,.1f} |")

    out = args.out or RUNS / "bench" / f"decode-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_text(out, json.dumps({"command": "python benchmarks/decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type,
                               "hf": hf_note, "compile": compile_note, "read_bandwidth_GBps": round(bw / 1e9, 2),
                               "params": n_params, "rows": rows, "ratios": ratios, "floors": floors,
                               "batch_curve": curve_rows, "kv_memory": mem}, indent=1))
    print(f"\nsaved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
