"""The motion VQ-VAE of T2M-GPT, with seed 004's argument names.

Encoder: Conv1d → `down_t` × [strided Conv1d (kernel 4, stride 2) → dilated residual stack]
→ Conv1d to `output_emb_width`; one vector per 2**down_t frames. The quantizer snaps each
vector to a code. Decoder: the mirror image, with nearest-neighbour upsampling.
`VQVAE.encode` gives code indices (what the GPT predicts), `VQVAE.decode_codes` turns indices
back into (normalised) features.

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.checkpoints import CheckpointError, check_finite, get_entry, load_checkpoint, load_weights, strip_prefix
from course_lib.core.paths import display_path
from course_lib.core.sizes import check_build_size, check_counts
from course_lib.motion.features import N_FEATS, Normalizer
from course_lib.motion.quantizers import FSQ, QuantizeEMAReset

# Seed 004's defaults (HumanML3D scale) and the course preset that trains on a laptop CPU.
SEED_VQ_CONFIG = dict(nb_code=512, code_dim=512, output_emb_width=512, down_t=3, stride_t=2, width=512, depth=3,
                      dilation_growth_rate=3, vq_act="relu", vq_norm=None, quantizer="ema_reset", mu=0.99,
                      fsq_levels=None, input_dim=N_FEATS)
COURSE_VQ_CONFIG = dict(nb_code=256, code_dim=64, output_emb_width=64, down_t=2, stride_t=2, width=96, depth=2,
                        dilation_growth_rate=3, vq_act="relu", vq_norm=None, quantizer="ema_reset", mu=0.99,
                        fsq_levels=[8, 8, 4], input_dim=N_FEATS)


def _act(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
    if name not in acts:
        raise ValueError(f"vq_act must be one of {list(acts)}, got {name!r}")
    return acts[name]()


def _norm(name: str | None, ch: int) -> nn.Module:
    if name in (None, "None", "none"):
        return nn.Identity()
    if name == "GN":
        return nn.GroupNorm(8, ch)
    if name == "LN":
        return nn.GroupNorm(1, ch)
    raise ValueError(f"vq_norm must be None, 'GN' or 'LN', got {name!r}")


class ResConv1D(nn.Module):
    """norm → act → dilated conv (k=3) → norm → act → 1x1 conv, plus the input."""

    def __init__(self, ch: int, dilation: int, act: str, norm: str | None):
        super().__init__()
        self.net = nn.Sequential(_norm(norm, ch), _act(act), nn.Conv1d(ch, ch, 3, padding=dilation, dilation=dilation),
                                 _norm(norm, ch), _act(act), nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def resnet1d(ch: int, depth: int, growth: int, act: str, norm: str | None, reverse: bool = False) -> nn.Sequential:
    """depth residual blocks with dilations growth**i: the receptive field grows geometrically."""
    blocks = [ResConv1D(ch, growth ** i, act, norm) for i in range(depth)]
    return nn.Sequential(*(blocks[::-1] if reverse else blocks))


class Encoder(nn.Module):
    def __init__(self, input_dim, output_emb_width, down_t, stride_t, width, depth, dilation_growth_rate, vq_act, vq_norm):
        super().__init__()
        layers = [nn.Conv1d(input_dim, width, 3, padding=1), nn.ReLU()]
        for _ in range(down_t):
            layers += [nn.Conv1d(width, width, stride_t * 2, stride_t, stride_t // 2),
                       resnet1d(width, depth, dilation_growth_rate, vq_act, vq_norm)]
        layers.append(nn.Conv1d(width, output_emb_width, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    def __init__(self, input_dim, output_emb_width, down_t, stride_t, width, depth, dilation_growth_rate, vq_act, vq_norm):
        super().__init__()
        layers = [nn.Conv1d(output_emb_width, width, 3, padding=1), nn.ReLU()]
        for _ in range(down_t):
            layers += [resnet1d(width, depth, dilation_growth_rate, vq_act, vq_norm, reverse=True),
                       nn.Upsample(scale_factor=stride_t, mode="nearest"), nn.Conv1d(width, width, 3, padding=1)]
        layers += [nn.Conv1d(width, width, 3, padding=1), nn.ReLU(), nn.Conv1d(width, input_dim, 3, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class VQVAE(nn.Module):
    """(B, T, input_dim) normalised features ⇄ (B, T / 2**down_t) code indices."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = {**COURSE_VQ_CONFIG, **config}
        c = self.config
        if c["code_dim"] != c["output_emb_width"]:
            raise ValueError("code_dim must equal output_emb_width (the quantizer works on the encoder's output)")
        arch = (c["input_dim"], c["output_emb_width"], c["down_t"], c["stride_t"], c["width"], c["depth"],
                c["dilation_growth_rate"], c["vq_act"], c["vq_norm"])
        self.encoder = Encoder(*arch)
        self.decoder = Decoder(*arch)
        if c["quantizer"] == "ema_reset":
            self.quantizer = QuantizeEMAReset(c["nb_code"], c["code_dim"], c["mu"])
        elif c["quantizer"] == "fsq":
            self.quantizer = FSQ(c["fsq_levels"], c["code_dim"])
            self.config["nb_code"] = self.quantizer.nb_code
        else:
            raise ValueError(f"quantizer must be 'ema_reset' or 'fsq', got {c['quantizer']!r}")
        self.nb_code = self.config["nb_code"]
        self.frames_per_code = c["stride_t"] ** c["down_t"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (reconstruction (B, T, D), commitment loss, perplexity); T divisible by frames_per_code."""
        z = self.encoder(x.permute(0, 2, 1))
        z_q, commit, ppl = self.quantizer(z)
        return self.decoder(z_q).permute(0, 2, 1), commit, ppl

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> code indices (B, T // frames_per_code)."""
        z = self.encoder(x.permute(0, 2, 1))
        if isinstance(self.quantizer, FSQ):
            return self.quantizer.quantize(z)
        B, C, T = z.shape
        return self.quantizer.quantize(z.permute(0, 2, 1).reshape(-1, C)).view(B, T)

    @torch.no_grad()
    def decode_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices (B, N) -> features (B, N * frames_per_code, D)."""
        if isinstance(self.quantizer, FSQ):
            z_q = self.quantizer.dequantize(idx)
        else:
            z_q = self.quantizer.dequantize(idx).permute(0, 2, 1)
        return self.decoder(z_q).permute(0, 2, 1)


def recon_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target)


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, Normalizer]:
    """Seed 004's recipe: ckpt['net'] → strip 'module.' → strict load → eval → to(device); plus the normaliser."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = get_entry(ckpt, "config", path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{display_path(path)}: 'config' must be a dict, got a {type(config).__name__}; re-create the checkpoint")
    full = {**COURSE_VQ_CONFIG, **config}
    for k in ("nb_code", "code_dim", "output_emb_width", "down_t", "stride_t", "width", "depth", "dilation_growth_rate", "input_dim"):
        if isinstance(full[k], bool) or not isinstance(full[k], int) or full[k] < 1:
            raise CheckpointError(f"{display_path(path)}: config[{k!r}] must be an int >= 1, got {full[k]!r}; re-create the checkpoint")
    check_counts(path, {k: full[k] for k in ("depth", "down_t")}, 64)
    check_build_size(path, lambda: VQVAE(config), what="VQ-VAE",
                     config={k: full[k] for k in ("nb_code", "code_dim", "width", "depth", "down_t")})
    net = VQVAE(config)
    load_weights(net, strip_prefix(get_entry(ckpt, "net", path), "module."), strict=True, path=path)
    stats = {"mean": get_entry(ckpt, "mean", path), "std": get_entry(ckpt, "std", path)}
    check_finite(stats, path)  # NaN statistics would turn every decoded joint into NaN
    norm = Normalizer(stats["mean"], stats["std"])
    return net.eval().to(device), norm
