"""Choosing dynamic halting's default threshold on a validation split: `python -m course_lib.act.calibrate`.

Dynamic halting stops a puzzle at the first step with sigmoid(q_halt) > threshold. A low threshold
saves the most steps and stops on a wrong answer more often; forced halting (the seed's evaluation)
always runs halt_max_steps. The default threshold is chosen here, never on a test set:

1. **Validation split.** 4x4 Sudoku with 4-12 blanks has 4,628 puzzle classes (up to the 3072
   symmetries) and the shipped model's 20,000 training puzzles cover 4,507 of them, so only 121
   classes were never trained on. VAL_PUZZLES of them, drawn with their own seed VAL_SEED
   (`build_dataset --unseen-classes`), are the validation split; the check below confirms none of
   its classes is a training class.
2. **Rule.** On the validation split, the lowest threshold on GRID whose dynamic exact accuracy is
   at least forced halting's, at that threshold and at every higher one on the grid (a threshold
   that only ties by luck between two that lose is not taken).
3. **Held-out measurement.** The remaining unseen classes (`--exclude-test` the validation split:
   no class shared with it or with training), seed HELDOUT_SEED: exact accuracy of forced and of
   dynamic halting at the chosen threshold, with 95% Wilson intervals over puzzles (the 4 copies of
   a puzzle are not independent).

`--write` stores the result in checkpoints/act/halting.json (recorded in checkpoints/MANIFEST.json
with its sha256); `python -m course_lib.act.inference --halting dynamic` reads it as its default.
The model is not retrained: the threshold is a property of the checkpoint, like its config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from course_lib.act import puzzles as P
from course_lib.act.analysis import replay, trace_steps
from course_lib.act.build_dataset import build, train_keys
from course_lib.act.checkpoint import SHIPPED, load_reasoner
from course_lib.act.data import load_split
from course_lib.core.checkpoints import CheckpointError, read_manifest, update_manifest, write_json_atomic
from course_lib.core.paths import RUNS, display_path
from course_lib.core.stats import wilson

HALTING_NAME = "halting.json"  # beside the step file, like all_config.json
FALLBACK_THRESHOLD = 0.5       # used only when a checkpoint has no halting.json
VAL_SEED, VAL_PUZZLES = 2024, 40
HELDOUT_SEED = 777
GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)
ROOT = RUNS / "act_calibration"
COMMAND = "python -m course_lib.act.calibrate --write"


def training_set() -> Path:
    """The shipped model's training data, as its MANIFEST entry records it (built once, cached under runs/act_data/)."""
    from course_lib.train import act as recipe  # the recipe owns how a training set is built and named

    entry = read_manifest().get("act/step_8000", {})
    return recipe.dataset(entry.get("seed", recipe.TRAIN_SEED), entry.get("data", {}).get("num_train_puzzles", 20000),
                          entry.get("data", {}).get("num_test_candidates", 500))


def validation_set(train_dir: Path) -> Path:
    out = ROOT / f"val_seed{VAL_SEED}_{VAL_PUZZLES}"
    if not out.exists():
        build(out, seed=VAL_SEED, num_train=0, num_test=VAL_PUZZLES, exclude_train=[train_dir], unseen_classes=True)
    return out


def heldout_set(train_dir: Path, val_dir: Path, seed: int = HELDOUT_SEED, num: int = 121) -> Path:
    """Every unseen class left after the validation split (at most `num`), in seed's disguises."""
    out = ROOT / f"heldout_seed{seed}_{num}_vs_val{VAL_SEED}"
    if not out.exists():
        free = len(unseen_classes(train_dir, val_dir))
        build(out, seed=seed, num_train=0, num_test=min(num, free), exclude_train=[train_dir], unseen_classes=True,
              exclude_test=[val_dir])
    return out


def unseen_classes(train_dir: Path, *test_dirs: Path) -> np.ndarray:
    """Canonical keys of the puzzle classes in no training split and no given test split."""
    _, keys = P.puzzle_classes()
    seen = train_keys(train_dir)
    for d in test_dirs:
        seen |= train_keys(d, "test")
    return keys[~np.isin(keys, np.fromiter(seen, np.int64, len(seen)))]


def check_disjoint(split_dir: Path, *others: tuple[Path, str]) -> int:
    """The number of puzzle classes in split_dir's test split; ValueError if any is in one of `others` (dir, split)."""
    mine = train_keys(split_dir, "test")
    for d, split in others:
        shared = mine & train_keys(d, split)
        if shared:
            raise ValueError(f"{display_path(split_dir)} shares {len(shared)} puzzle classes with the {split} split of "
                             f"{display_path(d)}: it is not held out")
    return len(mine)


def choose_threshold(trace, grid=GRID) -> tuple[float, list[dict]]:
    """The rule of step 2 -> (threshold, one row per grid value: exact accuracy, steps, cost vs forced)."""
    n = trace.correct.shape[1]
    right = lambda r: round(r["exact_accuracy"] * n)  # noqa: E731  (rows exactly right: compare counts, not floats)
    forced = right(replay(trace, None))
    rows, ok = [], []
    for t in grid:
        r = replay(trace, t)
        rows.append({"threshold": t, "exact_accuracy": round(r["exact_accuracy"], 4), "steps": round(r["steps"], 3),
                     "cost_points": round(100 * (forced - right(r)) / n, 2)})
        ok.append(right(r) >= forced)
    for i, r in enumerate(rows):
        if all(ok[i:]):
            return r["threshold"], rows
    return grid[-1], rows  # nothing on the grid costs nothing: take the most careful value


def score(model, split_dir: Path, threshold: float, device) -> dict:
    """Forced vs dynamic on one split: exact accuracy (rows), Wilson 95% CI over puzzles, mean steps."""
    s = load_split(split_dir, "test")
    tr = trace_steps(model, s.inputs.to(device), s.labels.to(device))
    n = s.meta["num_puzzles"]
    out = {"puzzles": n, "rows": len(s)}
    for name, t in (("forced", None), ("dynamic", threshold)):
        r = replay(tr, t)
        lo, hi = wilson(r["exact_accuracy"] * n, n)
        out[name] = {"exact_accuracy": round(r["exact_accuracy"], 4), "exact_accuracy_ci95": [round(lo, 4), round(hi, 4)],
                     "steps": round(r["steps"], 3)}
    out["cost_points"] = round(100 * (out["forced"]["exact_accuracy"] - out["dynamic"]["exact_accuracy"]), 2)
    return out


def calibrate(checkpoint: str | Path = SHIPPED, device: str = "cpu") -> dict:
    """Steps 1-3 of the module docstring -> the record written to halting.json."""
    dev = torch.device(device)
    model = load_reasoner(checkpoint, dev)
    train_dir = training_set()
    val_dir = validation_set(train_dir)
    n_val = check_disjoint(val_dir, (train_dir, "train"))
    val = load_split(val_dir, "test")
    val_trace = trace_steps(model, val.inputs.to(dev), val.labels.to(dev))
    threshold, table = choose_threshold(val_trace)
    held_dir = heldout_set(train_dir, val_dir)
    n_held = check_disjoint(held_dir, (train_dir, "train"), (val_dir, "test"))
    held = score(model, held_dir, threshold, dev)
    return {
        "threshold": threshold,
        "rule": "on the validation split, the lowest threshold on the grid whose dynamic exact accuracy is at least "
                "forced halting's, there and at every higher threshold on the grid",
        "command": COMMAND,
        "validation": {"seed": VAL_SEED, "puzzles": val.meta["num_puzzles"], "rows": len(val), "puzzle_classes": n_val,
                       "selection": "puzzle classes in no training puzzle (build_dataset --unseen-classes)",
                       "shares_classes_with_training": 0,
                       "forced_exact_accuracy": round(replay(val_trace, None)["exact_accuracy"], 4),
                       "grid": table},
        "heldout": {"seed": HELDOUT_SEED, "puzzle_classes": n_held, "shares_classes_with_training": 0,
                    "shares_classes_with_validation": 0, **held,
                    "ci_note": "95% Wilson intervals with n = puzzles (the 4 augmented copies are not independent)"},
    }


def read_threshold(checkpoint: str | Path) -> tuple[float, Path | None]:
    """The calibrated threshold stored beside a checkpoint (halting.json) -> (threshold, file), or
    (FALLBACK_THRESHOLD, None) if there is none. CheckpointError for a damaged file."""
    path = Path(checkpoint).parent / HALTING_NAME
    if not path.is_file():
        return FALLBACK_THRESHOLD, None
    try:
        t = json.loads(path.read_text(encoding="utf-8"))["threshold"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{display_path(path)} is not a halting record with a 'threshold' ({type(exc).__name__}); "
                              f"re-create it with `{COMMAND}`") from None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
        raise CheckpointError(f"{display_path(path)}: threshold must be a number in (0, 1), got {t!r}; re-create it with `{COMMAND}`")
    return float(t), path


def describe_calibration(checkpoint: str | Path = SHIPPED) -> str:
    """How the checkpoint's default threshold was chosen, in one sentence for --help (from its halting.json)."""
    try:
        threshold, path = read_threshold(checkpoint)
        record = json.loads(path.read_text(encoding="utf-8")) if path else None
        v, h = record["validation"], record["heldout"]
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return "the shipped checkpoint has no readable halting.json."
    return (f"the shipped one is {threshold}: the lowest threshold on a grid that cost no exact accuracy against forced "
            f"halting on a validation split of {v['puzzles']} puzzle classes outside training (seed {v['seed']}), "
            f"kept out of every set it is measured on; on the {h['puzzles']} other unseen classes it measured {h['dynamic']['exact_accuracy']:.3f} "
            f"vs forced {h['forced']['exact_accuracy']:.3f} at {h['dynamic']['steps']:.2f} steps instead of "
            f"{h['forced']['steps']:.0f} (`python -m course_lib.act.calibrate --help`).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.act.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=SHIPPED, help="the step_N file (default: the shipped one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true",
                    help=f"store the result as {HALTING_NAME} beside the checkpoint (and in MANIFEST.json for the shipped one)")
    args = ap.parse_args(argv)
    try:
        record = calibrate(args.checkpoint, args.device)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): nothing was written", file=sys.stderr)
        return 130
    v, h = record["validation"], record["heldout"]
    print(f"validation: {v['puzzles']} puzzles ({v['rows']} rows) from {v['puzzle_classes']} unseen classes, seed {v['seed']}; "
          f"forced exact {v['forced_exact_accuracy']:.4f}")
    for r in v["grid"]:
        print(f"  threshold {r['threshold']:.2f}: exact {r['exact_accuracy']:.4f}, {r['steps']:.3f} steps, "
              f"cost {r['cost_points']:+.2f} points")
    print(f"chosen threshold: {record['threshold']}")
    for name in ("forced", "dynamic"):
        m = h[name]
        print(f"held-out ({h['puzzles']} puzzles, {h['rows']} rows, seed {h['seed']}) {name}: exact {m['exact_accuracy']:.4f} "
              f"(95% CI {m['exact_accuracy_ci95'][0]:.3f}-{m['exact_accuracy_ci95'][1]:.3f}), {m['steps']:.3f} steps")
    print(f"held-out cost of dynamic halting: {h['cost_points']:+.2f} points of exact accuracy")
    if args.write:
        path = Path(args.checkpoint).parent / HALTING_NAME
        write_json_atomic(record, path)
        try:
            update_manifest(path, {"recipe": COMMAND, "seed": VAL_SEED, "metrics": {
                "threshold": record["threshold"], "heldout_cost_points": h["cost_points"],
                "heldout_exact_accuracy_forced": h["forced"]["exact_accuracy"],
                "heldout_exact_accuracy_dynamic": h["dynamic"]["exact_accuracy"], "heldout_puzzles": h["puzzles"]}})
        except ValueError:  # a checkpoint outside checkpoints/ has no MANIFEST entry
            pass
        print(f"wrote {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
