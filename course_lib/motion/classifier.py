"""A small action classifier: the judge of text-to-motion accuracy.

Trained on real (procedurally generated) clips only, it labels the motions the GPT produces
from held-out captions; "did we get a squat when we asked for a squat" becomes a number. It
reads normalised features through a Conv1d stack and averages over time, so any clip length works.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from course_lib.core.checkpoints import config_from, get_entry, load_checkpoint, load_weights
from course_lib.core.sizes import check_build_size
from course_lib.motion.synth import ACTIONS


class ActionClassifier(nn.Module):
    def __init__(self, input_dim: int = 67, width: int = 64, n_classes: int = len(ACTIONS)):
        super().__init__()
        self.config = {"input_dim": input_dim, "width": width, "n_classes": n_classes}
        self.net = nn.Sequential(
            nn.Conv1d(input_dim, width, 5, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2, stride=2), nn.ReLU())
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) normalised features -> logits (B, n_classes); mean and max over time."""
        h = self.net(x.permute(0, 2, 1))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))

    @torch.no_grad()
    def predict(self, feats: list[torch.Tensor]) -> list[str]:
        """Action names for a list of (T, D) normalised feature tensors (clips may differ in length)."""
        return [ACTIONS[int(self(f[None].to(self.head.weight.device)).argmax(-1))] for f in feats]


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ActionClassifier:
    ckpt = load_checkpoint(path, map_location="cpu")
    config = config_from(path, ActionClassifier, get_entry(ckpt, "config", path), build=False)
    check_build_size(path, lambda: ActionClassifier(**config), what="action classifier", config=config)
    model = ActionClassifier(**config)
    load_weights(model, get_entry(ckpt, "state_dict", path), strict=True, path=path)
    return model.eval().to(device)
