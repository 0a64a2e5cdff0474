"""The puzzle data: deterministic builds, invertible augmentations, held-out test puzzles."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from course_lib.act import puzzles as P
from course_lib.act.build_dataset import augmentation_keys, build
from course_lib.act.data import DataError, load_split


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("act")
    return build(root / "a", seed=3, num_train=60, num_test=20), build(root / "b", seed=3, num_train=60, num_test=20), \
        build(root / "c", seed=4, num_train=60, num_test=20)


def test_288_solutions_all_valid():
    sols = P.solutions()
    assert sols.shape == (288, 4, 4)
    assert all(P.is_solved(g) for g in sols)
    assert len({g.tobytes() for g in sols}) == 288


@pytest.mark.parametrize("tid", range(8))
def test_every_augmentation_is_invertible_and_keeps_sudoku_valid(tid):
    g = P.solutions()[17]
    puzzle = g.copy()
    puzzle[0, 1] = puzzle[2, 3] = 0
    for perm in itertools.permutations(range(1, 5)):
        aug = P.augment(g, tid, perm)
        assert P.is_solved(aug)
        assert np.array_equal(P.unaugment(aug, tid, perm), g)
        assert np.array_equal(P.unaugment(P.augment(puzzle, tid, perm), tid, perm), puzzle)
        assert P.parse_name(P.variant_name("x7", tid, perm)) == ("x7", tid, perm)


def test_dihedral_inverse_table():
    a = np.arange(16).reshape(4, 4)
    for t in range(8):
        assert np.array_equal(P.dihedral(P.dihedral(a, t), P.DIHEDRAL_INVERSE[t]), a)
    assert len({P.dihedral(a, t).tobytes() for t in range(8)}) == 8


def test_encoding_and_crop():
    g = P.solutions()[0]
    tokens = P.encode(g)
    assert tokens.shape == (P.SEQ_LEN,)
    assert (tokens.reshape(5, 5)[4] == P.EOS).all() and (tokens.reshape(5, 5)[:, 4] == P.EOS).all()
    assert np.array_equal(P.crop(tokens), g)
    broken = tokens.copy()
    broken[2] = P.EOS  # an EOS inside the first row: the crop shrinks to 4 rows × 2 columns
    assert P.crop(broken).shape == (4, 2)


def test_puzzles_have_unique_solution_and_requested_blanks():
    rng = np.random.default_rng(0)
    for blanks in (4, 8, 12):
        made = None
        while made is None:
            made = P.make_puzzle(rng, blanks)
        puzzle, sol = made
        assert (puzzle == 0).sum() == blanks
        assert P.count_solutions(puzzle) == 1
        assert np.array_equal(puzzle[puzzle > 0], sol[puzzle > 0])


def test_build_is_deterministic_and_seed_dependent(small):
    a, b, c = small
    for split in ("train", "test"):
        for f in ("inputs", "labels", "puzzle_identifiers", "blanks"):
            x, y = np.load(a / split / f"all__{f}.npy"), np.load(b / split / f"all__{f}.npy")
            assert np.array_equal(x, y)
    assert json.loads((a / "identifiers.json").read_text()) == json.loads((b / "identifiers.json").read_text())
    assert not np.array_equal(np.load(a / "test/all__inputs.npy"), np.load(c / "test/all__inputs.npy"))


def test_split_contents(small):
    a, _, _ = small
    train, test = load_split(a, "train"), load_split(a, "test")
    assert len(train) == 60 * 4
    assert len(test) == 4 * (20 - test.meta["removed_equivalent_to_train"] - test.meta["removed_repeats"])
    # labels are the solution of the inputs, in every variant
    for i in range(0, len(test), 7):
        name = test.names[int(test.puzzle_identifiers[i])]
        _, tid, perm = P.parse_name(name)
        x, y = P.crop(test.inputs[i].numpy()), P.crop(test.labels[i].numpy())
        assert P.is_solved(y) and np.array_equal(x[x > 0], y[x > 0])
        assert int(test.blanks[i]) == int((x == 0).sum())
    # no test puzzle is in train, not even in disguise; every kept puzzle once
    tr = set(P.canonical_keys(np.stack([P.crop(r.numpy()) for r in train.inputs])).tolist())
    te = set(P.canonical_keys(np.stack([P.crop(r.numpy()) for r in test.inputs])).tolist())
    assert not tr & te and len(te) == test.meta["num_puzzles"] == len(test) // 4
    assert test.meta["num_candidates"] == 20


def test_augmentation_key_is_augmentation_invariant():
    g = P.solutions()[5].copy()
    g[1, 2] = 0
    keys = {int(augmentation_keys(P.augment(g, t, p)[None])[0]) for t in range(8) for p in itertools.permutations(range(1, 5))}
    assert len(keys) == 1


# ------------------------------------------------------------------ the held-out rule: all 3072 symmetries
def _random_puzzles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sols = P.solutions()[rng.integers(288, size=n)]
    return np.where(rng.random((n, 4, 4)) < 0.5, 0, sols)


def test_symmetry_group_preserves_validity_and_holds_the_augmentations():
    assert P.CELL_SYMMETRIES.shape == (128, 16)
    sols = P.solutions().reshape(288, 16)
    for perm in P.CELL_SYMMETRIES:
        assert {g.tobytes() for g in sols[:, perm]} == {g.tobytes() for g in sols}  # a valid grid stays valid
    idx = np.arange(16).reshape(4, 4)
    group = {p.tobytes() for p in P.CELL_SYMMETRIES}
    assert all(P.dihedral(idx, t).ravel().tobytes() in group for t in range(8))
    assert len(set(P.canonical_keys(P.solutions()).tolist())) == 2  # the two essentially different grids


@pytest.mark.parametrize("name", sorted(P.SYMMETRY_GENERATORS))
def test_canonical_form_is_invariant_under_each_cell_generator(name):
    g = _random_puzzles(200).reshape(200, 16)
    moved = g[:, P.SYMMETRY_GENERATORS[name]]
    assert np.array_equal(P.canonical_keys(moved), P.canonical_keys(g))
    assert not np.array_equal(moved, g)  # the generator really moved something


@pytest.mark.parametrize("perm", P.DIGIT_GENERATORS)
def test_canonical_form_is_invariant_under_each_digit_generator(perm):
    g = _random_puzzles(200, seed=1)
    assert np.array_equal(P.canonical_keys(P.permute_digits(g, perm)), P.canonical_keys(g))


def test_canonical_form_equals_brute_force_minimum_over_3072():
    g = _random_puzzles(25, seed=2).reshape(25, 16)
    tables = np.array([(0, *p) for p in itertools.permutations(range(1, 5))])            # (24, 5)
    every = tables[np.arange(24)[:, None, None, None], g[:, P.CELL_SYMMETRIES][None]]  # (24, N, 128, 16)
    powers = 5 ** np.arange(15, -1, -1, dtype=np.int64)
    brute = (every.astype(np.int64) @ powers).min(axis=(0, 2))
    forms, keys = P.canonical_form(g)
    assert np.array_equal(keys, brute)
    assert np.array_equal(forms @ powers, keys)


def test_no_test_puzzle_is_a_training_puzzle_in_disguise(tmp_path):
    # 2,000 training puzzles cover many of the 4,628 classes: the rule has work to do here.
    root = build(tmp_path / "d", seed=5, num_train=2000, num_test=60)
    train, test = load_split(root, "train"), load_split(root, "test")
    tr = set(P.canonical_keys(P.grids_of(train.inputs.numpy())).tolist())
    te = P.canonical_keys(P.grids_of(test.inputs.numpy()))
    assert not tr & set(te.tolist())
    assert test.meta["removed_equivalent_to_train"] > 0
    # another seed's test set, deduplicated against this training set
    other = load_split(build(tmp_path / "e", seed=6, num_train=0, num_test=60, exclude_train=[root]), "test")
    assert not tr & set(P.canonical_keys(P.grids_of(other.inputs.numpy())).tolist())
    assert other.meta["removed_equivalent_to_train"] > 0 and len(other) > 0


def test_unseen_classes_are_unseen_and_solved(tmp_path):
    root = build(tmp_path / "u", seed=7, num_train=300, num_test=30, unseen_classes=True)
    train, test = load_split(root, "train"), load_split(root, "test")
    tr = set(P.canonical_keys(P.grids_of(train.inputs.numpy())).tolist())
    te = P.canonical_keys(P.grids_of(test.inputs.numpy()))
    assert not tr & set(te.tolist()) and len(set(te.tolist())) == 30 == test.meta["num_puzzles"]
    for x, y in zip(P.grids_of(test.inputs.numpy()), P.grids_of(test.labels.numpy()), strict=True):
        assert P.is_solved(y) and np.array_equal(x[x > 0], y[x > 0]) and P.count_solutions(x) == 1


def test_load_split_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nope")
    with pytest.raises(DataError, match="not a dataset folder"):
        load_split(tmp_path)
    with pytest.raises(ValueError):
        P.parse_name("test00001")
