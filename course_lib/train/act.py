"""Recipe for the shipped ACT reasoner: `python -m course_lib.train.act`.

Builds the 4×4 Sudoku datasets (train/test from seed 0), trains the reasoner HRM-style — a persistent carry
across batches, so halted rows pick up fresh puzzles while the others keep thinking, a loss
at every ACT step ("deep supervision"), exploration on the Q head — and saves the reference's
layout: `checkpoints/act/step_N` (the state dict) with `all_config.json` beside it.
Then it scores the saved weights on three test sets, none of which holds a training puzzle in
disguise (equal up to the 3072 Sudoku symmetries, `act.puzzles.canonical_form`), forced and
dynamic, with 95% Wilson intervals, and writes them to MANIFEST.json:
- `dedup_test_seed_0`: seed 0's 500 test draws minus the ones equivalent to a training puzzle;
- `dedup_test_seed_777`: 500 draws from seed 777 minus the ones equivalent to a seed 0 training puzzle
  (before the check this set was called "unseen"; 494 of its 500 puzzles are training puzzles in disguise);
- `unseen_classes_test`: every puzzle class (of 4,628) that no training puzzle belongs to.
4x4 Sudoku is so small that 20,000 training puzzles cover almost every class, so the held-out
sets are small and their intervals wide; the MANIFEST says so.

    python -m course_lib.train.act --measure-only   # re-score the shipped weights, update MANIFEST metrics
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from course_lib.act import puzzles as P
from course_lib.act.build_dataset import build, train_keys
from course_lib.act.data import load_split
from course_lib.act.loss import ACTLossHead
from course_lib.act.model import DEFAULT_CONFIG, ACTReasoner
from course_lib.act.split_metrics import evaluate_set, score_with_intervals
from course_lib.core.checkpoints import atomic_save, update_manifest, write_json_atomic
from course_lib.core.paths import CHECKPOINTS, RUNS, display_path
from course_lib.train.common import add_run_args, autocast_dtype, run_record, setup_run, train_autocast

TRAIN_SEED, UNSEEN_SEED = 0, 777
ACT_DIR = CHECKPOINTS / "act"


def dataset(seed: int, num_train: int, num_test: int, exclude_train: Path | None = None,
            unseen_classes: bool = False) -> Path:
    """Build (once) and return a folder under runs/act_data/ named after its options; deterministic for the seed."""
    name = f"seed{seed}_{num_train}_{num_test}_dedup"
    if exclude_train is not None:
        name += f"_vs_{exclude_train.name}"
    if unseen_classes:
        name += "_unseen_classes"
    out = RUNS / "act_data" / name
    if not (out / "identifiers.json").exists():
        build(out, seed, num_train, num_test, exclude_train=[exclude_train] if exclude_train else [],
              unseen_classes=unseen_classes)
    return out


def heldout_sets(train_dir: Path, num_test: int = 500) -> dict[str, Path]:
    """The three test sets of the module docstring, as folders."""
    return {"dedup_test_seed_0": train_dir,
            f"dedup_test_seed_{UNSEEN_SEED}": dataset(UNSEEN_SEED, 0, num_test, exclude_train=train_dir),
            "unseen_classes_test": dataset(UNSEEN_SEED, 0, 5000, exclude_train=train_dir, unseen_classes=True)}


def measure(model: ACTReasoner, train_dir: Path, device) -> dict:
    """MANIFEST metrics of the weights as saved: every held-out set, forced and dynamic, with intervals."""
    results = {}
    for name, folder in heldout_sets(train_dir).items():
        pset = load_split(folder, "test")
        r = score_with_intervals(model, pset, device=device)
        meta = pset.meta
        r["built_from"] = {k: meta[k] for k in ("seed", "selection", "num_candidates", "removed_equivalent_to_train",
                                                 "removed_repeats", "unseen_classes_available") if k in meta}
        results[name] = r
        print(f"{name}: {r['puzzles']} puzzles  forced exact {r['forced']['exact_accuracy']:.4f} "
              f"{r['forced']['exact_accuracy_ci95']}  dynamic exact {r['dynamic']['exact_accuracy']:.4f} "
              f"{r['dynamic']['exact_accuracy_ci95']}  steps {r['forced']['steps']:.2f} -> {r['dynamic']['steps']:.2f}")
    classes = P.puzzle_classes()[1]
    seen = train_keys(train_dir)
    return {
        "held_out_rule": "no test puzzle equals a training puzzle up to the 3072 Sudoku symmetries "
                         "(course_lib.act.puzzles.canonical_form); ci95 = Wilson interval with n = puzzles, "
                         "since the 4 augmented copies of a puzzle are not independent",
        "puzzle_classes": len(classes), "puzzle_classes_in_train": int(np.isin(classes, list(seen)).sum()),
        "heldout_exact_accuracy_forced": results["unseen_classes_test"]["forced"]["exact_accuracy"],
        "heldout_exact_accuracy_dynamic": results["unseen_classes_test"]["dynamic"]["exact_accuracy"],
        "heldout_puzzles": results["unseen_classes_test"]["puzzles"],
        "dynamic_steps_saved": results["unseen_classes_test"]["steps_saved"],
        **results,
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=DEFAULT_CONFIG["hidden_size"])
    ap.add_argument("--halt-max-steps", type=int, default=DEFAULT_CONFIG["halt_max_steps"])
    # 0.3 rather than the reference's 0.1: with 0.1 almost every row halted after ~2 steps in training, so
    # steps 5..8 were rarely supervised and forced mode (always 8 steps) lost accuracy after step 3 (pilot).
    ap.add_argument("--exploration", type=float, default=0.3, help="halt_exploration_prob")
    ap.add_argument("--num-train", type=int, default=20000)
    ap.add_argument("--num-test", type=int, default=500)
    add_run_args(ap, seed=TRAIN_SEED, threads=1)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--out-dir", type=Path, default=ACT_DIR)
    ap.add_argument("--no-manifest", action="store_true")
    ap.add_argument("--measure-only", action="store_true",
                    help="do not train: re-score OUT_DIR/step_STEPS and update its MANIFEST metrics (the file is untouched)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        ap.error("--steps and --batch must be >= 1")

    device, gen = setup_run(args)
    data_dir = dataset(args.seed, args.num_train, args.num_test)
    if args.measure_only:
        return measure_only(args.out_dir / f"step_{args.steps}", data_dir, device, args.no_manifest)
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    print(f"train examples: {len(train):,}  test (deduplicated): {len(test):,}")

    config = {**DEFAULT_CONFIG, "hidden_size": args.hidden, "halt_max_steps": args.halt_max_steps,
              "halt_exploration_prob": args.exploration}
    model = ACTReasoner(config).to(device)
    head = ACTLossHead(model).train()
    amp = autocast_dtype(args.precision, device)
    print(f"parameters: {model.num_params():,}  training on {run_record(device, amp)}")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))))

    def next_batch() -> dict[str, torch.Tensor]:
        idx = torch.randint(len(train), (args.batch,), generator=gen)
        return {"inputs": train.inputs[idx].to(device), "labels": train.labels[idx].to(device),
                "puzzle_identifiers": train.puzzle_identifiers[idx].to(device)}

    t0 = time.time()
    carry = head.initial_carry(next_batch())
    log = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with train_autocast(device, amp):  # forward + loss only; backward and the fp32 weights stay outside
            carry, loss, metrics, _, _ = head(carry, next_batch())
        opt.zero_grad(set_to_none=True)
        (loss / args.batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            c = max(int(metrics["count"]), 1)
            print(f"step {step:5d}  loss/row {loss.item() / args.batch:.4f}  halted {c:3d}  "
                  f"exact {float(metrics['exact_accuracy']) / c:.3f}  steps {float(metrics['steps']) / c:.2f}  "
                  f"q_acc {float(metrics['q_halt_accuracy']) / c:.3f}  {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            m = evaluate_set(model, test, device=device)
            log.append({"step": step + 1, **{k: round(v, 4) for k, v in m.items()}})
            print(f"  eval (forced) step {step + 1}: exact {m['exact_accuracy']:.4f}  acc {m['accuracy']:.4f}", flush=True)
            model.train()
    train_seconds = time.time() - t0
    model.eval()

    # Save in the reference's layout; fp32 (the model is ~0.4 MB).
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.out_dir / f"step_{args.steps}"
    atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, ckpt, overwrite=True)
    write_json_atomic(config, args.out_dir / "all_config.json")

    # Measure on the weights as saved.
    from course_lib.act.checkpoint import load_reasoner
    model = load_reasoner(ckpt, device)
    metrics = measure(model, data_dir, device)
    print(f"train time: {train_seconds:.0f}s  saved {display_path(ckpt)}")
    summary = {"train_seconds": round(train_seconds, 1), "metrics": metrics, "eval_log": log}
    write_json_atomic(summary, RUNS / f"act_train_{args.out_dir.name}_summary.json")
    if not args.no_manifest:
        cmd = "python -m course_lib.train.act " + " ".join(argv if argv is not None else sys.argv[1:])
        update_manifest(ckpt, {
            "recipe": cmd.strip(), "seed": args.seed, "heldout_test_seed": UNSEEN_SEED,
            "train_seconds": round(train_seconds, 1), **run_record(device, amp), "params": model.num_params(), "config": config,
            "data": {"num_train_puzzles": args.num_train, "num_test_candidates": args.num_test, "augment": 3},
            "metrics": metrics,
        })
    return 0


def measure_only(ckpt: Path, data_dir: Path, device, no_manifest: bool) -> int:
    """Re-score shipped weights on the held-out sets; keep the MANIFEST entry's other fields."""
    from course_lib.act.checkpoint import load_reasoner
    from course_lib.core.checkpoints import manifest_key, read_manifest
    if not ckpt.exists():
        print(f"error: checkpoint not found: {display_path(ckpt)}; pass the --steps it was trained for", file=sys.stderr)
        return 2
    metrics = measure(load_reasoner(ckpt, device), data_dir, device)
    if not no_manifest:
        entry = read_manifest().get(manifest_key(ckpt), {})
        entry.pop("unseen_test_seed", None)
        entry["heldout_test_seed"] = UNSEEN_SEED
        entry.setdefault("data", {}).pop("num_test_puzzles", None)
        entry["data"]["num_test_candidates"] = 500
        entry["measure_command"] = "python -m course_lib.train.act --measure-only"
        update_manifest(ckpt, {**entry, "metrics": metrics})
        print(f"updated MANIFEST metrics of {display_path(ckpt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
