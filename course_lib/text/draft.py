"""The draft model for speculative decoding: a smaller GPT over only the tokens the corpus uses.

Why a reduced vocabulary: the target's cost per step is dominated by its 100,277-row output head,
so a draft with the full vocabulary would cost nearly as much as the target and save nothing. The
listings use a few hundred cl100k tokens; the draft's embedding and head hold just those rows plus
one "other" row (inputs outside the subset map to it; it is never proposed). The draft only
*proposes*: the target verifies every token over the full vocabulary, so a reduced draft can lower
the speed-up but never change the output.

Checkpoint: `{'h_params', 'model_state_dict', 'vocab_ids'}` — the text-model convention plus the
draft-index → cl100k-id map (a long tensor), loaded with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from course_lib.core.checkpoints import CheckpointError, check_state_dict, get_entry, load_checkpoint, load_weights
from course_lib.core.device import pick_device
from course_lib.core.paths import DRAFT_MODEL, display_path
from course_lib.text.gpt import GPT, check_gpt_size, check_h_params


class DraftGPT(GPT):
    """A GPT whose vocabulary is `vocab_ids` (draft index → target id) plus a last "other" row.

    h_params['vocab_size'] = len(vocab_ids) + 1 and h_params['target_vocab_size'] = the target's.
    `to_draft` / `to_target` translate ids; the model itself runs on draft indices.
    """

    def __init__(self, h_params: dict, vocab_ids: torch.Tensor):
        vocab_ids = torch.as_tensor(vocab_ids, dtype=torch.long).flatten()
        tv = h_params.get("target_vocab_size")
        if not isinstance(tv, int) or tv < 1:
            raise ValueError(f"h_params['target_vocab_size'] must be an int >= 1, got {tv!r}")
        if h_params.get("vocab_size") != len(vocab_ids) + 1:
            raise ValueError(f"h_params['vocab_size'] ({h_params.get('vocab_size')}) must be len(vocab_ids) + 1 "
                             f"({len(vocab_ids) + 1}: the subset plus the 'other' row)")
        if len(vocab_ids) == 0 or vocab_ids.min() < 0 or vocab_ids.max() >= tv or len(vocab_ids.unique()) != len(vocab_ids):
            raise ValueError(f"vocab_ids must be distinct ids in [0, {tv}) (the target's vocabulary)")
        super().__init__(h_params)
        self.register_buffer("vocab_ids", vocab_ids.clone(), persistent=False)
        lut = torch.full((tv,), len(vocab_ids), dtype=torch.long)  # everything else → the "other" row
        lut[vocab_ids] = torch.arange(len(vocab_ids))
        self.register_buffer("lut", lut, persistent=False)

    @property
    def other(self) -> int:
        """The draft index of "a token outside the subset": an input only, never proposed."""
        return self.h_params["vocab_size"] - 1

    @property
    def target_vocab_size(self) -> int:
        return self.h_params["target_vocab_size"]

    def to_draft(self, ids: torch.Tensor) -> torch.Tensor:
        """Target (cl100k) ids → draft indices; ids outside the subset become `other`."""
        return self.lut[ids]

    def to_target(self, idx: torch.Tensor) -> torch.Tensor:
        """Draft indices → target ids (`other` is never proposed, so it never reaches here)."""
        return self.vocab_ids[idx]


def load_draft(path: str | Path | None = None, device: str | torch.device = "cpu") -> DraftGPT:
    """The shipped draft (default checkpoints/draft_gpt.pt) in eval mode, like `load_gpt`."""
    device = pick_device(device if isinstance(device, str) else str(device), verbose=False)
    path = DRAFT_MODEL if path is None else Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    vocab_ids = get_entry(ckpt, "vocab_ids", path)
    if not isinstance(vocab_ids, torch.Tensor) or vocab_ids.dtype != torch.long:
        raise CheckpointError(f"{display_path(path)}: 'vocab_ids' must be a long tensor (draft index → target id); re-create it")
    hp = get_entry(ckpt, "h_params", path)
    try:
        check_h_params(hp)
        tv = hp.get("target_vocab_size")
        if isinstance(tv, bool) or not isinstance(tv, int) or tv < 1:
            raise ValueError(f"h_params['target_vocab_size'] must be an int >= 1, got {tv!r}")
        # the draft's table target id -> draft index holds target_vocab_size longs (8 bytes each)
        check_gpt_size(path, hp, extra_bytes=8 * tv, what="draft GPT")
        model = DraftGPT(hp, vocab_ids)
    except ValueError as exc:
        raise CheckpointError(f"{display_path(path)}: {exc}; re-create the draft checkpoint") from None
    sd = get_entry(ckpt, "model_state_dict", path)
    check_state_dict(sd, path, float_weights=True)
    load_weights(model, sd, strict=True, path=path)
    return model.eval().to(device)
