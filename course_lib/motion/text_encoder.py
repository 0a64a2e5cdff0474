"""A small text encoder for motion captions, trained by this project and frozen at inference.

T2M-GPT conditions on CLIP ViT-B/32 text features (clip_dim 512); seed 004 swaps in
flan-t5-xl (clip_dim 2048). Neither fits this course's offline, CPU-only budget, so the
course ships its own: word ids → embeddings → 2 bidirectional blocks (the course's shared
`Block`, causal=False) → masked mean pool → RMSNorm. Its width *is* `clip_dim`; the motion
GPT only ever sees the (B, clip_dim) vector, so any encoder with that interface plugs in.

Plugging in CLIP or T5 where they are available (files already on disk, never downloaded):
    tok = T5Tokenizer.from_pretrained(DIR, local_files_only=True)
    enc = T5EncoderModel.from_pretrained(DIR, local_files_only=True).eval().requires_grad_(False)
    feat = enc(**tok(texts, return_tensors="pt", padding=True)).last_hidden_state.mean(1)  # clip_dim = 2048
    (CLIP: clip.load(PATH)[0].encode_text(clip.tokenize(texts)).float(); clip_dim = 512)
then set Config.clip_dim to that width and retrain the GPT (its first layer reads clip_dim numbers).

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from course_lib.core.checkpoints import CheckpointError, get_entry, load_checkpoint, load_weights
from course_lib.core.layers import Block, RMSNorm, padding_mask, rope_angles
from course_lib.core.paths import display_path
from course_lib.core.sizes import check_build_size, check_counts

PAD_ID, UNK_ID = 0, 1
MAX_WORDS = 16


def words(text: str) -> list[str]:
    """The words the encoder reads: lower-case [a-z]+ runs; everything else is dropped."""
    return re.findall(r"[a-z]+", text.lower())


def _unreadable(chunk: str) -> bool:
    """A chunk with letters or digits outside a-z (一个人向前走, café, 2): `words()` drops or mangles it."""
    return any(ch.isalnum() and not ("a" <= ch <= "z") for ch in chunk)


class WordTokenizer:
    """Whole words from a fixed vocabulary; anything else is <unk> (the encoder never sees raw bytes)."""

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, texts: list[str]) -> WordTokenizer:
        return cls(["<pad>", "<unk>"] + sorted({w for t in texts for w in words(t)}))

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, UNK_ID) for w in words(text)][:MAX_WORDS]

    def unknown_words(self, text: str) -> list[str]:
        """Words the encoder cannot read, in order: [a-z] words outside the vocabulary and chunks in other scripts or digits."""
        out = []
        for chunk in text.lower().split():
            if _unreadable(chunk):
                out.append(chunk.strip(".,;:!?\"'()[]{}"))
            else:
                out += [w for w in words(chunk) if w not in self.index]
        return out

    def known_words(self, text: str) -> list[str]:
        """The words that reach the encoder as themselves (not <unk>); none means the prompt carries no meaning."""
        return [w for w in words(text) if w in self.index]

    def batch(self, texts: list[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) padded to the longest text; an empty text becomes a single <unk>."""
        ids = [self.encode(t) or [UNK_ID] for t in texts]
        T = max(len(i) for i in ids)
        out = torch.full((len(ids), T), PAD_ID, dtype=torch.long)
        for r, i in enumerate(ids):
            out[r, : len(i)] = torch.tensor(i)
        return out.to(device), (out != PAD_ID).long().to(device)


class TextEncoder(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.dim, self.head_dim = c["clip_dim"], c["clip_dim"] // c["n_head"]
        self.emb = nn.Embedding(c["vocab_size"], c["clip_dim"])
        self.blocks = nn.ModuleList(Block(c["clip_dim"], c["n_head"], c.get("dropout", 0.0), causal=False) for _ in range(c["n_layer"]))
        self.norm = RMSNorm(c["clip_dim"])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, T) -> sentence features (B, clip_dim)."""
        B, T = ids.shape
        rope = rope_angles(torch.arange(T, device=ids.device), self.head_dim)
        attn = padding_mask(mask, causal=False)
        x = self.emb(ids)
        for blk in self.blocks:
            x = blk(x, rope, attn)
        m = mask[..., None].float()
        return self.norm((x * m).sum(1) / m.sum(1).clamp(min=1))


class FrozenTextEncoder:
    """Tokenizer + encoder in eval mode with requires_grad False: text in, (B, clip_dim) features out."""

    def __init__(self, tokenizer: WordTokenizer, model: TextEncoder):
        self.tokenizer, self.model = tokenizer, model.eval()
        for p in self.model.parameters():
            p.requires_grad = False  # frozen: the GPT was trained on exactly these features
        self.clip_dim = model.dim

    @property
    def device(self) -> torch.device:
        return self.model.emb.weight.device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenizer.batch(texts, self.device)
        return self.model(ids, mask)


def load_text_encoder(path: str | Path, device: str | torch.device = "cpu") -> FrozenTextEncoder:
    """From local files only: {'vocab', 'config', 'state_dict'} → frozen encoder on device."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = get_entry(ckpt, "config", path)
    if not isinstance(config, dict) or not all(isinstance(config.get(k), int) for k in ("vocab_size", "clip_dim", "n_head", "n_layer")):
        raise CheckpointError(f"{display_path(path)}: 'config' must be a dict with int vocab_size, clip_dim, n_head, n_layer; "
                              "re-create the checkpoint")
    check_counts(path, {"n_layer": config["n_layer"]})
    check_build_size(path, lambda: TextEncoder(config), what="text encoder",
                     config={k: config[k] for k in ("vocab_size", "clip_dim", "n_layer")})
    model = TextEncoder(config)
    load_weights(model, get_entry(ckpt, "state_dict", path), strict=True, path=path)
    return FrozenTextEncoder(WordTokenizer(get_entry(ckpt, "vocab", path)), model.to(device))
