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

import functools
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch

from course_lib.text.tokenizer import get_encoding, token_bytes


def stop_encoding(stop, enc):
    """The tokenizer that stop strings are matched with: `enc`, else the course model's cl100k_base
    (stop strings are text, the loop sees ids). Only loaded when there are stop strings."""
    return get_encoding() if stop is not None and enc is None else enc


def default_pad_id(pad_token_id: int | None, eos: Sequence[int], enc) -> int:
    """What a finished row is padded with unless told: the first eos id, else <|endoftext|> (0 without a
    tokenizer). The decode loop, beam search and speculative decoding all pad this way."""
    if pad_token_id is not None:
        return pad_token_id
    return eos[0] if eos else (enc.eot_token if enc is not None else 0)


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


@functools.lru_cache(maxsize=8)
def _byte_automaton(stops: tuple[bytes, ...]) -> np.ndarray:
    """The byte-level matcher of several stop strings: Aho-Corasick as a full (states, 256) int32 table.

    States are the nodes of the trie of the stop strings (state 0 = nothing matched yet): after
    reading some bytes, the state is the longest suffix of them that is a prefix of a stop string.
    The last state, ACCEPT, means a stop string occurred somewhere; it never leaves. Every move into
    a node that ends a stop string, or whose suffixes do (its failure links), goes to ACCEPT.

    Built in breadth-first order, each node copying the row of its failure link (the longest proper
    suffix that is also a node) and overriding its own children: time and memory linear in the total
    length of the stop strings (256 entries per byte), where trying every suffix of every prefix
    grew with its cube (400 characters took seconds, 1,000 over a minute).
    """
    children: list[dict[int, int]] = [{}]
    ends = [False]
    for stop in stops:  # the trie
        u = 0
        for b in stop:
            v = children[u].get(b)
            if v is None:
                v = children[u][b] = len(children)
                children.append({})
                ends.append(False)
            u = v
        ends[u] = True
    n = len(children)
    accept = n
    table = np.zeros((n + 1, 256), dtype=np.int32)
    fail = np.zeros(n, dtype=np.int64)
    out = np.array([*ends, True])  # out[u]: reading up to u completes some stop string
    queue = deque([0])
    while queue:
        u = queue.popleft()
        if u:
            table[u] = table[fail[u]]  # a byte with no child falls back as from the longest suffix
        for b, v in children[u].items():
            fail[v] = table[fail[u], b] if u else 0  # fail[u] is shallower: its row is complete
            out[v] |= out[fail[v]]
            table[u, b] = v
            queue.append(v)
    table = np.where(out[table], accept, table).astype(np.int32)
    table[accept] = accept
    table.flags.writeable = False  # shared through the cache
    return table


@functools.lru_cache(maxsize=2)
def _token_bytes_matrix(enc) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every token's bytes as rows of a (V, longest) uint8 matrix, sorted longest first, plus the
    lengths (sorted) and the order (row r is token order[r]); unassigned ids have length 0."""
    raw = [token_bytes(enc, i) for i in range(enc.n_vocab)]
    lengths = torch.tensor([len(b) for b in raw])
    lengths, order = lengths.sort(descending=True, stable=True)
    flat = torch.frombuffer(bytearray(b"".join(raw[i] for i in order.tolist())), dtype=torch.uint8)
    rows = torch.repeat_interleave(torch.arange(len(raw)), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(flat.numel()) - torch.repeat_interleave(starts, lengths)
    matrix = torch.zeros(len(raw), int(lengths[0]), dtype=torch.uint8)
    matrix[rows, cols] = flat
    return matrix, lengths, order


@functools.lru_cache(maxsize=8)
def stop_table(enc, stops: tuple[bytes, ...], device: str = "cpu") -> torch.Tensor:
    """(states, V) int32: the matcher's state after reading token t's bytes from state s.

    Built once per tokenizer, stop strings and device (all V tokens advanced through the byte table
    together, one byte column at a time), then a decode step is a single gather on the device:
    state = table[state, token]. The last state means "a stop string occurred".
    """
    trans = torch.from_numpy(_byte_automaton(stops).astype(np.int64)).view(-1)  # flat: entry state * 256 + byte
    matrix, lengths, order = _token_bytes_matrix(enc)
    n, V = trans.numel() // 256, matrix.shape[0]
    state = torch.arange(n)[:, None].expand(n, V).contiguous()  # every start state, every token
    have = torch.bincount(lengths, minlength=matrix.shape[1] + 1).flip(0).cumsum(0).flip(0).tolist()  # have[m]: tokens of >= m bytes
    for j in range(matrix.shape[1]):
        k = have[j + 1]  # rows are sorted longest first: the first k tokens have a j-th byte
        state[:, :k] = trans[state[:, :k] * 256 + matrix[:k, j]]
    table = torch.empty_like(state)
    table[:, order] = state
    return table.to(torch.int32).to(device)


# The per-token table costs states x vocabulary entries (64 x 100277 int32: 26 MB) and as many byte
# steps to build; past this many matcher states (stop strings of about 64 bytes in all) the matcher
# walks each new token's bytes through the byte table on the host instead.
MAX_TABLE_STATES = 64


class StopCriteria:
    """Which rows of a batch are finished, updated once per generated token.

    eos ids: `isin` on the device. Stop strings: each row carries the state of a byte-level matcher
    (`_byte_automaton`), so a stop string split across tokens (even across the bytes of one
    character) still finishes the row. For short stop strings (at most MAX_TABLE_STATES states) the
    matcher is compiled per token (`stop_table`) and a step is one gather that never leaves the
    device; longer ones (a table of states x vocabulary entries would not fit: 10,000 characters
    give 10^9) walk the new tokens' bytes on the host, one sync per step. Both give the same states.
    Where the text must be cut is decided on the host once, at the end (`finished_text`).
    """

    def __init__(self, batch_size: int, eos_token_id=None, stop=None, enc=None, device="cpu",
                 per_token_table: bool | None = None):
        self.eos, stops = check_stopping_args(eos_token_id, stop)
        if stops and enc is None:
            raise ValueError("stop strings need the tokenizer (enc=...) to turn tokens into text")
        self.enc = enc
        self.stops = [s.encode("utf-8") for s in stops]
        self.eos_ids = torch.tensor(self.eos, dtype=torch.long, device=device)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.table = None
        if self.stops:
            key = tuple(self.stops)
            self.bytes_table = _byte_automaton(key)  # (states, 256), on the host
            self.accept = self.bytes_table.shape[0] - 1
            if per_token_table is None:  # None: chosen by size; True/False force a path (tests compare them)
                per_token_table = self.bytes_table.shape[0] <= MAX_TABLE_STATES
            if per_token_table:
                self.table = stop_table(enc, key, str(torch.device(device)))
            self.state = torch.zeros(batch_size, dtype=torch.long, device=device)  # nothing matched yet

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
            tok = nxt[:, 0]
            moved = self._walk_bytes(tok) if self.table is None else self._gather(tok)
            V = self.enc.n_vocab
            known = (tok >= 0) & (tok < V)  # an id past the tokenizer's vocabulary has no bytes
            self.state = torch.where(known & ~was_done, moved, self.state)  # finished rows stay as they were
            self.done |= self.state == self.accept
        return self.done

    def _gather(self, tok: torch.Tensor) -> torch.Tensor:
        return self.table[self.state, tok.clamp(0, self.table.shape[1] - 1)].long()

    def _walk_bytes(self, tok: torch.Tensor) -> torch.Tensor:
        """Each row's state after its token's bytes, byte by byte through the byte table (on the host)."""
        moved = []
        for s, t in zip(self.state.tolist(), tok.tolist(), strict=True):
            data = token_bytes(self.enc, t) if 0 <= t < self.enc.n_vocab else b""
            for b in data:
                if s == self.accept:
                    break
                s = int(self.bytes_table[s, b])
            moved.append(s)
        return torch.tensor(moved, dtype=torch.long, device=self.state.device)


def completes_stop(enc, text_so_far: bytes, token: int, stops: Sequence[bytes]) -> bool:
    """Does appending `token` to a generated text that holds no stop string yet complete one? Only a
    match ending inside the new token's bytes is new, so only the last len(stop) - 1 bytes before it
    are searched (beam search asks this for each candidate extension)."""
    new = enc.decode_bytes([token])
    return any(s in text_so_far[-(len(s) - 1):] + new if len(s) > 1 else s in new for s in stops)


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
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:  # cut at the earliest stop string in the text, whatever its place in the list (as finished_text)
        return text[:min(found)], ""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return text[:len(text) - hold], text[len(text) - hold:]
