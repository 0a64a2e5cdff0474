"""Two ways to turn a continuous encoder output into a code index.

`QuantizeEMAReset` (T2M-GPT's default `ema_reset`): a learned codebook; each vector snaps to its
nearest code (squared L2), codes follow an exponential moving average of the vectors assigned
to them, and codes nobody uses ("dead codes") are re-seeded from current encoder outputs.
Gradients skip the non-differentiable snap with the straight-through estimator.

`FSQ` (finite scalar quantization): no codebook at all. Project to a few dimensions, bound
each with tanh, round it to one of `levels[i]` values; the code is the tuple of rounded values
(256 codes = levels [8, 8, 4]). Nothing can die, nothing needs EMA.

Both take and return (B, code_dim, T) tensors, as a Conv1d stack produces them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QuantizeEMAReset(nn.Module):
    def __init__(self, nb_code: int, code_dim: int, mu: float = 0.99):
        super().__init__()
        self.nb_code, self.code_dim, self.mu = nb_code, code_dim, mu
        self.register_buffer("codebook", torch.zeros(nb_code, code_dim))
        self.register_buffer("code_sum", torch.zeros(nb_code, code_dim))
        self.register_buffer("code_count", torch.zeros(nb_code))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _tile(self, x: torch.Tensor) -> torch.Tensor:
        """At least nb_code rows of encoder outputs (repeated with jitter) to draw resets from."""
        n = x.shape[0]
        if n < self.nb_code:
            reps = (self.nb_code + n - 1) // n
            x = x.repeat(reps, 1) + torch.randn(n * reps, x.shape[1], device=x.device) * (0.01 / math.sqrt(x.shape[1]))
        return x

    @torch.no_grad()
    def _init_codebook(self, x: torch.Tensor) -> None:
        out = self._tile(x)
        self.codebook.copy_(out[torch.randperm(out.shape[0], device=x.device)[: self.nb_code]])
        self.code_sum.copy_(self.codebook)
        self.code_count.fill_(1.0)
        self.initialized.fill_(True)

    def quantize(self, x_flat: torch.Tensor) -> torch.Tensor:
        """Nearest code index for each row of x_flat (N, code_dim) by squared L2 distance."""
        d = (x_flat.pow(2).sum(-1, keepdim=True) - 2 * x_flat @ self.codebook.t() + self.codebook.pow(2).sum(-1)[None])
        return d.argmin(-1)

    def dequantize(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.codebook)

    @torch.no_grad()
    def _ema_update(self, x_flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.nb_code).type_as(x_flat)  # (N, K)
        self.code_sum.mul_(self.mu).add_(onehot.t() @ x_flat, alpha=1 - self.mu)
        self.code_count.mul_(self.mu).add_(onehot.sum(0), alpha=1 - self.mu)
        usage = (self.code_count >= 1.0).float()[:, None]
        out = self._tile(x_flat)
        random_codes = out[torch.randperm(out.shape[0], device=x_flat.device)[: self.nb_code]]
        self.codebook.copy_(usage * self.code_sum / self.code_count.clamp(min=1e-5)[:, None] + (1 - usage) * random_codes)
        # A reset code starts with a fresh sum/count so it is not pulled back to where it died.
        self.code_sum.copy_(usage * self.code_sum + (1 - usage) * random_codes)
        self.code_count.copy_(usage[:, 0] * self.code_count + (1 - usage[:, 0]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, T) -> (quantized x with straight-through grads, commitment loss, perplexity)."""
        B, C, T = x.shape
        x_flat = x.permute(0, 2, 1).reshape(-1, C)
        if self.training and not bool(self.initialized):
            self._init_codebook(x_flat.detach())
        idx = self.quantize(x_flat)
        x_d = self.dequantize(idx)
        if self.training:
            self._ema_update(x_flat.detach(), idx)
        commit = F.mse_loss(x_flat, x_d.detach())
        x_d = x_flat + (x_d - x_flat).detach()  # straight-through: forward uses the code, backward skips the snap
        return x_d.view(B, T, C).permute(0, 2, 1).contiguous(), commit, perplexity(idx, self.nb_code)


class FSQ(nn.Module):
    """Finite scalar quantization with an implicit codebook of prod(levels) codes."""

    def __init__(self, levels: list[int], code_dim: int):
        super().__init__()
        self.levels = list(levels)
        self.nb_code = math.prod(self.levels)
        self.code_dim = code_dim
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1]), 0)
        self.register_buffer("_basis", basis, persistent=False)
        self.proj_in = nn.Conv1d(code_dim, len(self.levels), 1)
        self.proj_out = nn.Conv1d(len(self.levels), code_dim, 1)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each dimension into (-(L-1)/2, (L-1)/2) (shifted by 0.5 for even L) before rounding."""
        L = self._levels[None, :, None]
        half = (L - 1) / 2
        offset = torch.where(L % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _round(self, z: torch.Tensor) -> torch.Tensor:
        zb = self._bound(z)
        return zb + (zb.round() - zb).detach()  # straight-through rounding

    def codes_to_index(self, q: torch.Tensor) -> torch.Tensor:
        """Rounded values (B, d, T) -> code index (B, T)."""
        L = self._levels[None, :, None]
        digits = (q + (L // 2)).round().long()  # 0 .. L-1 per dimension
        return (digits * self._basis[None, :, None]).sum(1)

    def index_to_codes(self, idx: torch.Tensor) -> torch.Tensor:
        digits = (idx[:, None, :] // self._basis[None, :, None]) % self._levels.long()[None, :, None]
        return digits.float() - (self._levels[None, :, None] // 2)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, code_dim, T) -> indices (B, T)."""
        return self.codes_to_index(self._round(self.proj_in(x)))

    def dequantize(self, idx: torch.Tensor) -> torch.Tensor:
        """indices (B, T) -> (B, code_dim, T)."""
        return self.proj_out(self.index_to_codes(idx))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self._round(self.proj_in(x))
        idx = self.codes_to_index(q.detach())
        return self.proj_out(q), torch.zeros((), device=x.device), perplexity(idx.flatten(), self.nb_code)


def perplexity(idx: torch.Tensor, nb_code: int) -> torch.Tensor:
    """exp(entropy) of code usage: how many codes are effectively in use (nb_code when uniform)."""
    p = torch.bincount(idx.flatten(), minlength=nb_code).float()
    p = p / p.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p + 1e-10)).sum())
