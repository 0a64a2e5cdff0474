"""The shipped text-to-motion pipeline: prompt → text features → motion codes → features → joints.

`load_pipeline()` follows seed 004's order: text encoder (frozen, local files only) → VQ-VAE
(`{'net'}`, prefixes stripped, strict) → transformer (`{'trans'}`, same) → eval → device.

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from course_lib.core.paths import CHECKPOINTS
from course_lib.motion.features import Normalizer, recover_from_ric
from course_lib.motion.gpt import MotionGPT, load_trans
from course_lib.motion.text_encoder import FrozenTextEncoder, load_text_encoder
from course_lib.motion.vqvae import VQVAE, load_vqvae

MOTION_DIR = CHECKPOINTS / "motion"
VQ_PATH = MOTION_DIR / "vqvae.pth"
TRANS_PATH = MOTION_DIR / "trans.pth"
TEXT_PATH = MOTION_DIR / "text_encoder.pt"
CLS_PATH = MOTION_DIR / "action_classifier.pt"
DEFAULT_TEMPERATURE, DEFAULT_TOP_K = 1.0, None


@dataclass
class Motion:
    prompt: str
    codes: torch.Tensor     # (n,) motion tokens, END removed
    features: np.ndarray    # (4n, 67) de-normalised features
    joints: np.ndarray      # (4n, 22, 3) joint positions, metres, y up


@dataclass
class MotionPipeline:
    text: FrozenTextEncoder
    net: VQVAE
    norm: Normalizer
    trans: MotionGPT

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, prompt: str = "") -> Motion:
        """Codes (n,) → features (de-normalised) → joints."""
        feats = self.norm.denorm(self.net.decode_codes(codes[None].to(self.trans.device)))[0].cpu().numpy()
        return Motion(prompt, codes.cpu(), feats, recover_from_ric(feats))

    @torch.no_grad()
    def generate(self, prompts: list[str], temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
                 generator: torch.Generator | None = None, trace: list | None = None) -> list[Motion]:
        clip = self.text(prompts)
        codes = self.trans.sample(clip, temperature=temperature, top_k=top_k, generator=generator, trace=trace)
        return [self.decode(c, p) for c, p in zip(codes, prompts, strict=True)]


def load_pipeline(vq_path: str | Path = VQ_PATH, trans_path: str | Path = TRANS_PATH, text_path: str | Path = TEXT_PATH,
                  device: str | torch.device = "cpu") -> MotionPipeline:
    text = load_text_encoder(text_path, device)
    net, norm = load_vqvae(vq_path, device)
    trans = load_trans(trans_path, device)
    if trans.config.clip_dim != text.clip_dim:
        raise ValueError(f"the transformer expects clip_dim={trans.config.clip_dim} but the text encoder gives {text.clip_dim}")
    if trans.config.nb_code != net.nb_code:
        raise ValueError(f"the transformer predicts {trans.config.nb_code} codes but the VQ-VAE has {net.nb_code}")
    return MotionPipeline(text, net, norm, trans)
