"""The figures the notebooks draw, grouped by chapter. Each function takes data, returns a Figure.

Plotting lives here (not in the notebooks) so the widgets and the static figures drawn for
the executed notebooks are the very same picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib import font_manager

from course_lib.core.paths import ASSETS
from course_lib.text.tokenizer import show_token

# ============================================================ the course's CJK font (issue 8)
COURSE_FONT = ASSETS / "fonts" / "NotoSansCJKsc-CourseSubset.ttf"  # OFL; rebuilt by assets/fonts/build_subset.py
COURSE_FONT_FAMILY = "Noto Sans CJK SC Course Subset"


def use_course_font() -> str:
    """Register the shipped CJK subset and put it after the default font, so 农夫山泉 renders on any machine.

    matplotlib falls back glyph by glyph along `font.family` (e.g. ["sans-serif", ours]): Latin from
    the default font, Chinese from ours. A generic name alone ("sans-serif") resolves to ONE font.
    """
    if COURSE_FONT_FAMILY not in {f.name for f in font_manager.fontManager.ttflist}:
        font_manager.fontManager.addfont(str(COURSE_FONT))
    if COURSE_FONT_FAMILY not in plt.rcParams["font.family"]:
        plt.rcParams["font.family"] = [*plt.rcParams["font.family"], COURSE_FONT_FAMILY]
    if COURSE_FONT_FAMILY not in plt.rcParams["font.sans-serif"]:
        plt.rcParams["font.sans-serif"] = [*plt.rcParams["font.sans-serif"], COURSE_FONT_FAMILY]
    return COURSE_FONT_FAMILY


use_course_font()

# ===================================================================== chapter 02: sampling


def _label(enc, token_id: int) -> str:
    text = show_token(enc, token_id)
    return repr(text)[1:-1] if not text.startswith("<") else text


def plot_next_token_distribution(enc, logits: torch.Tensor, filtered: torch.Tensor, n: int = 12, title: str = "",
                                 ax=None):
    """Bars for the n most likely next tokens: model probability vs probability after filtering."""
    before, after = logits.float().softmax(-1), filtered.float().softmax(-1)
    top = torch.topk(before, n).indices.tolist()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = range(len(top))
    ax.bar([x - 0.2 for x in xs], [float(before[i]) for i in top], width=0.4, label="model (T=1, no filter)", color="#9ecae1")
    ax.bar([x + 0.2 for x in xs], [float(after[i]) for i in top], width=0.4, label="after filtering", color="#3182bd")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_label(enc, i) for i in top], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig or ax.figure


def temperature_probs(logits: torch.Tensor, temperatures: Sequence[float], n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The n most likely token ids (n,) and their probabilities at each temperature (len(temperatures), n).

    Computed on the logits' device (T = 0 is greedy: all mass on the argmax); plots move the result to the CPU.
    """
    top = torch.topk(logits, n).indices
    rows = []
    for t in temperatures:
        if t == 0:
            probs = logits.argmax().eq(torch.arange(logits.numel(), device=logits.device)).float()
        else:
            probs = (logits.float() / t).softmax(-1)
        rows.append(probs[top])
    return top, torch.stack(rows)


def plot_temperature_sweep(enc, logits: torch.Tensor, temperatures: Sequence[float], n: int = 8):
    """Small multiples: the same next-token distribution at several temperatures."""
    fig, axes = plt.subplots(1, len(temperatures), figsize=(2.6 * len(temperatures), 2.8), sharey=True)
    top, table = temperature_probs(logits, temperatures, n)
    top, table = top.cpu().tolist(), table.cpu()
    for ax, t, probs in zip(axes, temperatures, table, strict=True):
        ax.bar(range(n), probs.tolist(), color="#3182bd")
        ax.set_xticks(range(n))
        ax.set_xticklabels([_label(enc, i) for i in top], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"T = {t}", fontsize=9)
    axes[0].set_ylabel("probability")
    fig.tight_layout()
    return fig


RATE_STYLE = {"well_formed": ("well-formed (quality)", "o-", "#31a354"), "novel": ("novel (not in training)", "^-", "#3182bd"),
              "heldout": ("held-out split (generalisation)", "v-", "#756bb1"), "distinct": ("distinct (diversity)", "s--", "#e6550d")}


def plot_rate_sweep(rows: Sequence[dict], x_key: str, rates: Sequence[str], title: str = "", ax=None):
    """Rates (dicts from `stats.rate`) against a sampling knob, each with its 95% interval as an error bar."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.4))
    xs = list(range(len(rows)))
    for j, key in enumerate(rates):
        label, style, color = RATE_STYLE.get(key, (key, "o-", None))
        mid = [r[key]["rate"] for r in rows]
        lo = [m - r[key]["ci95"][0] for m, r in zip(mid, rows, strict=True)]
        hi = [r[key]["ci95"][1] - m for m, r in zip(mid, rows, strict=True)]
        offset = (j - (len(rates) - 1) / 2) * 0.06  # side by side, so the bars do not hide each other
        ax.errorbar([x + offset for x in xs], mid, yerr=[lo, hi], fmt=style, color=color, label=label, capsize=3, ms=4)
    ax.set_xticks(xs, [str(r[x_key]) for r in rows])
    ax.set_xlabel(x_key)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig or ax.figure


# ================================================================ chapter 02b: beam search


@torch.no_grad()
def beam_tree(model, enc, prompt: str, num_beams: int = 2, steps: int = 4) -> list[list[dict]]:
    """The first `steps` steps of a beam search for one prompt, recorded for drawing (no eos).

    Each step extends every live beam by every token and ranks all extensions by summed
    log-probability (Hugging Face's rule, as `decoding.beam.beam_search`); the 2 * num_beams best are
    recorded, the first num_beams are kept as the next beams. Per step, a list of
    {"parent": index of the beam it extends in the previous step's kept list, "token", "text",
    "sum_logprob", "kept"}. A full forward pass per step: fine for a handful of steps and beams.
    """
    ids = torch.tensor([enc.encode(prompt)], device=model.device)
    beams = [([], 0.0)]  # (generated tokens, summed log-probability)
    tree = []
    for _ in range(steps):
        x = torch.cat([ids.repeat(len(beams), 1), torch.tensor([b[0] for b in beams], device=model.device,
                                                                 dtype=torch.long).view(len(beams), -1)], dim=1)
        logp = torch.log_softmax(model(x)[:, -1, :].double(), -1)
        cand = (logp + torch.tensor([b[1] for b in beams], dtype=torch.float64, device=logp.device)[:, None]).flatten()
        scores, flat = torch.topk(cand, 2 * num_beams)
        step = []
        for rank, (score, f) in enumerate(zip(scores.tolist(), flat.tolist(), strict=True)):
            parent, token = divmod(f, logp.shape[-1])
            text = _label(enc, token)
            step.append({"parent": parent, "token": token, "text": text if text.strip() else "␣" * len(text) or "∅",
                         "sum_logprob": score,
                         "kept": rank < num_beams})
        tree.append(step)
        beams = [(beams[c["parent"]][0] + [c["token"]], c["sum_logprob"]) for c in step if c["kept"]]
    return tree


def plot_beam_tree(tree: list[list[dict]], prompt: str, title: str = ""):
    """Draw `beam_tree`'s steps left to right: kept beams dark with their summed log-probability,
    the runners-up that were looked at and dropped grey; an edge joins each extension to its beam."""
    fig, ax = plt.subplots(figsize=(2.3 * (len(tree) + 1), 0.55 * max(len(s) for s in tree) + 1.2))
    ys = [[0.0]]  # y position of the kept beams of each step (step 0: the prompt)
    ax.text(0, 0, prompt, ha="right", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="#deebf7", ec="#3182bd"))
    for s, step in enumerate(tree, start=1):
        n = len(step)
        pos = [(n - 1) / 2 - i for i in range(n)]
        for c, y in zip(step, pos, strict=True):
            y0 = ys[-1][c["parent"]]
            ax.plot([s - 1 + 0.05, s - 0.05], [y0, y], color="#3182bd" if c["kept"] else "#bdbdbd",
                    lw=1.8 if c["kept"] else 0.8, zorder=1)
            ax.text(s, y, f"{c['text']}\n{c['sum_logprob']:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if c["kept"] else "#969696", zorder=2,
                    bbox=dict(boxstyle="round", fc="#deebf7" if c["kept"] else "white",
                              ec="#3182bd" if c["kept"] else "#d9d9d9"))
        ys.append([y for c, y in zip(step, pos, strict=True) if c["kept"]])
    ax.set_xlim(-1.2, len(tree) + 0.6)
    ax.set_ylim(-max(len(s) for s in tree) / 2 - 0.3, max(len(s) for s in tree) / 2 + 0.3)
    ax.set_xticks(range(len(tree) + 1), ["prompt"] + [f"step {s}" for s in range(1, len(tree) + 1)])
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================ chapter 03: KV cache and batching


def plot_speed_vs_length(lengths: Sequence[int], ms_no_cache: Sequence[float], ms_cache: Sequence[float],
                         ms_last_head: Sequence[float] | None = None):
    """Milliseconds per new token against the context length: no cache with the output head at every
    position, no cache with the head at the last position only (if given), and the KV cache."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    full_label = "no cache, head at every position" if ms_last_head is not None else "no cache (re-run the whole context)"
    ax.plot(lengths, ms_no_cache, "o-", label=full_label, color="#de2d26")
    if ms_last_head is not None:
        ax.plot(lengths, ms_last_head, "^-", label="no cache, head at the last position", color="#fd8d3c")
    ax.plot(lengths, ms_cache, "s-", label="KV cache (one token per step)", color="#3182bd")
    ax.set_xlabel("tokens already in the context")
    ax.set_ylabel("ms per new token")
    ax.set_yscale("log" if ms_last_head is not None else "linear")
    if ms_last_head is None:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_batch_throughput(rows: Sequence[dict]):
    """Tokens/s (left) and ms per decode step (right) against batch size; rows from `speed.batch_curve`."""
    b = [r["batch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(b, [r["tokens_per_s"] for r in rows], "o-", color="#3182bd")
    ax1.set_ylabel("new tokens / s")
    ax1.set_title("throughput", fontsize=9)
    ax2.plot(b, [r["ms_per_step"] for r in rows], "s-", color="#de2d26")
    ax2.set_ylabel("ms per decode step")
    ax2.set_ylim(bottom=0)
    ax2.set_title("time per step (all rows at once)", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(b, [str(x) for x in b])
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_attention_masks(masks: Sequence[torch.Tensor], titles: Sequence[str]):
    """Each mask is (T, T) bool (True = may attend), drawn query rows × key columns."""
    fig, axes = plt.subplots(1, len(masks), figsize=(3 * len(masks), 3))
    axes = [axes] if len(masks) == 1 else axes
    for ax, m, t in zip(axes, masks, titles, strict=True):
        ax.imshow(m.float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.tight_layout()
    return fig


def plot_kv_memory(batch_rows: Sequence[tuple[str, float]], context: Sequence[int], by_heads: dict[str, Sequence[float]],
                   title_right: str = "", used_mib: float | None = None):
    """Left: KV memory of one batch under different cache layouts (bars, MiB; a dashed line at used_mib, the
    tokens actually stored). Right: KV memory of one
    sequence against context length for MHA / GQA / MQA (GiB), e.g. for a 7B-shaped model."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    names, mib = [r[0] for r in batch_rows], [r[1] for r in batch_rows]
    ax1.barh(range(len(names)), mib, color=["#de2d26", "#3182bd", "#31a354", "#756bb1"][:len(names)])
    ax1.set_yticks(range(len(names)), names, fontsize=8)
    ax1.invert_yaxis()
    if used_mib is not None:
        ax1.axvline(used_mib, color="black", linestyle="--", linewidth=1, label="tokens stored")
        ax1.legend(fontsize=8, loc="lower right")
    ax1.set_xlabel("KV cache MiB for the batch")
    ax1.grid(alpha=0.3, axis="x")
    for name, gib in by_heads.items():
        ax2.plot(context, gib, "o-", label=name)
    ax2.set_xlabel("context length (tokens)")
    ax2.set_ylabel("KV cache GiB per sequence")
    ax2.set_title(title_right, fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig
