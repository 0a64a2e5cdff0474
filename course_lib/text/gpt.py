"""The course's text model: a small LLaMA-style decoder trained on product listings.

Read it top to bottom like nanoGPT: a config dict (`h_params`, the seed's name for it), the
model, and `load_gpt`, which is seed 001's loading recipe — load → rebuild from h_params →
load_state_dict → eval → to(device) — with safe loading and readable errors.

Seeds 001 and 002: the course's source documents, described in notebooks/SOURCES.md#seed-001, notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.caches.kv_cache import KVCache
from course_lib.caches.protocol import KVLayout, KVStep, step_logits
from course_lib.core.checkpoints import CheckpointError, check_state_dict, get_entry, load_checkpoint, load_weights
from course_lib.core.device import pick_device
from course_lib.core.layers import (
    Block,
    RMSNorm,
    attend_mask,
    default_positions,
    init_weights,
    num_params,
    rope_angles,
    run_blocks,
)
from course_lib.core.paths import TEXT_MODEL, display_path
from course_lib.core.sizes import check_build_size, check_counts, decoder_runtime_bytes

# The model stands below generation: it imports no decoding method (beam search, scoring, quantize,
# speculative decoding and the decode loop all import *it*). `course_lib` re-exports them at the top level.
__all__ = ["GPT", "load_gpt", "DEFAULT_H_PARAMS"]

DEFAULT_H_PARAMS = {
    "vocab_size": 100277,  # cl100k_base, special tokens included
    "n_embd": 64,
    "n_layer": 4,
    "n_head": 4,
    "block_size": 512,     # the longest context the model attends over
    "dropout": 0.1,
    "rope_theta": 10000.0,
}
REQUIRED = ("vocab_size", "n_embd", "n_layer", "n_head", "block_size")


def check_h_params(h_params: object) -> None:
    """ValueError naming the key for h_params the model cannot be built from ("32", 3.0, None, n_embd % n_head)."""
    if not isinstance(h_params, Mapping):
        raise ValueError(f"h_params must be a dict, got {type(h_params).__name__}")
    missing = [k for k in REQUIRED if k not in h_params]
    if missing:
        raise ValueError(f"h_params is missing {missing}; it needs at least {list(REQUIRED)}")
    for k in REQUIRED:
        v = h_params[k]
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
            raise ValueError(f"h_params[{k!r}] must be an int >= 1, got {v!r} ({type(v).__name__})")
    hp = {**DEFAULT_H_PARAMS, **h_params}
    if hp["n_embd"] % hp["n_head"] or (hp["n_embd"] // hp["n_head"]) % 2:
        raise ValueError(f"h_params: n_embd {hp['n_embd']} must split into n_head {hp['n_head']} heads of even size (rotary pairs)")
    kv = hp.get("n_kv_head", hp["n_head"])  # optional: absent means plain multi-head attention
    if isinstance(kv, bool) or not isinstance(kv, Integral) or kv < 1 or hp["n_head"] % kv:
        raise ValueError(f"h_params['n_kv_head'] must be an int >= 1 that divides n_head {hp['n_head']}, got {kv!r} "
                         "(leave it out for multi-head attention)")
    d, theta = hp["dropout"], hp["rope_theta"]
    if isinstance(d, bool) or not isinstance(d, Real) or not 0 <= d < 1:
        raise ValueError(f"h_params['dropout'] must be a number in [0, 1), got {d!r}")
    if isinstance(theta, bool) or not isinstance(theta, Real) or not math.isfinite(theta) or theta <= 0:
        raise ValueError(f"h_params['rope_theta'] must be a finite number > 0, got {theta!r}")


class GPT(nn.Module):
    """Token embedding → n_layer causal blocks → RMSNorm → output head tied to the embedding."""

    def __init__(self, h_params: dict):
        super().__init__()
        check_h_params(h_params)
        self.h_params = {**DEFAULT_H_PARAMS, **h_params}
        hp = self.h_params
        self.block_size = hp["block_size"]
        self.head_dim = hp["n_embd"] // hp["n_head"]
        # Grouped-query attention when n_kv_head < n_head; absent (every shipped checkpoint) means n_head.
        self.n_kv_head = int(hp.get("n_kv_head", hp["n_head"]))
        self.tok_emb = nn.Embedding(hp["vocab_size"], hp["n_embd"])
        self.drop = nn.Dropout(hp["dropout"])
        self.blocks = nn.ModuleList(Block(hp["n_embd"], hp["n_head"], hp["dropout"], causal=True, n_kv_head=self.n_kv_head)
                                    for _ in range(hp["n_layer"]))
        self.norm = RMSNorm(hp["n_embd"])
        self.lm_head = nn.Linear(hp["n_embd"], hp["vocab_size"], bias=False)
        # Weight tying: the 100k-row table is most of the model; using it for input and output
        # halves the size and ties "what a token means" to "when to predict it".
        self.lm_head.weight = self.tok_emb.weight
        init_weights(self, hp["n_layer"])

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def num_params(self) -> int:
        """Parameters counted once (the tied head is the embedding)."""
        return num_params(self)

    def hidden_states(self, idx: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None = None,
                      cache: KVStep | None = None) -> torch.Tensor:
        """The one forward path: embed → dropout → blocks (storing keys/values in `cache` if given)
        → final norm. Returns hidden states (B, T, n_embd); callers apply the head where they need it
        (`caches.protocol.step_logits`, a draft's distillation loss, chapter 02's untied head)."""
        rope = rope_angles(position_ids, self.head_dim, self.h_params["rope_theta"])
        x = self.drop(self.tok_emb(idx))
        return self.norm(run_blocks(self.blocks, x, rope, mask, cache))

    def forward(self, idx: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T); with last_only=True only the last position's (B, 1, vocab).

        attention_mask (B, T) marks real tokens with 1 and padding with 0. Without position_ids
        they are derived from it (cumsum - 1), so left-padded rows still start at position 0.
        last_only is nanoGPT's inference form: generation reads only the last row, and the 100k-wide
        head is the costliest matmul, so computing it at every position wastes most of the step.
        """
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}; keep the last {self.block_size} tokens")
        if position_ids is None:
            position_ids = default_positions(B, T, 0, attention_mask, idx.device)
        # No padding: the blocks use SDPA's built-in causal mask; with padding, the same rule as the cache at length 0.
        mask = None if attention_mask is None else attend_mask(T, 0, attention_mask, causal=True)
        h = self.hidden_states(idx, position_ids, mask)
        return self.lm_head(h[:, -1:] if last_only else h)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (targets are idx shifted left by one)."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    # ------------------------------------------------------------------ cached inference
    # The low-level API (chapter 03, gpt-fast style): `infer` runs T new tokens against a KV cache,
    # `prefill` fills a fresh cache with a prompt, `decode_step` feeds one token. Positions are
    # explicit: with a cache the model cannot guess where the new tokens sit.

    def kv_layout(self) -> KVLayout:
        """What every cache kind (`Cache.for_model`) needs to know about this model."""
        return KVLayout(self.h_params["n_layer"], self.n_kv_head, self.head_dim, self.block_size,
                        self.device, self.tok_emb.weight.dtype)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty contiguous cache: (n_layer, B, n_kv_head, max_len, head_dim), max_len = block_size
        (`KVCache.for_model(model, batch_size, max_len)`)."""
        return KVCache.for_model(self, batch_size, max_len)

    def infer(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
              attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """One step over T new tokens (B, T) → (logits (B, T, vocab), cache).

        position_ids (B, T) are required: the new tokens' positions depend on what is already in
        the cache and on each row's padding, which only the caller knows (seed 002's failure).
        attention_mask (B, cache.length + T) marks real tokens (1) and padding (0) over every token
        the cache will hold after this step. cache=None starts a new one (max_len = block_size).
        """
        if position_ids is None:
            raise TypeError("GPT.infer needs position_ids (B, T): the position of every new token, e.g. "
                            "torch.arange(cache.length, cache.length + T)[None] without padding, or "
                            "attention_mask.cumsum(-1) - 1 for left-padded rows; generate() builds them for you")
        B, T = input_ids.shape
        if position_ids.dim() == 1:
            position_ids = position_ids[None].expand(B, T)
        if position_ids.shape != (B, T):
            raise ValueError(f"position_ids must have shape {(B, T)} like input_ids, got {tuple(position_ids.shape)}")
        cache = self.new_cache(B) if cache is None else cache
        mask = None
        if attention_mask is not None or T > 1:  # one unpadded new token may attend to everything cached
            mask = cache.attn_mask(T, attention_mask)
        return step_logits(self, input_ids, position_ids, mask, cache, last_only=False), cache

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Run the whole prompt (B, T) once into an emptied cache; return last-position logits (B, vocab).

        Only the last position's logits are computed: the 100k-wide head is the costliest matmul.
        """
        B, T = idx.shape
        if cache is None or cache.batch_size != B:
            cache = self.new_cache(B)
        cache.reset()  # a new prompt must never see the previous one's keys
        pos = default_positions(B, T, 0, attention_mask, idx.device)
        return step_logits(self, idx, pos, cache.attn_mask(T, attention_mask), cache), cache

    @torch.no_grad()
    def decode_step(self, token: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one new token per row (B, 1); return its logits (B, vocab).

        attention_mask (B, cache.length + 1) covers the cached tokens plus this one; each row's
        position is its count of real tokens minus one (left padding does not shift it).
        """
        B = token.shape[0]
        pos = default_positions(B, 1, cache.length, attention_mask, token.device)
        mask = None if attention_mask is None else cache.attn_mask(1, attention_mask)
        return step_logits(self, token, pos, mask, cache)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None, *, repetition_penalty: float = 1.0,
                 use_cache: bool = True, attention_mask: torch.Tensor | None = None, num_beams: int = 1,
                 length_penalty: float = 1.0, early_stopping: bool | str = False,
                 eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None,
                 pad_token_id: int | None = None) -> torch.Tensor:
        """Append up to max_new_tokens tokens to idx (B, T); temperature=0 is greedy.

        use_cache=False is the simplest correct loop (re-run the whole cropped context for every
        token, the head at the last position only: the fair baseline); the default uses the KV cache (chapter 03) and gives the same greedy tokens.
        See decode.generate_ids for what happens at the context limit.

        eos_token_id (an id or a list) and stop (a string or a list, cl100k_base text) finish a row;
        finished rows are padded with pad_token_id and the loop ends when all are finished.
        num_beams > 1 runs beam search (`course_lib.decoding.beam`, Hugging Face's rules: score = sum of
        log-probs / length ** length_penalty, early_stopping True/False/"never"), deterministic:
        temperature is ignored, top_k/top_p are sampling filters and are rejected.
        """
        # Generation stands above the model: the loop is imported here, when it runs, so that importing the
        # model never imports a decoding method (no import circle, and no tokenizer needed to build a GPT).
        from course_lib.decoding.decode import generate

        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, generator,
                        repetition_penalty=repetition_penalty, use_cache=use_cache, attention_mask=attention_mask,
                        num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                        eos_token_id=eos_token_id, stop=stop, pad_token_id=pad_token_id)


def load_gpt(path: str | Path | None = None, device: str | torch.device = "cpu") -> GPT:
    """Seed 001's recipe: load → rebuild from h_params → load_state_dict → eval() → to(device)."""
    device = pick_device(device if isinstance(device, str) else str(device), verbose=False)  # "cuda" without CUDA: say so
    path = TEXT_MODEL if path is None else Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    hp = get_entry(ckpt, "h_params", path)
    try:
        check_h_params(hp)
        check_gpt_size(path, hp)  # before anything is allocated: refuse absurd sizes with the estimate and the limit
        model = GPT(hp)
    except ValueError as exc:
        raise CheckpointError(f"{display_path(path)}: {exc}; the checkpoint's h_params are damaged, re-create it") from None
    sd = get_entry(ckpt, "model_state_dict", path)
    check_state_dict(sd, path, float_weights=True)
    load_weights(model, sd, strict=True)
    return model.eval().to(device)


def check_gpt_size(path: str | Path, hp: Mapping, extra_bytes: int = 0, what: str = "text GPT") -> int:
    """CheckpointError unless the GPT these (already type-checked) h_params describe fits in MAX_MODEL_BYTES."""
    full = {**DEFAULT_H_PARAMS, **hp}
    check_counts(path, {"n_layer": full["n_layer"]})
    width = full.get("n_kv_head", full["n_head"]) * (full["n_embd"] // full["n_head"])
    runtime = decoder_runtime_bytes(full["n_layer"], full["block_size"], width, full["n_head"], full["vocab_size"])
    shown = {k: full[k] for k in ("vocab_size", "n_embd", "n_layer", "block_size", "target_vocab_size") if k in full}
    return check_build_size(path, lambda: GPT(hp), runtime_bytes=runtime + extra_bytes, what=what, config=shown)
