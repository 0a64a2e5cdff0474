"""Weight-only quantization of the text model (chapter 08b): int8 per channel, int4 per group, bf16.

"Weight-only" means the weights are *stored* in few bits and turned back into floats right before
the matmul; activations, the KV cache, norms and softmax stay in the model's float dtype. The
design follows gpt-fast's `quantize.py`:

- int8, symmetric, one scale per output channel (row): scale = max|w_row| / 127,
  q = round(w / scale) in [-127, 127], w ≈ q · scale, error per weight ≤ scale / 2;
- int4, asymmetric, one (scale, minimum) per group of `group_size` consecutive inputs of a row:
  scale = (max - min) / 15, q = round((w - min) / scale) in [0, 15], w ≈ q · scale + min,
  error ≤ scale / 2; two 4-bit codes are packed into one byte;
- bf16: the whole model cast to bfloat16 (weights *and* activations), the simple comparison.

The matmul dequantizes on the fly (`F.linear(x, q.to(x.dtype)) * scale`): on this course's CPU
that is faster than PyTorch's packed kernels `torch._weight_int8pack_mm` and
`torch._weight_int4pack_mm_for_cpu` (measured by `benchmarks/quantize.py`, "head kernels").

The tied head. The 100k-row output head *is* the token embedding (`GPT.lm_head.weight is
GPT.tok_emb.weight`), and it is most of the model's bytes. Its rows are output channels of the
head and token vectors of the embedding at once, so one quantized table serves both: the head
multiplies by it, the embedding looks rows up in it and dequantizes only those rows. Keeping an
fp32 embedding beside a quantized head would store the table twice (more bytes than the fp32
model); quantizing it once keeps the tie and the saving. The price: the input embeddings carry the
same rounding error as the head, which the held-out loss measures.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.checks import check_int, is_valid

__all__ = ["SCHEMES", "quantize", "quantize_int8", "quantize_int4", "quantize_bf16", "weight_bytes",
           "quantize_per_channel_int8", "dequantize_int8", "quantize_groups_int4", "dequantize_int4",
           "pack_int4", "unpack_int4", "Int8Linear", "Int4Linear", "QuantizedEmbedding"]

SCHEMES = ("int8", "int4", "bf16")
EPS = torch.finfo(torch.float32).eps  # smallest scale: an all-zero row must not divide by zero


# ------------------------------------------------------------------------------ the math
def quantize_per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float → (q int8 (N, K), scale fp32 (N,)): symmetric, one scale per row, |w - q·scale| ≤ scale/2."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=EPS)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 weights int8 codes stand for: q · scale, row by row."""
    return q.float() * scale[:, None]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes in [0, 15] (N, K), K even → uint8 (N, K/2): column 2j in the low nibble, 2j+1 in the high one."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (..., K/2) → codes uint8 (..., K), the inverse of `pack_int4`."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def check_group_size(group_size: object, in_features: int, where: str = "") -> int:
    if not is_valid(check_int, group_size, low=2) or group_size % 2:
        raise ValueError(f"group_size must be an even int >= 2 (e.g. 32), got {group_size!r}")
    if in_features % group_size:
        divisors = [g for g in (16, 32, 64, 128, 256) if in_features % g == 0]
        raise ValueError(f"group_size {group_size} does not divide the input width {in_features}{where}; "
                         f"choose one that does, e.g. {divisors or [2]}")
    return group_size


def quantize_groups_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) → (packed uint8 (N, K/2), scale (N, K/g), minimum (N, K/g)), fp32 parameters.

    Asymmetric per group of g inputs: the group's minimum maps to code 0, its maximum to 15, so all
    16 levels are used even when a group's weights are not centred on 0. Error ≤ scale / 2.
    """
    N, K = w.shape
    check_group_size(group_size, K)
    g = w.float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=EPS)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).reshape(N, K)
    return pack_int4(q), scale, lo


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The fp32 weights (..., K) packed int4 codes stand for: code · scale + minimum, group by group.
    Works on any leading shape (a whole table or the rows an embedding lookup picked)."""
    q = unpack_int4(packed)
    groups = scale.shape[-1]
    q = q.reshape(*q.shape[:-1], groups, -1).float()
    return (q * scale[..., None] + lo[..., None]).flatten(-2)


# ----------------------------------------------------------------------------- modules
class Int8Linear(nn.Module):
    """A linear layer holding int8 weights and per-row fp32 scales; dequantizes on the fly."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_per_channel_int8(linear.weight.detach())
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(linear.weight.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (x @ q^T) * scale == x @ (q * scale)^T: the scale is applied to N outputs, not N·K weights.
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Dequantized rows idx (...,) → (..., in_features): the embedding lookup of a tied table."""
        return self.qweight[idx].float() * self.scale[idx][..., None]

    def dequantized(self) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int4Linear(nn.Module):
    """A linear layer holding packed int4 weights with a (scale, minimum) per group of inputs."""

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        packed, scale, lo = quantize_groups_int4(linear.weight.detach(), group_size)
        self.register_buffer("qweight", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("lo", lo)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype), self.bias)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return dequantize_int4(self.qweight[idx], self.scale[idx], self.lo[idx])

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(self.qweight, self.scale, self.lo)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group_size={self.group_size}"


class QuantizedEmbedding(nn.Module):
    """The token embedding of a model whose tied head was quantized: looks rows up in the head's table."""

    def __init__(self, head: Int8Linear | Int4Linear):
        super().__init__()
        self.head = head  # the same module object as model.lm_head: one table, counted once

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head.rows(idx).to(self.head.scale.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """An empty tensor with the table's device and the activations' dtype. `GPT.device` and
        `GPT.new_cache` read `tok_emb.weight` for exactly these two facts; the table is `head`'s."""
        return self.head.scale.new_empty(0)


# ---------------------------------------------------------------------------- whole models
def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize needs a torch.nn.Module (e.g. load_gpt()), got {type(model).__name__}")
    done = getattr(model, "quantization", None)
    if done is not None:
        raise ValueError(f"this model is already quantized ({done}); quantize the original fp32 model instead "
                         "(quantizing twice would round rounded weights)")
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise ValueError(f"quantize expects fp32 weights, but {name} is {p.dtype}; load the model in fp32 "
                             "(load_gpt() does) and quantize that")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize")


def _replace_linears(module: nn.Module, make) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child, name))
        else:
            _replace_linears(child, make)


def _tied(model: nn.Module) -> bool:
    head, emb = getattr(model, "lm_head", None), getattr(model, "tok_emb", None)
    return isinstance(head, nn.Linear) and isinstance(emb, nn.Embedding) and head.weight is emb.weight


def _weight_only(model: nn.Module, make, scheme: str) -> nn.Module:
    _check_model(model)
    tied = _tied(model)
    q = copy.deepcopy(model)  # the caller's model stays as it was
    _replace_linears(q, make)  # every linear, the head included
    if tied:
        q.tok_emb = QuantizedEmbedding(q.lm_head)
    q.quantization = scheme
    return q


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear (the tied head/embedding included) in int8 per channel."""
    return _weight_only(model, lambda lin, name: Int8Linear(lin), "int8")


def quantize_int4(model: nn.Module, group_size: int = 32) -> nn.Module:
    """A copy of `model` with every nn.Linear (the tied head/embedding included) in int4, groups of group_size inputs."""
    _check_model(model)
    for name, m in model.named_modules():  # check every width before copying anything
        if isinstance(m, nn.Linear):
            check_group_size(group_size, m.in_features, f" of {name}")
    return _weight_only(model, lambda lin, name: Int4Linear(lin, group_size), f"int4 (group_size={group_size})")


def quantize_bf16(model: nn.Module) -> nn.Module:
    """A copy of `model` in bfloat16 (weights, activations and KV cache): the simple comparison."""
    _check_model(model)
    q = copy.deepcopy(model).to(torch.bfloat16)
    q.quantization = "bf16"
    return q


def quantize(model: nn.Module, scheme: str = "int8", group_size: int = 32) -> nn.Module:
    """A quantized copy of `model` that `generate`, `infer` and `evaluate` accept: scheme "int8", "int4" or "bf16"."""
    if scheme == "int8":
        return quantize_int8(model)
    if scheme == "int4":
        return quantize_int4(model, group_size)
    if scheme == "bf16":
        return quantize_bf16(model)
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (a tied table is one table)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
