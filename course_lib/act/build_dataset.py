"""Write deterministic train/test splits of augmented 4×4 Sudoku: `python -m course_lib.act.build_dataset`.

    python -m course_lib.act.build_dataset --out runs/act_data --seed 0 --num-train 4000 --num-test 400

Layout (like the reference's puzzle datasets, one set called "all"):

    DIR/identifiers.json                  list of variant names; index 0 is "<blank>"
    DIR/{train,test}/dataset.json         sizes, vocabulary, seed
    DIR/{train,test}/all__inputs.npy      (N, 25) tokens of the puzzle
    DIR/{train,test}/all__labels.npy      (N, 25) tokens of the solution
    DIR/{train,test}/all__puzzle_identifiers.npy   (N,) index into identifiers.json
    DIR/{train,test}/all__blanks.npy      (N,) number of blanks (the difficulty)

The same seed always gives the same files.

Held out means held out: a test puzzle that is a training puzzle in disguise — the same up to
any of the 3072 Sudoku symmetries (digit relabelling, row/band/column/stack swaps, transpose;
see `puzzles.canonical_form`) — is removed from the test split, and so are repeats within it.
`--exclude-train DIR` also removes puzzles equivalent to the training split of another dataset
(a test set from a different seed is NOT held out by itself: 494 of seed 777's first 500 draws
are seed 0 training puzzles in disguise). `--unseen-classes` builds the test split instead from
the puzzle classes no training puzzle belongs to (4x4 Sudoku has only 4,628 classes with 4-12
blanks). test/dataset.json records how many candidates were drawn and removed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from course_lib.core.files import check_output_folder, current_umask
from course_lib.core.paths import display_path

from . import puzzles as P

PERMS = list(itertools.permutations(range(1, P.SIDE + 1)))
# How many puzzles the space holds (4-12 blanks, unique solution). There are 4,628 classes under the
# 3072 Sudoku symmetries (`puzzles.puzzle_classes`): the most a test split can keep, since its
# puzzles are distinct up to symmetry. `generate_bases` draws puzzles distinct under the 192
# augmentations (8 dihedral x 24 digit orders), a subgroup of index 16, so each class splits into 2
# to 16 of those: 70,411 in all (counted once by mapping all 13,378,944 puzzles, every image of every
# class, to `augmentation_keys`). Asking for more in train and test together would search forever.
PUZZLE_CLASSES = 4628
AUGMENTATION_CLASSES = 70411


def check_sizes(num_train: int, num_test: int) -> None:
    """ValueError (one line, with the maximum) for split sizes the puzzle space cannot hold."""
    if num_test > PUZZLE_CLASSES:
        raise ValueError(f"--num-test {num_test} is more than the puzzle space holds: test puzzles are distinct up to the "
                         f"Sudoku symmetries and there are only {PUZZLE_CLASSES:,} classes; use --num-test <= {PUZZLE_CLASSES}")
    if num_train + num_test > AUGMENTATION_CLASSES:
        raise ValueError(f"--num-train {num_train} + --num-test {num_test} is more than the puzzle space holds: there are at most "
                         f"{AUGMENTATION_CLASSES:,} puzzles distinct under the augmentations; keep the sum <= {AUGMENTATION_CLASSES}")


def augmentation_keys(grids: np.ndarray) -> np.ndarray:
    """One int64 per puzzle, equal iff one is an augmented copy (8 dihedral × 24 digit orders) of the other.

    Only used while drawing puzzles, so that the shipped checkpoint's training set stays
    reproducible; the held-out rule uses the full symmetry group (`puzzles.canonical_keys`).
    """
    idx = np.arange(P.SIDE * P.SIDE).reshape(P.SIDE, P.SIDE)
    dihedral_idx = np.stack([P.dihedral(idx, t).ravel() for t in range(8)])          # (8, 16)
    tables = np.array([(0, *p) for p in PERMS])                                         # (24, 5)
    flat = grids.reshape(len(grids), -1)
    moved = flat[:, dihedral_idx]                                                        # (N, 8, 16)
    variants = tables[np.arange(24)[:, None, None, None], moved[None]]  # (24, N, 8, 16)
    powers = P.NUM_SYMBOLS ** np.arange(P.SIDE * P.SIDE - 1, -1, -1, dtype=np.int64)
    return (variants.astype(np.int64) @ powers).min(axis=(0, 2))


def train_keys(folder: Path, split: str = "train") -> set[int]:
    """Canonical keys of every puzzle in a split (train by default) of a dataset folder."""
    inputs = np.load(Path(folder) / split / "all__inputs.npy")
    return set(P.canonical_keys(P.grids_of(inputs)).tolist()) if len(inputs) else set()


def held_out(bases, seen: set[int]) -> tuple[list[bool], int, int]:
    """keep[i] for each test puzzle: not equivalent to a training puzzle nor to an earlier test puzzle."""
    keys = P.canonical_keys(np.stack([b[0] for b in bases])) if bases else np.zeros(0, np.int64)
    keep, in_train, repeats, kept = [], 0, 0, set()
    for k in keys.tolist():
        in_train += k in seen
        repeats += k not in seen and k in kept
        keep.append(k not in seen and k not in kept)
        kept.add(k)
    return keep, in_train, repeats


def unseen_class_bases(rng: np.random.Generator, n: int, seen: set[int]) -> tuple[list, int]:
    """n puzzles (in random order and random disguise) from classes no training puzzle belongs to."""
    forms, keys = P.puzzle_classes()
    free = np.flatnonzero(~np.isin(keys, np.fromiter(seen, np.int64, len(seen))))
    out = []
    for i in rng.permutation(free)[:n]:
        cells = P.CELL_SYMMETRIES[rng.integers(len(P.CELL_SYMMETRIES))]
        puzzle = P.permute_digits(forms[i].ravel()[cells].reshape(P.SIDE, P.SIDE), PERMS[rng.integers(len(PERMS))])
        out.append((puzzle, P.solve(puzzle), int(keys[i])))
    return out, len(free)


def generate_bases(rng: np.random.Generator, n: int, exclude: set[int]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """n puzzles (puzzle, solution, canonical key), blanks uniform in MIN..MAX, no duplicates, none in `exclude`."""
    out, seen = [], set(exclude)
    while len(out) < n:
        blanks = int(rng.integers(P.MIN_BLANKS, P.MAX_BLANKS + 1))
        made = P.make_puzzle(rng, blanks)
        if made is None:
            continue
        key = int(augmentation_keys(made[0][None])[0])
        if key in seen:
            continue
        seen.add(key)
        out.append((made[0], made[1], key))
    return out


def write_split(folder: Path, split: str, bases, num_aug: int, rng: np.random.Generator,
                names: list[str], seed: int, keep: list[bool] | None = None, extra: dict | None = None) -> None:
    """Write `bases` with their augmented copies; rows of puzzles with keep=False are drawn, then dropped.

    Drawing the copies of dropped puzzles too keeps every kept row identical to the undeduplicated build.
    """
    inputs, labels, ids, blanks = [], [], [], []
    for i, (puzzle, sol, _) in enumerate(bases):
        base = f"{split}{i:05d}"
        variants = [(0, PERMS[0])]
        while len(variants) < 1 + num_aug:  # distinct random non-identity variants
            v = (int(rng.integers(8)), PERMS[int(rng.integers(len(PERMS)))])
            if v not in variants:
                variants.append(v)
        if keep is not None and not keep[i]:
            continue
        for tid, perm in variants:
            inputs.append(P.encode(P.augment(puzzle, tid, perm)))
            labels.append(P.encode(P.augment(sol, tid, perm)))
            names.append(P.variant_name(base, tid, perm))
            ids.append(len(names) - 1)
            blanks.append(int((puzzle == 0).sum()))
    d = folder / split
    d.mkdir(parents=True)
    empty = np.zeros((0, P.SEQ_LEN), dtype=np.int32)
    np.save(d / "all__inputs.npy", np.stack(inputs).astype(np.int32) if inputs else empty)
    np.save(d / "all__labels.npy", np.stack(labels).astype(np.int32) if labels else empty)
    np.save(d / "all__puzzle_identifiers.npy", np.array(ids, dtype=np.int32))
    np.save(d / "all__blanks.npy", np.array(blanks, dtype=np.int32))
    meta = {"seq_len": P.SEQ_LEN, "vocab_size": P.VOCAB_SIZE, "pad_id": P.PAD, "eos_id": P.EOS,
            "symbol0_id": P.SYMBOL0, "side": P.SIDE, "sets": ["all"], "num_puzzles": len(inputs) // (1 + num_aug),
            "num_examples": len(inputs), "num_aug": num_aug, "seed": seed,
            "blanks_range": [P.MIN_BLANKS, P.MAX_BLANKS], **(extra or {})}
    (d / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def build(out: Path, seed: int, num_train: int, num_test: int, train_aug: int = 3, test_aug: int = 3,
          exclude_train: tuple[Path, ...] | list[Path] = (), unseen_classes: bool = False,
          exclude_test: tuple[Path, ...] | list[Path] = ()) -> Path:
    """Build both splits into a temporary folder, then rename it to `out` (never half-written).

    The test split drops every puzzle equivalent (under the 3072 symmetries) to a puzzle of this
    train split or of the train split of any `exclude_train` folder; with `unseen_classes` it is
    drawn from the puzzle classes none of those training sets touches. `exclude_test` folders' test
    splits are removed the same way: a validation set and a test set never share a puzzle class.
    """
    out = Path(out)
    check_sizes(num_train, num_test)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{display_path(out)} already exists and is not empty; pick a new --out folder")
    for d in exclude_train:
        if not (Path(d) / "train" / "all__inputs.npy").exists():
            raise FileNotFoundError(f"--exclude-train {display_path(d)} has no train split; build that dataset first")
    for d in exclude_test:
        if not (Path(d) / "test" / "all__inputs.npy").exists():
            raise FileNotFoundError(f"--exclude-test {display_path(d)} has no test split; build that dataset first")
    rng = np.random.default_rng(seed)
    # Test first, so the test candidates of a given seed do not depend on --num-train.
    test = generate_bases(rng, num_test, set())
    train = generate_bases(rng, num_train, {k for _, _, k in test})
    seen = set(P.canonical_keys(np.stack([b[0] for b in train])).tolist()) if train else set()
    for d in exclude_train:
        seen |= train_keys(d)
    for d in exclude_test:
        seen |= train_keys(d, "test")
    extra = {"held_out_rule": "no test puzzle equals a training puzzle up to the 3072 Sudoku symmetries",
             "excluded_train_sets": ["this dataset", *(display_path(Path(d)) for d in exclude_train)]}
    if exclude_test:
        extra["excluded_test_sets"] = [display_path(Path(d)) for d in exclude_test]
    if unseen_classes:
        test, free = unseen_class_bases(np.random.default_rng([seed, 3]), num_test, seen)
        if free < num_test:
            raise ValueError(f"--num-test {num_test} --unseen-classes: the training set(s) leave only {free} puzzle classes "
                             f"unseen; use --num-test <= {free} or a smaller --num-train")
        keep = None
        extra |= {"selection": "puzzle classes absent from the training sets", "unseen_classes_available": free}
    else:
        keep, in_train, repeats = held_out(test, seen)
        extra |= {"selection": "random draws, deduplicated", "num_candidates": len(test),
                  "removed_equivalent_to_train": in_train, "removed_repeats": repeats}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes a private 0700 folder; the dataset gets the usual permissions
    try:
        names = ["<blank>"]
        write_split(tmp, "train", train, train_aug, np.random.default_rng([seed, 1]), names, seed)
        write_split(tmp, "test", test, test_aug, np.random.default_rng([seed, 2]), names, seed, keep, extra)
        (tmp / "identifiers.json").write_text(json.dumps(names) + "\n")
        try:
            # rename(2) replaces an empty folder but fails on a non-empty one: of two runs with the
            # same --out, the second to finish is refused instead of mixing or replacing the first.
            os.rename(tmp, out)
        except OSError:
            raise FileExistsError(f"--out {display_path(out)} was created by another run meanwhile; "
                                  "this run's dataset was discarded: pick a new --out folder") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="new folder to create")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--num-train", type=int, default=4000, help="original training puzzles (default 4000)")
    ap.add_argument("--num-test", type=int, default=400, help="original test puzzles (default 400)")
    ap.add_argument("--train-aug", type=int, default=3, help="augmented copies per training puzzle (default 3)")
    ap.add_argument("--test-aug", type=int, default=3, help="augmented copies per test puzzle (default 3)")
    ap.add_argument("--exclude-train", type=Path, action="append", default=[], metavar="DIR",
                    help="also drop test puzzles equivalent to the train split of this dataset folder (repeatable)")
    ap.add_argument("--exclude-test", type=Path, action="append", default=[], metavar="DIR",
                    help="also drop test puzzles equivalent to the TEST split of this dataset folder (repeatable): "
                         "keeps a validation set and a test set apart")
    ap.add_argument("--unseen-classes", action="store_true",
                    help="test split = puzzle classes no training puzzle belongs to, instead of deduplicated random draws")
    args = ap.parse_args(argv)
    for d in args.exclude_train:
        if not (d / "train" / "all__inputs.npy").exists():
            ap.error(f"--exclude-train {display_path(d)} is not a dataset folder with a train split; build it first")
    for d in args.exclude_test:
        if not (d / "test" / "all__inputs.npy").exists():
            ap.error(f"--exclude-test {display_path(d)} is not a dataset folder with a test split; build it first")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.num_train < 0 or args.num_test < 1:
        ap.error("--num-train must be >= 0 and --num-test >= 1")
    if not (0 <= args.train_aug < 192 and 0 <= args.test_aug < 192):
        ap.error("--train-aug and --test-aug must be in 0..191 (8 dihedral x 24 digit permutations, minus identity)")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        ap.error(f"--out {display_path(args.out)} already exists; pick a new folder (runs are never overwritten)")
    try:
        check_output_folder(args.out, "--out")
        check_sizes(args.num_train, args.num_test)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        out = build(args.out, args.seed, args.num_train, args.num_test, args.train_aug, args.test_aug,
                    args.exclude_train, args.unseen_classes, args.exclude_test)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split in ("train", "test"):
        meta = json.loads((out / split / "dataset.json").read_text())
        print(f"{split}: {meta['num_puzzles']} puzzles, {meta['num_examples']} examples -> {display_path(out / split)}")
    if "num_candidates" in meta:
        print(f"test: {meta['num_candidates']} drawn, {meta['removed_equivalent_to_train']} removed as training puzzles "
              f"in disguise, {meta['removed_repeats']} as repeats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
