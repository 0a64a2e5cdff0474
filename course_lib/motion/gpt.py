"""The motion GPT: text features in, motion-code tokens out (T2M-GPT's transformer, on the course's Block).

Sequence layout (the text embedding is the first position):
    position:  0            1      2            n      n+1
    input:     text_emb     c_0    c_1    ...   c_n-1
    predicts:  c_0          c_1    c_2    ...   END
Vocabulary: nb_code motion codes, END = nb_code, PAD = nb_code + 1 (vocab_size = nb_code + 2).
PAD only fills training batches after END: it has an embedding but no output logit, so it can
never be sampled. END is masked at the first step: sampled there it leaves an empty motion,
which crashes the reference decoder.

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.caches.kv_cache import KVCache
from course_lib.caches.protocol import KVLayout
from course_lib.core.checkpoints import config_from, get_entry, load_checkpoint, load_weights, strip_prefix
from course_lib.core.layers import Block, RMSNorm, default_positions, init_weights, rope_angles, run_blocks
from course_lib.core.sizes import check_build_size, check_counts, decoder_runtime_bytes
from course_lib.decoding.decode import stop_check_interval
from course_lib.decoding.sampling import SamplingSettings

# Course presets train on a laptop CPU; the seed's LLaMA sizes are listed as configs only.
PRESETS = {
    "course-tiny": dict(n_layer=2, n_head=4, n_embd=64),
    "course-small": dict(n_layer=3, n_head=4, n_embd=128),
    "44M": dict(n_layer=8, n_head=8, n_embd=512),
    "111M": dict(n_layer=12, n_head=12, n_embd=768),
    "343M": dict(n_layer=24, n_head=16, n_embd=1024),
    "775M": dict(n_layer=36, n_head=20, n_embd=1280),
    "1B": dict(n_layer=48, n_head=24, n_embd=1536),
    "3B": dict(n_layer=24, n_head=32, n_embd=3200),
    "7B": dict(n_layer=36, n_head=32, n_embd=4096),
}


@dataclass
class Config:
    block_size: int = 21      # text + up to 20 codes (80 frames at 4 frames per code)
    vocab_size: int = 258     # nb_code + 2
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    clip_dim: int = 64        # width of the text features (512 for CLIP, 2048 for flan-t5-xl)
    dropout: float = 0.1
    rope_theta: float = 10000.0

    @classmethod
    def from_name(cls, name: str, **overrides) -> Config:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def nb_code(self) -> int:
        return self.vocab_size - 2

    @property
    def end_id(self) -> int:
        return self.vocab_size - 2

    @property
    def pad_id(self) -> int:
        return self.vocab_size - 1


class MotionGPT(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = c = config
        self.head_dim = c.n_embd // c.n_head
        self.cond_emb = nn.Linear(c.clip_dim, c.n_embd)        # text features → the first position
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)    # codes, END and PAD can all be *read*
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, c.dropout, causal=True) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size - 1, bias=False)  # codes + END; PAD is never predicted
        init_weights(self, c.n_layer)

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def _run(self, x: torch.Tensor, start: int, cache: KVCache | None) -> torch.Tensor:
        """Blocks over embeddings x (B, T, C) that sit at positions start..start+T-1."""
        B, T = x.shape[:2]
        rope = rope_angles(default_positions(B, T, start, device=x.device), self.head_dim, self.config.rope_theta)
        return self.head(self.norm(run_blocks(self.blocks, x, rope, None, cache)))

    def forward(self, idx: torch.Tensor, clip_feature: torch.Tensor) -> torch.Tensor:
        """idx (B, T) tokens after the text, clip_feature (B, clip_dim) -> logits (B, T + 1, nb_code + 1)."""
        if idx.shape[1] + 1 > self.config.block_size:
            raise ValueError(f"{idx.shape[1]} tokens + the text position exceed block_size {self.config.block_size}")
        x = torch.cat([self.cond_emb(clip_feature)[:, None], self.tok_emb(idx)], dim=1)
        return self._run(self.drop(x), 0, None)

    def loss(self, idx: torch.Tensor, clip_feature: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over codes and END; PAD targets are ignored."""
        logits = self(idx, clip_feature)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=self.config.pad_id)

    def kv_layout(self) -> KVLayout:
        """What a cache needs to know about this model (`KVCache.for_model`)."""
        c = self.config
        return KVLayout(c.n_layer, c.n_head, self.head_dim, c.block_size, self.device, self.tok_emb.weight.dtype)

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache.for_model(self, batch_size)

    @torch.no_grad()
    def sample(self, clip_feature: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
               max_tokens: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
               trace: list | None = None) -> list[torch.Tensor]:
        """Sample code sequences for a batch of text features; one (n_i,) tensor per row, END removed.

        Each step: logits of the last position → END masked at step 0 → the text model's sampling
        step (`SamplingSettings.sample`, i.e. `sample_next`: temperature, top-k, then multinomial,
        argmax at temperature 0). Rows that produced END stop growing; the loop ends when all rows
        have (asked every step on the CPU, every STOP_CHECK_EVERY steps on a device, where the answer
        makes the host wait) or at max_tokens. With `trace` (a list),
        row 0's top-5 candidates per step (model probabilities before
        temperature/top-k) are appended to it.

        Why not the text models' loop (`decoding.decode.decode_loop`): its runners feed token ids and
        re-prefill a sliding window of tokens, while this model's first position is a text-feature
        embedding, not a token (no window of ids can be re-run past block_size: generation ends at
        block_size - 1 codes instead), and END is a token that must be masked at step 0 only, with
        per-row lengths returned instead of padded ids. What it shares: the cache (`KVCache.for_model`),
        the sampling step (`SamplingSettings.sample`) and the stop-check interval.
        """
        settings = SamplingSettings(temperature, top_k)  # checked once, used every step
        c = self.config
        max_tokens = c.block_size - 1 if max_tokens is None else min(max_tokens, c.block_size - 1)
        B = clip_feature.shape[0]
        cache = self.new_cache(B) if use_cache else None
        tokens = torch.empty(B, 0, dtype=torch.long, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        lengths = torch.full((B,), max_tokens, dtype=torch.long, device=self.device)  # kept on the device
        check_every = stop_check_interval(tokens.device)  # "all rows at END?" makes the host wait: on a GPU, every 8 steps
        logits = self._run(self.cond_emb(clip_feature)[:, None], 0, cache)[:, -1] if use_cache else None
        for step in range(max_tokens):
            if not use_cache:
                logits = self(tokens, clip_feature)[:, -1]
            logits = logits.float().clone()
            if step == 0:
                logits[:, c.end_id] = float("-inf")  # an empty motion is not a motion
            nxt = settings.sample(logits, generator)[:, 0]
            if trace is not None:  # the trace reads row 0 on the host every step: for teaching, not speed
                p = logits[0].softmax(-1)  # the model's own distribution (END already masked at step 0)
                top = torch.topk(p, 5)
                trace.append({"step": step, "chosen": int(nxt[0]), "p_end": round(float(p[c.end_id]), 4),
                              "top5": [(int(i), round(float(v), 4)) for v, i in zip(top.values, top.indices, strict=True)]})
            newly = (nxt == c.end_id) & ~done
            lengths = torch.where(newly, step, lengths)
            done |= newly
            nxt = torch.where(done, torch.full_like(nxt, c.pad_id), nxt)  # finished rows are padded
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if (step + 1) % check_every == 0 and bool(done.all()):  # extra padding-only steps are cut below
                break
            if use_cache:
                logits = self._run(self.tok_emb(nxt[:, None]), cache.length, cache)[:, -1]
        tokens, lengths = tokens.cpu(), lengths.tolist()  # two transfers, once per call
        return [tokens[b, : lengths[b]] for b in range(B)]


def save_trans(model: MotionGPT, extra: dict) -> dict:
    """Seed 004's format: {'trans': state_dict with 'module.' prefixes} plus the config to rebuild it."""
    sd = {f"module.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    return {"trans": sd, "config": asdict(model.config), **extra}


def load_trans(path: str | Path, device: str | torch.device = "cpu") -> MotionGPT:
    """ckpt['trans'] → strip 'module.' → strict load → eval → to(device)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = config_from(path, Config, get_entry(ckpt, "config", path))
    check_counts(path, {"n_layer": config.n_layer})
    runtime = decoder_runtime_bytes(config.n_layer, config.block_size, config.n_embd, config.n_head, config.vocab_size)
    check_build_size(path, lambda: MotionGPT(config), runtime_bytes=runtime, what="motion transformer",
                     config={k: getattr(config, k) for k in ("vocab_size", "n_embd", "n_layer", "block_size")})
    model = MotionGPT(config)
    load_weights(model, strip_prefix(get_entry(ckpt, "trans", path), "module."), strict=True, path=path)
    return model.eval().to(device)
