"""Speculative decoding against Hugging Face `generate` on the shipped weights, in one run.

    python benchmarks/speculative.py              # every brand prompt, 160 new tokens, k in 4 8 12 16 (~15 min on 2 cores)
    python benchmarks/speculative.py --quick      # 4 brands, k=4 only, 2 repeats

Batch 1, greedy, fp32, the shipped text model and draft, brand prompts (`corpus.BRANDS`). Variants:
HF `generate` and HF prompt lookup (`prompt_lookup_num_tokens=8`) on a `LlamaForCausalLM` holding the
shipped weights (benchmarks/hf_llama.py: identical logits); the course's cached loop
(`GPT.generate`); the compiled static-cache decode (`decoding.static.generate_static` with
`compile_decode_step()`); course prompt lookup (8 tokens, compiled verify); speculative decoding with
the shipped draft, eager (k=4) and compiled for each k of the sweep: each round one graph (k draft calls and the
verify), and with --step-graphs also as separately compiled draft-step and verify graphs.

Every variant's tokens are checked against the fp32 greedy reference (`GPT.generate(temperature=0)`)
before it is timed; a variant that differs is reported and not timed. One timed call decodes every
prompt once; `course_lib.core.timing.time_fn` (one warm-up, which also pays for compilation) reports the
median of --repeats calls. tok/s counts new tokens. Ratios are against HF `generate` in the same run.
Results are printed as a markdown table and saved as JSON under runs/bench/ (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from course_lib.caches.static_cache import compile_decode_step
from course_lib.core.files import atomic_write_text
from course_lib.core.paths import RUNS, display_path
from course_lib.core.timing import time_fn
from course_lib.decoding.speculative import prompt_lookup_generate, speculative_generate
from course_lib.decoding.static import generate_static
from course_lib.text.corpus import BRANDS
from course_lib.text.draft import load_draft
from course_lib.text.gpt import load_gpt
from course_lib.text.tokenizer import get_encoding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_llama import hf_available, to_hf_llama  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8, 12, 16], help="draft lengths for the compiled sweep")
    ap.add_argument("--step-graphs", action="store_true",
                    help="also time each k with separately compiled draft-step and verify graphs (compile='steps')")
    ap.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                    help="time only the variants whose name contains one of these (HF generate always runs: the base)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=len(BRANDS), help="how many brand prompts (all by default)")
    ap.add_argument("--quick", action="store_true", help="4 prompts, k=4, 2 repeats")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: runs/bench/speculative-<time>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.ks, args.repeats = 4, [4], 2
    if args.new_tokens < 1 or args.repeats < 1 or not 1 <= args.prompts <= len(BRANDS) or min(args.ks) < 1:
        ap.error(f"--new-tokens, --repeats and every k must be >= 1, --prompts in [1, {len(BRANDS)}]")
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; choose a new --out (earlier runs are never overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    enc = get_encoding()
    target, draft = load_gpt(), load_draft()
    prompts = [torch.tensor([enc.encode(b)]) for b in BRANDS[:args.prompts]]
    n = args.new_tokens
    with torch.no_grad():
        reference = [target.generate(x, n, temperature=0) for x in prompts]

    variants: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    if hf_available():
        hf = to_hf_llama(target)
        hf_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
        variants += [("HF generate", lambda x: hf.generate(x, attention_mask=torch.ones_like(x), **hf_kw)),
                     ("HF prompt lookup (8)", lambda x: hf.generate(x, attention_mask=torch.ones_like(x),
                                                                    prompt_lookup_num_tokens=8, **hf_kw))]
    else:
        print("transformers is not installed: HF rows skipped (pip install -c requirements.txt "
              "-r benchmarks/requirements-bench.txt)", file=sys.stderr)
    step = compile_decode_step()
    variants += [("course cached (GPT.generate)", lambda x: target.generate(x, n, temperature=0)),
                 ("course static, compiled step", lambda x: generate_static(target, x, n, temperature=0.0, step=step)),
                 ("course prompt lookup (8), compiled", lambda x: prompt_lookup_generate(target, x, n, 8, temperature=0.0, compile=True)),
                 ("speculative k=4, eager", lambda x: speculative_generate(target, draft, x, n, temperature=0.0, k=4))]
    variants += [(f"speculative k={k}, compiled", lambda x, k=k: speculative_generate(target, draft, x, n, temperature=0.0, k=k, compile=True))
                 for k in args.ks]
    if args.step_graphs:
        variants += [(f"speculative k={k}, compiled steps", lambda x, k=k: speculative_generate(target, draft, x, n, temperature=0.0, k=k,
                                                                                             compile="steps"))
                     for k in args.ks]
    if args.only:
        variants = [(name, fn) for name, fn in variants if name == "HF generate" or any(t in name for t in args.only)]

    rows = []
    for name, fn in variants:
        with torch.no_grad():
            outs = [fn(x) for x in prompts]  # also the warm-up that compiles
        same = all(torch.equal(o.cpu(), r) for o, r in zip(outs, reference, strict=True))
        row = {"variant": name, "identical_to_fp32_greedy": same}
        if same:
            with torch.no_grad():
                t = time_fn(lambda fn=fn: [fn(x) for x in prompts], repeats=args.repeats)
            row.update(seconds=round(t.seconds, 4), times=[round(s, 4) for s in t.times],
                       tok_per_s=round(len(prompts) * n / t.seconds, 1))
        if name.startswith("speculative") and same:
            acc = prop = calls = new = 0
            k = int(name.split("k=")[1].split(",")[0])
            for x in prompts:
                _, st = speculative_generate(target, draft, x, n, temperature=0.0, k=k, return_stats=True)
                acc, prop, calls, new = acc + sum(st.accepted), prop + sum(st.proposed), calls + st.target_calls, new + st.new_tokens
            row.update(acceptance=round(acc / prop, 4), tokens_per_target_call=round(new / calls, 3))
        if name.startswith("course prompt lookup") and same:
            calls = new = 0
            for x in prompts:
                _, st = prompt_lookup_generate(target, x, n, 8, temperature=0.0, return_stats=True)
                calls, new = calls + st.target_calls, new + st.new_tokens
            row.update(tokens_per_target_call=round(new / calls, 3))
        rows.append(row)
        print(f"{name:40s} identical={same}  {row.get('tok_per_s', '-')} tok/s", flush=True)

    base = next((r["tok_per_s"] for r in rows if r["variant"] == "HF generate" and "tok_per_s" in r), None)
    print(f"\nbatch 1, greedy, fp32, {len(prompts)} brand prompts x {n} new tokens, median of {args.repeats} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print("| variant | identical | tok/s | × HF generate | tokens / target call | acceptance |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tok_per_s'] / base:.2f}×" if base and "tok_per_s" in r else "-"
        r["ratio_vs_hf_generate"] = round(r["tok_per_s"] / base, 3) if base and "tok_per_s" in r else None
        print(f"| {r['variant']} | {'yes' if r['identical_to_fp32_greedy'] else 'NO'} | {r.get('tok_per_s', '-')} | {ratio} "
              f"| {r.get('tokens_per_target_call', '-')} | {r.get('acceptance', '-')} |")
    out = args.out or RUNS / "bench" / f"speculative-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_text(out, json.dumps({
        "command": "python benchmarks/speculative.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__, "transformers": hf_available(), "threads": torch.get_num_threads(),
        "machine": platform.machine(), "prompts": len(prompts), "new_tokens": n, "repeats": args.repeats,
        "rows": rows}, indent=1))
    print(f"\nsaved {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
