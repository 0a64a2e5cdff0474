"""The puzzle data: deterministic builds, invertible augmentations, held-out test puzzles."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from course_lib.act import puzzles as P
from course_lib.act.build_dataset import build, canonical_keys
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
    assert len(test) == 20 * 4 and len(train) == 60 * 4
    # labels are the solution of the inputs, in every variant
    for i in range(0, len(test), 7):
        name = test.names[int(test.puzzle_identifiers[i])]
        _, tid, perm = P.parse_name(name)
        x, y = P.crop(test.inputs[i].numpy()), P.crop(test.labels[i].numpy())
        assert P.is_solved(y) and np.array_equal(x[x > 0], y[x > 0])
        assert int(test.blanks[i]) == int((x == 0).sum())
    # no test puzzle is in train, not even as an augmented copy
    tr = set(canonical_keys(np.stack([P.crop(r.numpy()) for r in train.inputs])).tolist())
    te = set(canonical_keys(np.stack([P.crop(r.numpy()) for r in test.inputs])).tolist())
    assert not tr & te and len(te) == 20


def test_canonical_key_is_augmentation_invariant():
    g = P.solutions()[5].copy()
    g[1, 2] = 0
    keys = {int(canonical_keys(P.augment(g, t, p)[None])[0]) for t in range(8) for p in itertools.permutations(range(1, 5))}
    assert len(keys) == 1


def test_load_split_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nope")
    with pytest.raises(DataError, match="not a dataset folder"):
        load_split(tmp_path)
    with pytest.raises(ValueError):
        P.parse_name("test00001")
