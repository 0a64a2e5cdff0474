"""Datasets the recipes and the notebook share: synthetic clips as (normalised) feature tensors.

Seeds are fixed per split so "held-out" really means clips (and captions) never trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from course_lib.motion.features import joints_to_features
from course_lib.motion.synth import make_dataset

TRAIN_SEED, HELDOUT_SEED = 7, 70707


def clip_features(n: int, seed: int) -> tuple[list[dict], list[np.ndarray]]:
    """n clips (dicts with joints/caption/action/meta) and their (T, 67) features."""
    clips = make_dataset(n, seed)
    return clips, [joints_to_features(c["joints"]) for c in clips]


def random_windows(feats: list[torch.Tensor], batch: int, window: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, window, D) random crops; clips shorter than the window are never chosen."""
    ok = [f for f in feats if f.shape[0] >= window]
    idx = torch.randint(len(ok), (batch,), generator=gen).tolist()
    out = []
    for i in idx:
        f = ok[i]
        s = int(torch.randint(f.shape[0] - window + 1, (1,), generator=gen))
        out.append(f[s:s + window])
    return torch.stack(out)
