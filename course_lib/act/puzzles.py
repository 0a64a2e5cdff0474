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
    """`sudoku00042|t5|p3142` -> ("sudoku00042", 5, (3, 1, 4, 2)).

    Split from the right: the base may itself hold "|" (act.inference prefixes it with the dataset's
    folder key, and a folder may be named "x|y")."""
    try:
        base, t, p = name.rsplit("|", 2)
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


# ----------------------------------------------------------------------------- symmetries
# Every change that maps any valid 4×4 Sudoku to a valid one (the test set's "same puzzle" rule):
# relabel the digits (4! ways), swap the two rows of a band, swap the two bands, the same for
# columns and stacks, and transpose. Together they generate 8 row orders × 8 column orders × 2
# (transpose or not) = 128 rearrangements of the 16 cells, times 24 relabellings = 3072; the
# 8 rotations/reflections the augmenter uses are among them. A rearrangement is an index array
# `perm` of the 16 cells: the moved grid is `flat[perm]`.
def _swap(kind: str, a: int, b: int) -> np.ndarray:
    idx = np.arange(SIDE * SIDE).reshape(SIDE, SIDE)
    order = np.arange(SIDE)
    order[[a, b]] = order[[b, a]]
    return (idx[order] if kind == "rows" else idx[:, order]).ravel()


SYMMETRY_GENERATORS: dict[str, np.ndarray] = {
    "transpose": np.arange(SIDE * SIDE).reshape(SIDE, SIDE).T.ravel(),
    "swap rows 0,1": _swap("rows", 0, 1),
    "swap rows 2,3": _swap("rows", 2, 3),
    "swap bands": _swap("rows", 0, 2)[_swap("rows", 1, 3)],
    "swap columns 0,1": _swap("cols", 0, 1),
    "swap columns 2,3": _swap("cols", 2, 3),
    "swap stacks": _swap("cols", 0, 2)[_swap("cols", 1, 3)],
}
DIGIT_GENERATORS: tuple[tuple[int, ...], ...] = ((2, 1, 3, 4), (2, 3, 4, 1))  # a swap and a 4-cycle generate all 24


def _closure(generators) -> np.ndarray:
    """All compositions of the generating rearrangements, as a (G, 16) array (breadth-first, sorted)."""
    start = tuple(range(SIDE * SIDE))
    group, frontier = {start}, [start]
    while frontier:
        new = []
        for g in frontier:
            for h in generators:
                c = tuple(np.asarray(g)[h])  # first g, then h
                if c not in group:
                    group.add(c)
                    new.append(c)
        frontier = new
    return np.array(sorted(group))


CELL_SYMMETRIES = _closure(SYMMETRY_GENERATORS.values())  # (128, 16)
_POWERS = (NUM_SYMBOLS ** np.arange(SIDE * SIDE - 1, -1, -1)).astype(np.float64)


def canonical_form(grids: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The smallest variant of each grid over all 3072 symmetries -> (forms (N, 16), keys (N,) int64).

    Two puzzles are the same puzzle in disguise iff their keys are equal. Vectorised: all 128 cell
    rearrangements at once; for each, the smallest digit relabelling is found directly — name
    the digits 1, 2, 3, 4 in the order they first appear in reading order (a test checks this
    against brute force over all 24 relabellings). Keys read the 16 cells as a base-5 number,
    so the smallest key is the lexicographically smallest grid.
    """
    flat = np.asarray(grids).reshape(len(grids), SIDE * SIDE).astype(np.int8)
    forms, keys = [], []
    for s in range(0, len(flat), chunk):
        moved = flat[s:s + chunk][:, CELL_SYMMETRIES]                              # (n, 128, 16)
        hit = np.concatenate([moved == d for d in range(1, SIDE + 1)], -1)            # (n, 128, 4 * 16)
        first = hit.reshape(*moved.shape[:2], SIDE, SIDE * SIDE)
        first = np.where(first.any(-1), first.argmax(-1), SIDE * SIDE)               # (n, 128, 4) first cell of digit d
        label = first.argsort(-1, kind="stable").argsort(-1, kind="stable").astype(np.int8) + 1  # digit d -> new name
        table = np.concatenate([np.zeros_like(label[..., :1]), label], -1)          # blank stays 0
        relabelled = np.take_along_axis(table, moved.astype(np.intp), -1)           # (n, 128, 16)
        k = (relabelled.astype(np.float64) @ _POWERS).astype(np.int64)              # exact: 5**16 < 2**53
        best = k.argmin(1)
        forms.append(relabelled[np.arange(len(k)), best].astype(np.int64))
        keys.append(k[np.arange(len(k)), best])
    if not forms:
        return np.zeros((0, SIDE * SIDE), np.int64), np.zeros(0, np.int64)
    return np.concatenate(forms), np.concatenate(keys)


def canonical_keys(grids: np.ndarray) -> np.ndarray:
    """(N,) int64, equal for two grids iff one is a symmetry (of the 3072) of the other."""
    return canonical_form(grids)[1]


def puzzle_classes(min_blanks: int = MIN_BLANKS, max_blanks: int = MAX_BLANKS) -> tuple[np.ndarray, np.ndarray]:
    """Every puzzle with a unique solution, up to symmetry -> (canonical grids (C, 4, 4), keys (C,)), sorted by key.

    Why it is small enough to list: every solved grid is a symmetry of one of only two solved
    grids, so every puzzle is a symmetry of one of those two with some cells blanked. With 4 to
    12 blanks there are 4,628 classes — few enough that a 20,000-puzzle training set covers
    almost all of them, which is why a held-out set must be checked, not assumed.
    """
    sols = solutions().reshape(len(solutions()), -1)
    reps = sols[np.unique(canonical_keys(sols), return_index=True)[1]]             # (2, 16)
    bits = 1 << np.arange(SIDE * SIDE)
    masks = np.arange(1 << (SIDE * SIDE))                                            # bit i set = cell i given
    blanks = SIDE * SIDE - ((masks[:, None] & bits) != 0).sum(1)
    masks = masks[(blanks >= min_blanks) & (blanks <= max_blanks)]
    puzzles = []
    for rep in reps:
        differs = ((sols != rep) * bits).sum(1)                                      # cells where each grid differs
        differs = differs[differs != 0]
        unique = ((masks[:, None] & differs[None]) != 0).all(1)                      # every other grid breaks a given
        givens = (masks[unique][:, None] & bits) != 0
        puzzles.append(np.where(givens, rep, 0))
    forms, keys = canonical_form(np.concatenate(puzzles))
    keys, first = np.unique(keys, return_index=True)
    return forms[first].reshape(-1, SIDE, SIDE), keys


def solve(puzzle: np.ndarray) -> np.ndarray:
    """The solved grid that agrees with the givens (the first one if there are several)."""
    flat = solutions().reshape(len(solutions()), -1)
    p = np.asarray(puzzle).ravel()
    ok = (flat[:, p > 0] == p[p > 0]).all(1)
    if not ok.any():
        raise ValueError("this puzzle has no solution")
    return flat[ok.argmax()].reshape(SIDE, SIDE)


def grids_of(tokens: np.ndarray) -> np.ndarray:
    """(N, 25) canvases -> (N, 4, 4) symbol grids (0 blank, 1..4), the inverse of `encode` row by row."""
    t = np.asarray(tokens).reshape(-1, CANVAS, CANVAS)[:, :SIDE, :SIDE]
    return (t - SYMBOL0).astype(np.int64)


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
