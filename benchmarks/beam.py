"""Greedy vs beam search vs sampling on the shipped text model: quality, likelihood, diversity, cost.

    python benchmarks/beam.py                      # 14 brands + 50 held-out prompts, beams 2/4/8
    python benchmarks/beam.py --prompts 0 --quick  # the 14 brands only, 5 samples per prompt

Prompts: the 14 brand names, plus `--prompts N` held-out-split lines cut after their product name (the brand
and the next field; never trained on). Every method writes one listing per prompt and stops at the newline token.
Per method (`course_lib.decoding.quality.compare_decoders`): well-formed and novel rates with 95% Wilson intervals (novel =
well-formed and not in the first `--train-lines` lines of the training stream), the mean sequence log-probability
(sum over the line and its newline, and per token), distinct lines per prompt, decode steps, rows pushed through the
model, and wall time (one untimed warm-up run of the whole comparison on two prompts, then the median of
`--repeats` timed runs, `time.perf_counter`; CPU, no device sync needed).
Results are printed as a markdown table and saved as JSON under runs/bench/ (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from course_lib.core.files import atomic_write_text, claim_numbered_folder
from course_lib.core.paths import RUNS, display_path
from course_lib.core.stats import fmt_rate
from course_lib.decoding.quality import compare_decoders
from course_lib.text.corpus import BRANDS, generate_corpus
from course_lib.text.gpt import load_gpt
from course_lib.text.tokenizer import get_encoding


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python benchmarks/beam.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=50, help="held-out prompts added to the 14 brands (default 50)")
    ap.add_argument("--beams", type=int, nargs="+", default=[2, 4, 8], help="beam widths (default 2 4 8)")
    ap.add_argument("--samples", type=int, default=20, help="sampled lines per prompt (default 20)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    ap.add_argument("--train-lines", type=int, default=150000, help="training-stream lines for novelty (default 150000)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per comparison (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5 samples per prompt")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.prompts < 0:
        ap.error(f"--prompts must be >= 0, got {args.prompts}")
    if any(k < 1 for k in args.beams):
        ap.error(f"--beams must all be >= 1, got {args.beams}")
    if args.samples < 1 or args.repeats < 1 or args.threads < 1 or args.train_lines < 0:
        ap.error("--samples, --repeats and --threads must be >= 1 and --train-lines >= 0")
    if not args.temperature > 0:
        ap.error(f"--temperature must be > 0 for the sampling row, got {args.temperature}")
    torch.set_num_threads(args.threads)
    samples = 5 if args.quick else args.samples
    model, enc = load_gpt(), get_encoding()
    prompts = list(BRANDS) + [" ".join(line.split(" ")[:2]) for line in generate_corpus(args.prompts, 4321, split="heldout")]
    train = set(generate_corpus(args.train_lines, 1234, split="train"))

    def run():
        return compare_decoders(model, enc, prompts, beams=args.beams, samples_per_prompt=samples,
                                temperature=args.temperature, seed=args.seed, train_lines=train)

    compare_decoders(model, enc, prompts[:2], beams=args.beams, samples_per_prompt=1,
                     temperature=args.temperature, seed=args.seed)  # warm-up, never timed
    times, rows = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rows = run()
        times.append(time.perf_counter() - t0)
    print(f"{len(prompts)} prompts ({len(BRANDS)} brands + {args.prompts} held-out product prefixes), "
          f"{samples} samples per prompt at T={args.temperature}, beams {args.beams}; whole comparison "
          f"{statistics.median(times):.1f} s (median of {args.repeats}), torch {torch.__version__}, {args.threads} thread(s)")
    print("| method | well-formed | novel | mean log-prob (sum) | per token | distinct per prompt | steps | rows processed | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {fmt_rate(r['well_formed'])} | {fmt_rate(r['novel'])} | {r['mean_logprob']:.3f} | "
              f"{r['mean_token_logprob']:.3f} | {r['distinct_per_prompt']:.2f} | {r['steps']} | {r['rows_processed']} | "
              f"{r['seconds']:.2f} |")
    out = claim_numbered_folder(RUNS / "bench", prefix="beam-", width=3, first=1)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args),
              "seconds": times, "rows": [{k: v for k, v in r.items() if k != "lines"} for r in rows]}
    atomic_write_text(out / "results.json", json.dumps(record, indent=1, ensure_ascii=False))
    print(f"saved {display_path(out / 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
