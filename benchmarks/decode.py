"""Decode speed of the course GPT: no cache vs KV cache vs KV cache + torch.compile vs Hugging Face.

    python benchmarks/decode.py                 # the full table (a few minutes on 2 CPU cores)
    python benchmarks/decode.py --quick         # batch 1, one context, 3 repeats, no compile

What is measured (the LLMs-from-scratch / gpt-fast conventions):
- tokens/s counts NEW tokens only (batch × new_tokens / seconds), greedy, no early stop;
- every configuration runs once untimed first (warm-up: allocator, kernels, compilation),
  then `--repeats` timed runs; the median is reported, device synchronised before the clock stops;
- "context" is the total length at the end of generation (prompt = context - new tokens), so at
  context 512 the last steps attend over the full window of the shipped model;
- the no-cache loop is `GPT.generate(use_cache=False)`: it re-runs the whole window and, like any
  forward pass, computes the 100k-wide output head at every position;
- Hugging Face: `LlamaForCausalLM.generate` (DynamicCache, greedy) on a random-init model of the
  same size (same vocab, width, depth, heads, SwiGLU width, tied embeddings), fp32, if
  `transformers` is installed (benchmarks/requirements-bench.txt); skipped otherwise;
- the memory-bandwidth bound: one decode step must read every weight once (the tied 100k×64
  matrix dominates) plus the KV cache; bound = measured read bandwidth / bytes per step.

The weights are random: speed does not depend on their values, and the benchmark needs no checkpoint.
Results are printed as a markdown table and saved as JSON under runs/bench/ (never overwritten).
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

from course_lib.device import pick_device
from course_lib.files import atomic_write_text
from course_lib.gpt import DEFAULT_H_PARAMS, GPT
from course_lib.layers import swiglu_hidden
from course_lib.paths import RUNS, display_path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up, never timed
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth(device: torch.device, mbytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of streaming reads over a buffer far larger than the CPU caches: the best of a sum
    and of a matrix-vector product shaped like the output head (what a decode step does)."""
    w = torch.ones(mbytes * 2**20 // 4 // 64, 64, device=device)
    v = torch.ones(64, device=device)
    best = min(median_seconds(lambda: w.sum(), repeats, device), median_seconds(lambda: w @ v, repeats, device))
    return w.numel() * 4 / best


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
        methods["no cache"] = lambda: model.generate(x, new, temperature=0, use_cache=False)
    if step is not None:
        methods["KV cache + compile"] = lambda: greedy_compiled_loop(model, step, x, new)
    if hf is not None:
        mask = torch.ones_like(x)
        methods["HF generate"] = lambda: hf.generate(input_ids=x, attention_mask=mask, max_new_tokens=new,
                                                     min_new_tokens=new, do_sample=False)
    return methods


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    ap.add_argument("--contexts", default="128,512", help="total lengths at the end of generation (default 128,512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration; the median is reported")
    ap.add_argument("--nocache-max-batch", type=int, default=1,
                    help="run the no-cache loop only up to this batch size (it is slow: default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face even if transformers is installed")
    ap.add_argument("--quick", action="store_true", help="batch 1, context 128, 3 repeats, no compile")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (default: runs/bench/decode-<time>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
        contexts = [int(c) for c in args.contexts.split(",")]
    except ValueError:
        ap.error("--batch-sizes and --contexts take comma-separated integers, e.g. --batch-sizes 1,4 --contexts 128,512")
    if args.quick:
        batches, contexts, args.repeats, args.no_compile = [1], [128], 3, True
    block = DEFAULT_H_PARAMS["block_size"]
    if args.new_tokens < 1 or args.repeats < 1 or min(batches) < 1:
        ap.error("--new-tokens, --repeats and every batch size must be >= 1")
    if any(not args.new_tokens < c <= block for c in contexts):
        ap.error(f"every context must be in ({args.new_tokens}, {block}] (the prompt is context - new tokens)")
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; choose a new --out (earlier runs are never overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    h = dict(DEFAULT_H_PARAMS, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(h).eval().to(device)
    n_params = model.num_params()
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
    rows = []
    new = args.new_tokens
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}; "
          f"model {n_params / 1e6:.2f} M params; HF: {hf_note}; compile: {compile_note}", flush=True)
    for ctx in contexts:
        for B in batches:
            g = torch.Generator().manual_seed(ctx * 100 + B)
            x = torch.randint(0, 100_000, (B, ctx - new), generator=g).to(device)
            ref = model.generate(x, new, temperature=0)  # the cached output every variant must reproduce
            methods = variants(model, step, hf, x, new, B <= args.nocache_max_batch)
            kv_bytes = 2 * h["n_layer"] * B * ctx * h["n_embd"] * 4
            bound = B * bw / (n_params * 4 + kv_bytes)  # tokens/s if every step only streamed weights + cache
            for name, fn in methods.items():
                with torch.no_grad():
                    out = fn()
                    if name in ("no cache", "KV cache + compile"):
                        assert torch.equal(out, ref), f"{name} disagrees with the cached greedy output"
                    assert out.shape == (B, ctx), f"{name} produced {tuple(out.shape)}, expected {(B, ctx)}"
                    secs = median_seconds(fn, args.repeats, device)
                tps = B * new / secs
                rows.append({"method": name, "batch": B, "context": ctx, "new_tokens": new, "seconds": round(secs, 4),
                             "tokens_per_s": round(tps, 1), "ms_per_step": round(1000 * secs / new, 2),
                             "bound_tokens_per_s": round(bound, 1), "fraction_of_bound": round(tps / bound, 3)})
                print(f"  ctx {ctx:4d}  batch {B:3d}  {name:20s} {tps:9.1f} tok/s", flush=True)

    def find(method, B, ctx):
        return next((r for r in rows if (r["method"], r["batch"], r["context"]) == (method, B, ctx)), None)

    ratios = []
    for r in rows:
        base = find("no cache", r["batch"], r["context"])
        hfr = find("HF generate", r["batch"], r["context"])
        r["vs_no_cache"] = round(r["tokens_per_s"] / base["tokens_per_s"], 1) if base else None
        r["vs_hf"] = round(r["tokens_per_s"] / hfr["tokens_per_s"], 2) if hfr else None
    for ctx in contexts:
        kv, nc, hfr = find("KV cache", 1, ctx), find("no cache", 1, ctx), find("HF generate", 1, ctx)
        if kv and nc:
            ratios.append(f"batch 1, context {ctx}: KV cache / no cache = {kv['tokens_per_s'] / nc['tokens_per_s']:.1f}x")
        if kv and hfr:
            ratios.append(f"batch 1, context {ctx}: KV cache / HF generate = {kv['tokens_per_s'] / hfr['tokens_per_s']:.2f}x")

    print(f"\nmeasured read bandwidth (best of sum / matrix-vector over 512 MB): {bw / 1e9:.1f} GB/s; weights read per decode step: {n_params * 4 / 1e6:.1f} MB (fp32)")
    print("\n| method | batch | context | tok/s (new tokens, median) | ms/step | vs no cache | vs HF | bandwidth bound tok/s | fraction of bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['batch']} | {r['context']} | {r['tokens_per_s']:.1f} | {r['ms_per_step']:.2f} | "
              f"{'' if r['vs_no_cache'] is None else str(r['vs_no_cache']) + 'x'} | {'' if r['vs_hf'] is None else str(r['vs_hf']) + 'x'} | "
              f"{r['bound_tokens_per_s']:.0f} | {r['fraction_of_bound']:.2f} |")
    print()
    for line in ratios:
        print(line)

    out = args.out or RUNS / "bench" / f"decode-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_text(out, json.dumps({"command": "python benchmarks/decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type,
                               "hf": hf_note, "compile": compile_note, "read_bandwidth_GBps": round(bw / 1e9, 2),
                               "params": n_params, "rows": rows, "ratios": ratios}, indent=1))
    print(f"\nsaved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
