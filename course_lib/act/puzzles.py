"""4×4 Sudoku puzzles with a varying number of blanks, encoded like the reference's ARC grids.

Why 4×4 Sudoku: there are only 288 solved grids, so a tiny model can learn the rules on a CPU
in minutes, yet a puzzle with 4 blanks is solved by one glance while one with 12 needs a chain
of deductions — the difficulty the halting head should learn to notice.

Encoding (as in the reference): PAD 0, EOS 1, symbols from 2 (symbol 0 = blank cell, 1..4 =
digits). Each 4×4 grid is written into a 5×5 canvas whose last row and column are EOS, the
border that tells where the grid ends (ARC pads to 30×30 the same way). A canvas flattens to
25 tokens.

Augmentation: the 8 dihedral transforms (a 4×4 Sudoku's 2×2 boxes map onto boxes under all of
them) and the 24 permutations of the digits. A variant's identifier names both, e.g.
`sudoku00042|t5|p3142`, so the evaluator can map its prediction back to the original frame.
"""

from __future__ import annotations

import itertools

import numpy as np

PAD, EOS, SYMBOL0 = 0, 1, 2
SIDE = 4                 # the Sudoku is SIDE × SIDE with 2 × 2 boxes
CANVAS = SIDE + 1        # one extra row/column of EOS
SEQ_LEN = CANVAS * CANVAS
NUM_SYMBOLS = SIDE + 1   # blank + 4 digits
VOCAB_SIZE = SYMBOL0 + NUM_SYMBOLS
MIN_BLANKS, MAX_BLANKS = 4, 12

# The reference's dihedral ids: 0 identity, 1-3 rotations by 90/180/270, 4 flip left-right,
# 5 flip up-down, 6 transpose, 7 anti-transpose. INVERSE[t] undoes t.
DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """Apply dihedral transform `tid` (0..7) to a 2-D array."""
    ops = {
        0: lambda a: a,
        1: lambda a: np.rot90(a, 1),
        2: lambda a: np.rot90(a, 2),
        3: lambda a: np.rot90(a, 3),
        4: np.fliplr,
        5: np.flipud,
        6: lambda a: a.T,
        7: lambda a: np.fliplr(np.rot90(a, 1)),
    }
    if tid not in ops:
        raise ValueError(f"dihedral id must be 0..7, got {tid}")
    return np.ascontiguousarray(ops[tid](grid))


def inverse_dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral(grid, DIHEDRAL_INVERSE[tid])


def permute_digits(grid: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    """Digit d (1..4) becomes perm[d-1]; blanks (0) stay blank."""
    table = np.array((0, *perm), dtype=grid.dtype)
    return table[grid]


def inverse_perm(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p - 1] = i + 1
    return tuple(inv)


def augment(grid: np.ndarray, tid: int, perm: tuple[int, ...]) -> np.ndarray:
    """Digits first, then geometry (the order does not matter: they commute)."""
    return dihedral(permute_digits(grid, perm), tid)


def unaugment(grid: np.ndarray, tid: int, perm: tuple[int, ...]) -> np.ndarray:
    """The inverse of `augment`: the evaluator's way back to the original puzzle's frame."""
    return permute_digits(inverse_dihedral(grid, tid), inverse_perm(perm))


# --------------------------------------------------------------------------- identifiers
def variant_name(base: str, tid: int, perm: tuple[int, ...]) -> str:
    return f"{base}|t{tid}|p{''.join(map(str, perm))}"


def parse_name(name: str) -> tuple[str, int, tuple[int, ...]]:
    """`sudoku00042|t5|p3142` -> ("sudoku00042", 5, (3, 1, 4, 2))."""
    try:
        base, t, p = name.split("|")
        tid, perm = int(t[1:]), tuple(int(c) for c in p[1:])
    except ValueError:
        raise ValueError(f"not a puzzle variant identifier: {name!r} (expected BASE|tN|pDDDD)") from None
    if not (t.startswith("t") and p.startswith("p") and 0 <= tid < 8 and sorted(perm) == list(range(1, SIDE + 1))):
        raise ValueError(f"not a puzzle variant identifier: {name!r} (expected BASE|tN|pDDDD)")
    return base, tid, perm


# ------------------------------------------------------------------------------ solutions
def all_solutions() -> np.ndarray:
    """Every valid 4×4 Sudoku (288 of them) as a (288, 4, 4) array of digits 1..4."""
    rows = list(itertools.permutations(range(1, SIDE + 1)))
    out = []
    for r0, r1, r2, r3 in itertools.product(rows, repeat=4):
        g = np.array([r0, r1, r2, r3])
        if is_solved(g):
            out.append(g)
    return np.stack(out)


def is_solved(g: np.ndarray) -> bool:
    """Rows, columns and 2×2 boxes each hold 1..4 exactly once."""
    full = set(range(1, SIDE + 1))
    boxes = [g[r:r + 2, c:c + 2].ravel() for r in (0, 2) for c in (0, 2)]
    return all(set(x) == full for x in [*g, *g.T, *boxes])


_SOLUTIONS: np.ndarray | None = None


def solutions() -> np.ndarray:
    global _SOLUTIONS
    if _SOLUTIONS is None:
        _SOLUTIONS = all_solutions()
    return _SOLUTIONS


def count_solutions(puzzle: np.ndarray) -> int:
    """How many of the 288 grids agree with the puzzle's givens (0 = blank)."""
    flat = solutions().reshape(len(solutions()), -1)
    p = puzzle.ravel()
    given = p > 0
    return int((flat[:, given] == p[given]).all(1).sum())


def propagation_rounds(puzzle: np.ndarray) -> int:
    """Difficulty in "rounds": how many sweeps of naked-single filling solve the puzzle.

    Each round fills every blank that has exactly one candidate left. Puzzles that need more
    than naked singles get the round count when they stall plus SIDE * SIDE (they are hardest).
    """
    g = puzzle.copy()
    rounds = 0
    while (g == 0).any():
        fills = {}
        for r, c in zip(*np.nonzero(g == 0), strict=True):
            box = g[r // 2 * 2:r // 2 * 2 + 2, c // 2 * 2:c // 2 * 2 + 2]
            cand = set(range(1, SIDE + 1)) - set(g[r]) - set(g[:, c]) - set(box.ravel())
            if len(cand) == 1:
                fills[(r, c)] = cand.pop()
        if not fills:
            return rounds + SIDE * SIDE
        for (r, c), v in fills.items():
            g[r, c] = v
        rounds += 1
    return rounds


def make_puzzle(rng: np.random.Generator, blanks: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A puzzle with exactly `blanks` blanks and a unique solution, or None if this try stalls.

    Blank cells in random order, skipping any blank that would allow a second solution.
    """
    sol = solutions()[rng.integers(len(solutions()))]
    puzzle = sol.copy()
    removed = 0
    for cell in rng.permutation(SIDE * SIDE):
        r, c = divmod(int(cell), SIDE)
        keep = puzzle[r, c]
        puzzle[r, c] = 0
        if count_solutions(puzzle) == 1:
            removed += 1
            if removed == blanks:
                return puzzle, sol
        else:
            puzzle[r, c] = keep
    return None


# ------------------------------------------------------------------------------- encoding
def encode(grid: np.ndarray) -> np.ndarray:
    """A 4×4 grid of symbols (0 blank, 1..4) -> 25 tokens on an EOS-bordered 5×5 canvas."""
    canvas = np.full((CANVAS, CANVAS), EOS, dtype=np.int64)
    canvas[:SIDE, :SIDE] = grid + SYMBOL0
    return canvas.ravel()


def crop(tokens: np.ndarray) -> np.ndarray:
    """Tokens -> the largest top-left rectangle of symbol tokens, as symbols (the reference's crop).

    A prediction with EOS in the wrong place crops to the wrong shape and simply counts as wrong.
    """
    g = np.asarray(tokens).reshape(CANVAS, CANVAS)
    best, best_size, ncol = 0, (0, 0), CANVAS
    for nrow in range(1, CANVAS + 1):
        for c in range(ncol):
            x = g[nrow - 1, c]
            if x < SYMBOL0 or x >= SYMBOL0 + NUM_SYMBOLS:
                ncol = c
                break
        if nrow * ncol > best:
            best, best_size = nrow * ncol, (nrow, ncol)
    r, c = best_size
    return (g[:r, :c] - SYMBOL0).astype(np.int64)
