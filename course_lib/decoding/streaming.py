"""Streaming text out as it is generated, never emitting half a UTF-8 character (chapter 03)."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable

import torch

from course_lib.decoding.decode import encode_prompt, generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE
from course_lib.text.tokenizer import token_bytes


class TextStreamer:
    """Turns tokens into text as they arrive, never emitting half a UTF-8 character.

    cl100k_base is byte-level: one Chinese character or emoji may be split over two or three
    tokens, and a token alone may be an invalid UTF-8 fragment. The streamer holds such bytes
    until they complete a character (an incremental UTF-8 decoder does exactly this), so the
    concatenation of everything it emitted equals `enc.decode(all_tokens)`.
    """

    def __init__(self, enc, on_text: Callable[[str], None] | None = None):
        self.enc = enc
        self.on_text = on_text if on_text is not None else (lambda t: print(t, end="", flush=True))
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # same rule as tiktoken.decode
        self.token_ids: list[int] = []
        self.pieces: list[str] = []  # what was emitted, chunk by chunk

    def put(self, token_ids: int | Iterable[int]) -> str:
        """Feed one or more token ids; emit (and return) the text that is now complete."""
        ids = [token_ids] if isinstance(token_ids, int) else [int(t) for t in token_ids]
        self.token_ids.extend(ids)
        text = self._decoder.decode(b"".join(token_bytes(self.enc, t) for t in ids))
        return self._emit(text)

    def end(self) -> str:
        """Flush: bytes still pending at the end are not a character; emit them as U+FFFD like decode()."""
        return self._emit(self._decoder.decode(b"", final=True))

    @property
    def pending(self) -> bytes:
        """Bytes held back because they do not form a whole character yet."""
        return self._decoder.getstate()[0]

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def _emit(self, text: str) -> str:
        if text:
            self.pieces.append(text)
            self.on_text(text)
        return text


@torch.no_grad()
def generate_stream(model, enc, prompt: str, max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                    top_p: float | None = None, *, repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
                    on_text: Callable[[str], None] | None = None) -> str:
    """Generate from one prompt, handing text to on_text (default: print) as soon as it is complete.
    Returns the generated text (the prompt excluded)."""
    streamer = TextStreamer(enc, on_text)
    x = torch.tensor([encode_prompt(enc, prompt, model.block_size)], dtype=torch.long, device=model.device)
    generate_ids(model, x, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                 generator=generator, on_step=lambda step, logits, adj, nxt: streamer.put(int(nxt[0, 0])))
    streamer.end()
    return streamer.text
