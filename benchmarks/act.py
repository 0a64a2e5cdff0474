"""ACT halting benchmark: what dynamic halting saves, and what it costs.

    python benchmarks/act.py [--checkpoint checkpoints/act/step_8000] [--threads 1]

Prints markdown tables:
1. accuracy if every puzzle is stopped after k steps (forced with max k), k = 1..halt_max_steps;
2. mean halting step per difficulty (number of blanks) under the dynamic rule;
3. forced vs dynamic (several thresholds): exact accuracy, mean steps, steps saved;
4. throughput on the test set: forced batches, dynamic with frozen rows, dynamic with slot refilling.
Data: the recipe's held-out sets (`course_lib.train.act.heldout_sets`): no puzzle in them is a
training puzzle up to the 3072 Sudoku symmetries. The deduplicated random draws keep only 6 of
500 puzzles each, so the tables use every unseen puzzle class (121 puzzles, 484 rows) and the
deduplicated seed 777 draws; the throughput rows use the unseen-class set.
Timings are wall-clock medians of --repeats runs after one warm-up (`course_lib.core.timing.time_fn`) on whatever
CPU share the machine gives; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import sys

import torch

from course_lib.act.analysis import accuracy_by_step, halting_steps, replay, steps_by_group, trace_steps
from course_lib.act.checkpoint import SHIPPED, load_reasoner
from course_lib.act.data import load_split
from course_lib.act.halting import run_dynamic, run_dynamic_refill, run_forced
from course_lib.act.loss import ACTLossHead
from course_lib.core.timing import time_fn
from course_lib.train.act import UNSEEN_SEED, dataset, heldout_sets

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds (one warm-up run, `course_lib.core.timing.time_fn`) and the last run's result."""
    t = time_fn(fn, "cpu", repeats)
    return t.seconds, t.result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(SHIPPED))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per throughput row (median reported)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.batch < 1:
        ap.error("--repeats, --threads and --batch must be >= 1")
    torch.set_num_threads(args.threads)
    model = load_reasoner(args.checkpoint)
    S = model.config["halt_max_steps"]
    held = heldout_sets(dataset(0, 20000, 500))
    sets = {"unseen classes": load_split(held["unseen_classes_test"], "test"),
            f"dedup seed {UNSEEN_SEED}": load_split(held[f"dedup_test_seed_{UNSEEN_SEED}"], "test")}
    traces = {name: trace_steps(model, ps.inputs, ps.labels) for name, ps in sets.items()}

    print(f"## Exact accuracy when every puzzle stops after k steps (halt_max_steps = {S})\n")
    print("| set | " + " | ".join(f"k={k}" for k in range(1, S + 1)) + " |")
    print("|---|" + "---|" * S)
    for name, tr in traces.items():
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accuracy_by_step(tr)) + " |")

    print("\n## Mean halting step by number of blanks (dynamic, threshold 0.5)\n")
    for name, ps in sets.items():
        by = steps_by_group(halting_steps(traces[name], 0.5), ps.blanks)
        acc = {int(g): float(traces[name].correct.gather(0, (halting_steps(traces[name], 0.5) - 1)[None])[0][ps.blanks == g].float().mean())
               for g in ps.blanks.unique()}
        print(f"**{name}**\n\n| blanks | " + " | ".join(map(str, by)) + " |")
        print("|---|" + "---|" * len(by))
        print("| mean steps | " + " | ".join(f"{v:.2f}" for v in by.values()) + " |")
        print("| exact acc | " + " | ".join(f"{acc[g]:.3f}" for g in by) + " |\n")

    print("## Forced vs dynamic halting (dynamic = frozen rows; replayed from one traced run, checked by tests)\n")
    print("| set | mode | exact acc | token acc | mean steps | steps saved | exact-acc change (points) |")
    print("|---|---|---|---|---|---|---|")
    for name, tr in traces.items():
        f = replay(tr, None)
        print(f"| {name} | forced ({S}) | {f['exact_accuracy']:.4f} | {f['accuracy']:.4f} | {f['steps']:.2f} | - | - |")
        for thr in THRESHOLDS:
            d = replay(tr, thr)
            print(f"| {name} | dynamic, p>{thr} | {d['exact_accuracy']:.4f} | {d['accuracy']:.4f} | {d['steps']:.2f} | "
                  f"{1 - d['steps'] / f['steps']:.1%} | {100 * (d['exact_accuracy'] - f['exact_accuracy']):+.2f} |")

    ps = sets["unseen classes"]
    head = ACTLossHead(model).eval()
    B = args.batch
    batches = [ps.batch(i, i + B) for i in range(0, len(ps), B)]
    n = len(ps)
    t_forced, _ = timed(lambda: [run_forced(head, b) for b in batches], args.repeats)
    print(f"\n## Throughput on {n} test puzzles, batch/slots {B}, {args.threads} thread(s)\n")
    print("| loop | network calls | rows computed | exact acc | seconds | puzzles/s |")
    print("|---|---|---|---|---|---|")
    print(f"| forced | {len(batches) * S} | {n * S} | {replay(traces['unseen classes'], None)['exact_accuracy']:.4f} | "
          f"{t_forced:.2f} | {n / t_forced:.0f} |")
    for thr in (0.5, 0.9):
        t_frozen, outs = timed(lambda thr=thr: [run_dynamic(model, b, threshold=thr) for b in batches], args.repeats)
        t_refill, refill = timed(lambda thr=thr: run_dynamic_refill(model, ps.inputs, B, threshold=thr), args.repeats)
        frozen_rows = sum(int(o[3].sum()) for o in outs)
        frozen_calls = sum(o[0] for o in outs)
        exact_refill = float((refill["preds"] == ps.labels).all(-1).float().mean())
        exact_frozen = sum(float(o[1]["exact_accuracy"]) for o in outs) / n
        print(f"| dynamic p>{thr}, frozen rows | {frozen_calls} | {frozen_rows} | {exact_frozen:.4f} | {t_frozen:.2f} | "
              f"{n / t_frozen:.0f} |")
        print(f"| dynamic p>{thr}, slot refilling | {refill['iterations']} | {refill['row_steps']} | {exact_refill:.4f} | "
              f"{t_refill:.2f} | {n / t_refill:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
