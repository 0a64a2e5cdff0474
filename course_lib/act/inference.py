"""Seed 000's inference CLI: run a trained ACT reasoner on puzzle datasets, score it, save predictions.

    python -m course_lib.act.inference --checkpoint checkpoints/act/step_8000 \\
        --data_paths runs/act_data/seed777_0_500 --max_batches 1 \\
        --save_outputs preds inputs puzzle_identifiers q_halt_logits --halting forced

Flow (as in the seed): load the config beside the checkpoint → rebuild the model, load the
weights, eval() → for each batch of the test split, call the model again and again with its
carry until every row has halted → ARC evaluator (voting over augmented copies) → save.

Deviation from the seed, on purpose: outputs go to `--output_dir` (default: a new numbered folder
runs/act_inference/run-NNN, outside git), NOT into the checkpoint's folder — the shipped
checkpoints/ stay read-only. The folder is claimed at the START (its run.json is created
exclusively), so an earlier run is never overwritten: a second run given the same --output_dir
is refused (exit 2), and two runs started at the same moment get different default folders.
A failed or interrupted run (Ctrl-C: one line, exit 130) removes what it claimed.

Several --data_paths are scored separately: each dataset's metrics and puzzle ids carry a key
unique to its path (its folder name, or as many parent folders as it takes to tell two apart:
a/ds and b/ds become "a/ds" and "b/ds"), so datasets never vote together.

Under torchrun (chapter 09), as in seed 000's HRM evaluation, each of the N processes scores its
share of every batch and writes its own `step_N_all_preds.<rank>`; the metric sums are reduced
and rank 0 alone prints (the same console output as one process), votes over every prediction,
and writes the one submission.json:

    torchrun --nproc_per_node 2 -m course_lib.act.inference --checkpoint ... --data_paths ... --output_dir ...

Seed 000 is one of the course's source documents: notebooks/SOURCES.md#seed-000.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from course_lib.act.arc_evaluator import ARCEvaluator
from course_lib.act.calibrate import describe_calibration, read_threshold
from course_lib.act.checkpoint import load_reasoner, step_of
from course_lib.act.data import DataError, load_split
from course_lib.act.halting import run_dynamic, run_forced
from course_lib.act.loss import METRIC_NAMES, ACTLossHead
from course_lib.core.checkpoints import CheckpointError
from course_lib.core.device import pick_device
from course_lib.core.files import atomic_write_bytes, check_output_folder, claim_folder, claim_numbered_folder, write_error
from course_lib.core.paths import RUNS, display_path
from course_lib.distributed import DistSetupError, init_from_env, launched_by_torchrun
from course_lib.distributed.gather import all_gather_object, gather_to_rank0, local_slice
from course_lib.distributed.process_group import DistInfo, shutdown

SAVE_KEYS = ("preds", "inputs", "labels", "puzzle_identifiers", "q_halt_logits", "q_continue_logits", "logits", "steps")
BAR = "=" * 60
DEFAULT_ROOT = RUNS / "act_inference"
CLAIM = "run.json"  # created exclusively at the start: the folder belongs to this run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m course_lib.act.inference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the step_N FILE (not its folder); all_config.json must sit beside it")
    ap.add_argument("--data_paths", nargs="+", required=True, help="dataset folders written by course_lib.act.build_dataset")
    ap.add_argument("--max_batches", type=int, default=None, help="stop after N batches per dataset (default: all)")
    ap.add_argument("--save_outputs", nargs="+", default=["preds", "inputs"], metavar="KEY",
                    help=f"keys to save (default: preds inputs); any of: {' '.join(SAVE_KEYS)}")
    ap.add_argument("--halting", choices=("forced", "dynamic"), default="forced",
                    help="forced: always halt_max_steps (the seed); dynamic: halted rows are frozen (early exit)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="dynamic halting: stop a puzzle when sigmoid(q_halt) > threshold. Default: the threshold calibrated "
                         "for the checkpoint, read from halting.json beside it; " + describe_calibration() +
                         " Without a halting.json: 0.5.")
    ap.add_argument("--batch_size", type=int, default=500)
    ap.add_argument("--output_dir", type=Path, default=None, help="default: a new folder under runs/act_inference/")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = ap.parse_args(argv)
    unknown = [k for k in args.save_outputs if k not in SAVE_KEYS]
    if unknown:
        ap.error(f"unknown --save_outputs key(s) {unknown}; choose from: {' '.join(SAVE_KEYS)}")
    if args.max_batches is not None and args.max_batches < 1:
        ap.error("--max_batches must be >= 1 (leave it out to process every batch)")
    if args.batch_size < 1:
        ap.error("--batch_size must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:  # NaN fails this too
        ap.error("--threshold is a probability: use a value in [0, 1]")
    if args.output_dir is not None and args.output_dir.is_dir() and any(args.output_dir.iterdir()):
        ap.error(f"--output_dir {display_path(args.output_dir)} already exists and is not empty; "
                 "pick a new folder (earlier runs are never overwritten)")
    try:
        check_output_folder(args.output_dir or DEFAULT_ROOT, "--output_dir")
        args.dataset_keys = dataset_keys(args.data_paths)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def dataset_keys(paths: list[str] | list[Path]) -> list[str]:
    """A short key per dataset path, unique among them: the folder name, or more of its parents if
    two share a name (a/ds, b/ds -> "a/ds", "b/ds"). The same folder twice is a ValueError."""
    full = [Path(os.path.abspath(p)) for p in paths]
    seen: dict[Path, str] = {}
    for p, given in zip(full, paths, strict=True):
        if p in seen:
            raise ValueError(f"--data_paths lists {display_path(p)} twice ({seen[p]!r} and {str(given)!r}); list each dataset once")
        seen[p] = str(given)
    keys = []
    for p in full:
        n = 1
        while n < len(p.parts) and sum(q.parts[-n:] == p.parts[-n:] for q in full) > 1:
            n += 1
        keys.append("/".join(p.parts[-n:]))
    return keys


def claim_output_dir(output_dir: Path | None, argv_record: dict) -> tuple[Path, bool]:
    """Claim the output folder now, before any compute -> (folder, whether this run created it).

    A given --output_dir is claimed by creating its run.json exclusively (FileExistsError if another
    run holds it); the default is the next free runs/act_inference/run-NNN (mkdir is atomic)."""
    text = json.dumps(argv_record, indent=2, default=str) + "\n"
    if output_dir is None:
        out = claim_numbered_folder(DEFAULT_ROOT, prefix="run-", width=3, first=1)
        (out / CLAIM).write_text(text, encoding="utf-8")
        return out, True
    created = not output_dir.exists()
    return claim_folder(output_dir, CLAIM, text), created


def release_output_dir(out_dir: Path, created: bool) -> None:
    """Undo the claim of a failed or interrupted run: remove what it wrote (and the folder if it made it)."""
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    with contextlib.suppress(OSError):  # best effort: the failure being reported matters more than the cleanup
        for child in out_dir.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()


def save_tensors(obj: dict, path: Path) -> None:
    """torch.save through memory, then written atomically: a full disk raises a plain OSError naming the
    file (torch's zip writer on a full disk reports only "unexpected pos 896 vs 790")."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a Ctrl-C ends with one line and exit code 130, leaving no output folder behind."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): nothing was saved; the output folder this run claimed was removed", file=sys.stderr)
        return 130
    finally:
        shutdown()  # under torchrun: leave the process group (a no-op otherwise)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    # Validate everything that can fail BEFORE computing or writing anything.
    try:
        device = pick_device(args.device, verbose=False)
    except (ValueError, RuntimeError) as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    info = None
    if launched_by_torchrun():  # one process per rank: gloo on the CPU, NCCL on CUDA
        try:
            info = init_from_env("cuda" if device.type == "cuda" else "cpu",
                                 command="-m course_lib.act.inference --checkpoint ... --data_paths ...")
        except DistSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        device = info.device
    try:
        model = load_reasoner(args.checkpoint, device)
        args.threshold_source = "given"
        if args.threshold is None:  # the calibrated default stored beside the checkpoint
            args.threshold, source = read_threshold(args.checkpoint)
            args.threshold_source = f"calibrated, {display_path(source)}" if source else "no halting.json beside the checkpoint"
    except CheckpointError as exc:
        print(f"error: --checkpoint: {exc}", file=sys.stderr)
        return 2
    try:
        sets = {key: (Path(p), load_split(p, "test")) for key, p in zip(args.dataset_keys, args.data_paths, strict=True)}
    except DataError as exc:
        print(f"error: --data_paths: {exc}", file=sys.stderr)
        return 2
    step = step_of(args.checkpoint)
    out_dir, created = None, False
    # Every rank checked --output_dir in parse_args before init_from_env, which returns only once all ranks have
    # joined: rank 0's claim below cannot make another rank's check fail.
    if info is None or info.rank == 0:  # one process claims the folder; the others are told where it is
        try:
            record = {k: v for k, v in vars(args).items() if k not in ("dataset_keys", "threshold_source")}
            out_dir, created = claim_output_dir(args.output_dir, record)
        except FileExistsError:
            print(f"error: --output_dir {display_path(args.output_dir)} is already used by another run; "
                  "pick a new folder (earlier runs are never overwritten)", file=sys.stderr)
        except OSError as exc:  # the check passed, then the disk filled or the folder became read-only
            print(f"error: --output_dir: {write_error(exc, args.output_dir or DEFAULT_ROOT)}; pick another --output_dir",
                  file=sys.stderr)
    if info is not None:
        out_dir = all_gather_object(None if out_dir is None else str(out_dir), info.world_size)[0]
        out_dir = None if out_dir is None else Path(out_dir)
    if out_dir is None:
        return 2
    try:
        if info is not None and info.rank != 0:  # rank 0 alone speaks: the console reads like one process
            with contextlib.redirect_stdout(io.StringIO()):
                return _run(args, model, device, sets, step, out_dir, info)
        return _run(args, model, device, sets, step, out_dir, info)
    except OSError as exc:  # a full disk, a folder made read-only mid-run: one line, nothing half-written kept
        if info is None or info.rank == 0:
            release_output_dir(out_dir, created)
        print(f"error: {write_error(exc, out_dir)}; nothing was kept. Free some space or pick another --output_dir.",
              file=sys.stderr)
        return 1
    except BaseException:
        if info is None or info.rank == 0:  # the process that claimed the folder releases it
            release_output_dir(out_dir, created)
        raise


def _run(args: argparse.Namespace, model, device: torch.device, sets: dict, step: int, out_dir: Path,
         info: DistInfo | None = None) -> int:
    head = ACTLossHead(model).eval()
    rank, world = (0, 1) if info is None else (info.rank, info.world_size)
    to_vote: list[tuple] = []  # under torchrun: (batch rows for the evaluator) collected on rank 0 at the end
    multi = len(sets) > 1

    print(BAR)
    print("Inference configuration")
    print(BAR)
    print(f"Checkpoint: {display_path(args.checkpoint)}")
    print(f"Datasets: {[display_path(p) for p, _ in sets.values()]}")
    print(f"Max batches: {args.max_batches if args.max_batches else 'all'}")
    print(f"Save outputs: {args.save_outputs}")
    halt_desc = f"max {model.config['halt_max_steps']} steps" + (
        f", threshold {args.threshold} ({args.threshold_source})" if args.halting == "dynamic" else "")
    print(f"Halting: {args.halting} ({halt_desc})")
    print(f"Device: {device.type}")
    print(f"Output dir: {display_path(out_dir)}")
    print(BAR)
    print()
    print("Starting inference...")

    saved: dict[str, list[torch.Tensor]] = {k: [] for k in args.save_outputs}
    evaluator = ARCEvaluator([])
    per_set: dict[str, dict[str, float]] = {}
    batch_no = 0
    for key, (_, pset) in sets.items():
        set_name = f"{key}/all" if multi else "all"
        offset = len(evaluator.names)
        # Namespace the puzzle ids of each dataset by its unique key so that two datasets never vote together.
        evaluator.names.extend(f"{key}/{n}" if multi else n for n in pset.names)
        sums: dict[str, float] = {}
        n_batches = -(-len(pset) // args.batch_size)
        if args.max_batches:
            n_batches = min(n_batches, args.max_batches)
        for b in range(n_batches):
            batch_no += 1
            batch = pset.batch(b * args.batch_size, (b + 1) * args.batch_size)
            if world > 1:  # this rank's share of the global batch (seed 000: one process per GPU)
                rows = local_slice(len(batch["inputs"]), rank, world)
                batch = {k: v[rows] for k, v in batch.items()}
            batch = {k: v.to(device) for k, v in batch.items()}
            print(f"Processing batch {batch_no}: {set_name}", flush=True)
            keys = tuple(set(args.save_outputs) | {"preds", "q_halt_logits", "labels", "puzzle_identifiers"})
            if args.halting == "forced":
                n_steps, metrics, preds = run_forced(head, batch, return_keys=keys)
                if world > 1:
                    n_steps = max(all_gather_object(n_steps if len(batch["inputs"]) else 0, world))
                preds.setdefault("steps", torch.full((len(batch["inputs"]),), n_steps, device=device))
                print(f"  Completed inference in {n_steps} steps", flush=True)
            else:
                n_steps, metrics, preds, row_steps = run_dynamic(model, batch, threshold=args.threshold, return_keys=keys)
                mean_steps = row_steps.float().mean()
                if world > 1:  # the slowest rank decides the batch's steps; the mean is over every puzzle
                    parts = all_gather_object((n_steps, int(row_steps.sum()), row_steps.numel()), world)
                    n_steps, mean_steps = max(p[0] for p in parts), sum(p[1] for p in parts) / sum(p[2] for p in parts)
                print(f"  Completed inference in {n_steps} steps (mean {mean_steps:.2f} per puzzle)", flush=True)
            if world > 1:  # metric sums of every rank, added in rank order
                per_rank = all_gather_object({k: float(v) for k, v in metrics.items()}, world)
                metrics = {k: sum(m[k] for m in per_rank) for k in metrics}
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            vote = (preds["preds"], preds["puzzle_identifiers"] + offset, preds["q_halt_logits"], preds["labels"])
            if world > 1:
                to_vote.append(tuple(t.cpu() for t in vote))
            else:
                evaluator.update(*vote)
            for k in args.save_outputs:
                v = preds[k] if k in preds else batch[k]
                saved[k].append((v + offset if k == "puzzle_identifiers" else v).cpu())
        count = max(sums.pop("count", 0.0), 1.0)
        per_set[set_name] = {k: sums.get(k, 0.0) / count for k in METRIC_NAMES}

    preds_path = out_dir / f"step_{step}_all_preds.{rank}"  # seed 000's name: one file per rank
    save_tensors({k: torch.cat(v) for k, v in saved.items()}, preds_path)
    if world > 1:  # every prediction votes, on rank 0, in the single-process order
        gathered = gather_to_rank0(to_vote, rank, world)
        if rank != 0:
            return 0
        for b in range(len(to_vote)):
            evaluator.update(*(torch.cat([g[b][i] for g in gathered]) for i in range(4)))
        print(f"{world} processes: each rank wrote its own {preds_path.name[:-2]}.<rank> (0 .. {world - 1})", file=sys.stderr)

    print()
    print("Running 1 evaluator(s)...")
    print("Running evaluator 1/1: ARC")
    arc = evaluator.result()
    sub_path = evaluator.write_submission(out_dir / f"evaluator_ARC_step_{step}")

    print()
    print(BAR)
    print("Inference results")
    print(BAR)
    for set_name, metrics in per_set.items():
        print()
        print(f"{set_name}:")
        for k, v in metrics.items():
            print(f"  {k}: {v:.6f}")
    print()
    for k, v in arc.items():
        print(f"{k}: {v:.6f}")
    print(BAR)
    print(f"Saved predictions: {display_path(preds_path)}")
    print(f"Saved submission: {display_path(sub_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
