"""The chapter's figures: Sudoku grids, a puzzle being solved step by step, Q values, halting curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import puzzles as P

GIVEN, FILLED, WRONG = "#dfe7f2", "#ffffff", "#f6c6c6"


def draw_grid(ax, grid: np.ndarray, givens: np.ndarray | None = None, truth: np.ndarray | None = None, title: str = "") -> None:
    """A 4×4 Sudoku: givens shaded blue, wrong cells red, blanks empty, thick lines around the 2×2 boxes."""
    grid = np.asarray(grid)
    ax.set_xlim(0, P.SIDE)
    ax.set_ylim(P.SIDE, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for r in range(P.SIDE):
        for c in range(P.SIDE):
            v = int(grid[r, c])
            color = FILLED
            if givens is not None and givens[r, c]:
                color = GIVEN
            elif truth is not None and v != truth[r, c]:
                color = WRONG
            ax.add_patch(plt.Rectangle((c, r), 1, 1, color=color))
            if v:
                ax.text(c + 0.5, r + 0.5, str(v), ha="center", va="center", fontsize=13,
                        fontweight="bold" if givens is not None and givens[r, c] else "normal")
    for i in range(P.SIDE + 1):
        lw = 2.0 if i % 2 == 0 else 0.5
        ax.axhline(i, color="k", lw=lw)
        ax.axvline(i, color="k", lw=lw)
    ax.set_title(title, fontsize=10)


def plot_solving(puzzle: np.ndarray, answers: list[np.ndarray], truth: np.ndarray, q_probs: list[float]):
    """The puzzle, then the model's answer after each step, titled with sigmoid(q_halt)."""
    n = len(answers) + 1
    fig, axes = plt.subplots(1, n, figsize=(1.7 * n, 2.1))
    draw_grid(axes[0], puzzle, givens=puzzle > 0, title=f"puzzle ({int((puzzle == 0).sum())} blanks)")
    for k, (ans, q) in enumerate(zip(answers, q_probs, strict=True), start=1):
        wrong = int((ans != truth).sum())
        draw_grid(axes[k], ans, givens=puzzle > 0, truth=truth, title=f"step {k}: {wrong} wrong\nP(halt)={q:.2f}")
    fig.tight_layout()
    return fig


def plot_q_curves(q_probs: np.ndarray, blanks: np.ndarray, threshold: float):
    """sigmoid(q_halt) per step, one line per puzzle, coloured by difficulty."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    cmap = plt.get_cmap("viridis")
    steps = np.arange(1, q_probs.shape[0] + 1)
    for i in range(q_probs.shape[1]):
        ax.plot(steps, q_probs[:, i], color=cmap((blanks[i] - P.MIN_BLANKS) / (P.MAX_BLANKS - P.MIN_BLANKS)), alpha=0.8)
    ax.axhline(threshold, color="r", ls="--", lw=1, label=f"threshold {threshold}")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(P.MIN_BLANKS, P.MAX_BLANKS))
    fig.colorbar(sm, ax=ax, label="blanks")
    ax.set_xlabel("ACT step")
    ax.set_ylabel("sigmoid(q_halt)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_halting_summary(acc_by_step: list[float], steps_by_blanks: dict[int, float], dynamic_acc: float, dynamic_steps: float):
    """Left: accuracy if every puzzle stops after k steps, with the dynamic point. Right: halting step vs blanks."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    ks = np.arange(1, len(acc_by_step) + 1)
    a.plot(ks, acc_by_step, "o-", label="forced, max = k")
    a.plot([dynamic_steps], [dynamic_acc], "r*", ms=14, label="dynamic (mean steps)")
    a.set_xlabel("steps per puzzle")
    a.set_ylabel("exact accuracy")
    a.legend(loc="lower right")
    a.grid(alpha=0.3)
    b.bar(list(steps_by_blanks), list(steps_by_blanks.values()), color="tab:purple")
    b.set_xlabel("blanks in the puzzle (difficulty)")
    b.set_ylabel("mean steps at halt")
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_threshold_curve(thresholds: np.ndarray, accs: list[float], steps: list[float], forced_acc: float,
                         max_steps: int, mark: float | None = None):
    """Exact accuracy and mean steps as the halting threshold moves (the widget's static figure)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(thresholds, accs, color="tab:blue", label="dynamic exact accuracy")
    ax.axhline(forced_acc, color="tab:blue", ls=":", label=f"forced ({max_steps} steps) accuracy")
    ax.set_xlabel("halting threshold on sigmoid(q_halt)")
    ax.set_ylabel("exact accuracy", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(thresholds, steps, color="tab:orange", label="dynamic mean steps")
    ax2.set_ylabel("mean steps", color="tab:orange")
    ax2.set_ylim(0, max_steps + 0.5)
    if mark is not None:
        ax.axvline(mark, color="k", lw=1, ls="--")
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
