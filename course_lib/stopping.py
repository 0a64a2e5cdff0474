"""When generation stops: end-of-sequence ids and stop strings (chapter 02).

A model never decides to stop; the loop does. Two rules, as in Hugging Face `generate`:

- `eos_token_id` (one id or several): a row is finished once it has produced one of them;
- `stop` strings: a row is finished once its generated text contains one. A stop string may span
  several tokens (with a byte-level tokenizer even half a character per token), so the check runs
  on the row's generated *bytes*, never on single tokens: "\\n\\n" produced as "\\n" + "\\n" still stops.

`StopCriteria` tracks which rows of a batch are finished; the decode loop makes finished rows emit
padding and ends when every row is done. `finished_text` turns a row's ids into the text a user
sees: everything before the first eos id or stop string, so the emitted text never contains a stop
string or the part of one that an earlier token produced. `safe_to_emit` is the streaming form:
hold back a tail that could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .tokenizer import token_bytes


def check_stopping_args(eos_token_id: int | Sequence[int] | None = None,
                        stop: str | Sequence[str] | None = None) -> tuple[list[int], list[str]]:
    """Normalise eos_token_id and stop to lists; raise ValueError naming the bad argument."""
    if eos_token_id is None:
        eos = []
    elif isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool):
        eos = [eos_token_id]
    elif (isinstance(eos_token_id, (list, tuple)) and eos_token_id
          and all(isinstance(i, int) and not isinstance(i, bool) for i in eos_token_id)):
        eos = list(eos_token_id)
    else:
        raise ValueError(f"eos_token_id must be None, an int or a non-empty list of ints, got {eos_token_id!r}")
    if any(i < 0 for i in eos):
        raise ValueError(f"eos_token_id must be token ids >= 0, got {eos_token_id!r}")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise ValueError(f"stop must be None, a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stops):
        raise ValueError("stop must not contain an empty string: it would match before the first token "
                         "(use None for no stop string)")
    return eos, stops


class StopCriteria:
    """Which rows of a batch are finished, updated once per generated token.

    eos ids are checked on the device; stop strings need each new token's bytes on the host (one
    small transfer per step, only when stop strings are given).
    """

    def __init__(self, batch_size: int, eos_token_id=None, stop=None, enc=None, device="cpu"):
        self.eos, stops = check_stopping_args(eos_token_id, stop)
        if stops and enc is None:
            raise ValueError("stop strings need the tokenizer (enc=...) to turn tokens into text")
        self.enc = enc
        self.stops = [s.encode("utf-8") for s in stops]
        self.eos_ids = torch.tensor(self.eos, dtype=torch.long, device=device)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.generated = [bytearray() for _ in range(batch_size)]  # only filled when stop strings are used

    @property
    def active(self) -> bool:
        """True when there is anything to check (no eos and no stop: never finishes early)."""
        return bool(self.eos or self.stops)

    def update(self, nxt: torch.Tensor) -> torch.Tensor:
        """nxt (B, 1): this step's tokens (finished rows already replaced by padding). Returns done (B,)."""
        was_done = self.done.clone()
        if self.eos:
            self.done |= torch.isin(nxt[:, 0], self.eos_ids)
        if self.stops:
            hits = []
            for row, (tok, finished) in enumerate(zip(nxt[:, 0].tolist(), was_done.tolist(), strict=True)):
                if finished:
                    hits.append(False)
                    continue
                buf = self.generated[row]
                start = max(0, len(buf) - max(len(s) for s in self.stops) + 1)  # a stop may start in earlier bytes
                buf += token_bytes(self.enc, tok)
                hits.append(any(buf.find(s, start) >= 0 for s in self.stops))
            self.done |= torch.tensor(hits, dtype=torch.bool, device=self.done.device)
        return self.done


def finished_text(enc, ids: Sequence[int], eos_token_id=None, stop=None) -> str:
    """The text of generated ids up to (not including) the first eos id or the first stop string.

    Cutting happens on bytes, so a stop string that began inside an earlier token leaves no trace.
    """
    eos, stops = check_stopping_args(eos_token_id, stop)
    ids = list(ids)
    for i, t in enumerate(ids):
        if t in eos:
            ids = ids[:i]
            break
    data = b"".join(token_bytes(enc, t) for t in ids)
    cuts = [data.find(s.encode("utf-8")) for s in stops]
    cuts = [c for c in cuts if c >= 0]
    if cuts:
        data = data[:min(cuts)]
    return data.decode("utf-8", errors="replace")


def safe_to_emit(text: str, stop: str | Sequence[str]) -> tuple[str, str]:
    """Split streamed text into (emit now, hold back): the held-back tail is the longest suffix that
    is the start of a stop string, since the next token may complete it (then it must never show)."""
    _, stops = check_stopping_args(None, stop)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            return text[:i], ""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return text[:len(text) - hold], text[len(text) - hold:]
