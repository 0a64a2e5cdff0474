"""Rotary embeddings opened up (chapter 05): the two layouts, converting weights between them,
angles in low precision, and running the model past its trained length.

`layers.rope_angles` / `layers.apply_rope` are the model's RoPE: "rotate-half", pairing dimension
i with i + d/2 (Hugging Face LLaMA, GPT-NeoX). Meta's original LLaMA code and GPT-J pair
neighbours (2i, 2i + 1) instead ("interleaved"). The two are the same rotation applied to
permuted coordinates, so a checkpoint moves between them by permuting the rows of the q and k
projections; mixing the layouts without permuting gives wrong output and no error.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.layers import Attention, apply_rope, rope_angles, run_blocks, slot_mask

LAYOUTS = ("rotate_half", "interleaved")


# ------------------------------------------------------------------------------ layouts
def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's layout: rotate each neighbour pair (2i, 2i + 1) of x (B, H, T, d) as one complex number.

    cos/sin come from `rope_angles` (rotate-half layout, frequency i at i and i + d/2), so
    frequency i is read from the first half. Multiplying by cos + i·sin is the rotation.
    """
    half = x.shape[-1] // 2
    rot = torch.complex(cos[..., :half], sin[..., :half])               # (B, 1, T, d/2)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], half, 2))  # (B, H, T, d/2)
    return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


def half_to_interleaved_perm(head_dim: int) -> torch.Tensor:
    """Index p with interleaved[j] = rotate_half[p[j]]: p = [0, d/2, 1, d/2 + 1, ...]."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    return torch.arange(head_dim).view(2, head_dim // 2).t().reshape(-1)


def _head_rows(heads: int, d: int, p: torch.Tensor) -> torch.Tensor:
    """Row indices of `heads` consecutive heads of size d, each permuted by p."""
    return (torch.arange(heads)[:, None] * d + p[None]).reshape(-1)


def convert_qk_layout(state_dict: dict[str, torch.Tensor], n_head: int, to: str) -> dict[str, torch.Tensor]:
    """A copy of state_dict with every attention's q and k rows permuted into layout `to`.

    Only q and k carry RoPE; v and the output projection are untouched. The permutation is the
    same within every head (rows h·d .. h·d + d - 1 of `attn.qkv.weight`, whose first n_head·d
    rows are q, then n_kv_head·d rows of k, then as many of v). With grouped-query attention
    k has fewer heads than q (n_kv_head < n_head, 1 for multi-query); n_kv_head is read from the
    weight's shape, (n_head + 2·n_kv_head)·d rows. This is what Hugging Face's LLaMA conversion
    script does to Meta's checkpoints (to="rotate_half").
    """
    if to not in LAYOUTS:
        raise ValueError(f"to must be one of {LAYOUTS}, got {to!r}")
    out = dict(state_dict)
    for name, w in state_dict.items():
        if not name.endswith("attn.qkv.weight"):
            continue
        n_embd = w.shape[1]
        d = n_embd // n_head
        kv_rows2 = w.shape[0] - n_embd  # 2 · n_kv_head · d rows of k and v
        if n_embd % n_head or kv_rows2 <= 0 or kv_rows2 % (2 * d):
            raise ValueError(f"{name} has shape {tuple(w.shape)}, which is not (n_head + 2·n_kv_head)·head_dim rows "
                             f"for n_head {n_head}: is n_head right for this checkpoint?")
        n_kv_head = kv_rows2 // (2 * d)
        p = half_to_interleaved_perm(d)
        p = p if to == "interleaved" else torch.argsort(p)
        kv = n_kv_head * d
        idx = torch.cat([_head_rows(n_head, d, p), n_embd + _head_rows(n_kv_head, d, p),
                         torch.arange(n_embd + kv, n_embd + 2 * kv)])
        out[name] = w[idx].clone()
    return out


def set_rope_layout(model: nn.Module, layout: str) -> nn.Module:
    """Make every attention layer of model rotate in `layout` (in place; returns model).

    This changes the computation only, not the weights: pair it with `convert_qk_layout`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    fn = apply_rope if layout == "rotate_half" else apply_rope_interleaved
    for m in model.modules():
        if isinstance(m, Attention):
            m.rope_fn = fn
    return model


def to_interleaved(model: nn.Module) -> nn.Module:
    """A copy of the text model in Meta's layout: permuted q/k weights + interleaved rotation.
    It computes the same logits as `model` (up to float rounding)."""
    meta = copy.deepcopy(model)
    meta.load_state_dict(convert_qk_layout(model.state_dict(), model.h_params["n_head"], "interleaved"))
    return set_rope_layout(meta, "interleaved")


# ------------------------------------------------------------------- angles in low precision
def angle_error(positions: torch.Tensor, head_dim: int, dtype: torch.dtype, theta: float = 10000.0) -> torch.Tensor:
    """Largest rotation error per position (radians, in [0, π]), angles = position × inv_freq.

    Shows why `rope_angles` works in fp32: bf16 keeps 8 significant bits, so position 1000
    is already stored as a multiple of 4 and the angle of the fastest pair is off by whole radians.
    The difference is wrapped to (−π, π]: a rotation by 2π is no rotation, so two angles can be at
    most π apart as rotations, however far apart the raw numbers are.
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    exact = positions.double()[:, None] * inv
    low = positions.to(dtype)[:, None] * inv.to(dtype)
    diff = torch.remainder(low.double() - exact + math.pi, 2 * math.pi) - math.pi
    return diff.abs().amax(-1)


# -------------------------------------------------------------- past the trained length
def scaled_positions_and_theta(position_ids: torch.Tensor, theta: float, head_dim: int, method: str,
                               factor: float) -> tuple[torch.Tensor, float]:
    """Positions and base for a context-extension method (no fine-tuning).

    "none": unchanged. "interpolate" (position interpolation, Chen et al. 2023): positions ÷ factor,
    so factor × the trained length maps into the trained range (fractional positions).
    "ntk" (NTK-aware scaling): theta × factor^(d / (d - 2)): the fastest pair is left as it was,
    the slowest is stretched by the factor, the ones between in proportion.
    """
    if method == "none" or factor == 1:
        return position_ids, theta
    if method == "interpolate":
        return position_ids.float() / factor, theta
    if method == "ntk":
        return position_ids, theta * factor ** (head_dim / (head_dim - 2))
    raise ValueError(f"method must be 'none', 'interpolate' or 'ntk', got {method!r}")


def window_mask(T: int, window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Causal band (1, 1, T, T): query t sees keys t - window + 1 .. t (a sliding window as a mask);
    the one mask rule (`layers.slot_mask`) with a window."""
    return slot_mask(torch.arange(T, device=device), T, window=window)


@torch.no_grad()
def loss_by_position(model, idx: torch.Tensor, *, method: str = "none", factor: float = 1.0,
                     window: int | None = None, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss at positions 0, stride, 2·stride, ... of idx (B, T); T may exceed block_size.

    Returns (positions (P,), loss (B, P)). Bypasses `forward`'s length check on purpose (the
    blocks accept any position id): this is the experiment the check normally prevents. window
    limits attention to the last `window` tokens (a sliding window, the way `generate` handles
    long contexts). Every position is still computed; stride only thins out where the 100k-wide
    head (the costly part) is applied.
    """
    B, T = idx.shape
    hp = model.h_params
    pos = torch.arange(T, device=idx.device)[None].expand(B, T)
    pos, theta = scaled_positions_and_theta(pos, hp["rope_theta"], model.head_dim, method, factor)
    rope = rope_angles(pos, model.head_dim, theta)
    mask = None if window is None else window_mask(T, window, idx.device)
    h = model.norm(run_blocks(model.blocks, model.tok_emb(idx), rope, mask))
    at = torch.arange(0, T - 1, stride, device=idx.device)
    logits = model.lm_head(h[:, at]).float()  # (B, P, vocab)
    return at, F.cross_entropy(logits.transpose(1, 2), idx[:, at + 1], reduction="none")
