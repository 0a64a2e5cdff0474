"""Turning logits into the next token, and the decode loop built on it.

The order and semantics follow the Hugging Face logits processors (repetition penalty →
temperature → top-k → top-p): top-k keeps every token tied with the k-th largest logit, top-p
always keeps at least one token, and removed entries become -inf so a softmax gives them exactly
zero probability. Unlike Hugging Face, temperature=0 is allowed and means greedy (argmax), the
behaviour students expect and a common crash elsewhere (division by zero, NaN in multinomial).

The rest of the module is what chapter 02-03 build on top of one sampling step:
`generate_ids` (the loop, with or without a KV cache), `generate_with_trace` (every step's
candidates, seed 001's teaching device), `TextStreamer` (UTF-8-safe streaming) and
`generate_batch` (left-padded prompts with an attention mask and per-row positions).
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .tokenizer import show_token

# --------------------------------------------------------------------- one sampling step


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        max_new_tokens: int | None = None, repetition_penalty: float = 1.0) -> None:
    """Raise ValueError naming the argument and its allowed range."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature != temperature or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if (isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, (int, float))
            or not repetition_penalty > 0 or repetition_penalty == float("inf")):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0 = off, > 1 discourages repeats), "
                         f"got {repetition_penalty!r}")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Apply temperature → top-k → top-p to (..., vocab) logits; removed entries are -inf."""
    check_sampling_args(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:  # greedy: keep only the (first) argmax
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
        return logits.masked_fill(~keep, float("-inf"))
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th value survive
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1)  # ascending
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1:] = False  # the most likely token always stays
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float,
                             context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hugging Face's rule (CTRL paper): every token already in the context gets its logit
    divided by `penalty` if positive, multiplied if negative, so it always becomes less likely.

    logits (B, vocab), context (B, T) token ids; context_mask (B, T) marks real tokens (padding is
    not "already said"). A token counts once however often it appeared.
    """
    check_sampling_args(repetition_penalty=penalty)
    logits = logits.float()
    if penalty == 1.0 or context.numel() == 0:
        return logits
    weight = torch.ones_like(context, dtype=logits.dtype) if context_mask is None else context_mask.to(logits.dtype)
    seen = torch.zeros_like(logits).scatter_add_(-1, context, weight) > 0
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab)."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    if temperature == 0:
        return filtered.argmax(-1, keepdim=True)
    probs = filtered.softmax(-1)
    if generator is not None and generator.device != probs.device:
        # A CPU generator keeps samples reproducible across devices: draw on the CPU.
        return torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)


# ------------------------------------------------------------------------- safe decoding


def token_bytes_safe(enc, token_id: int) -> bytes:
    """Bytes of one token; b"" for the few ids cl100k_base leaves unassigned (100256, 100261-100275).

    The model's head has a row for every id up to vocab_size, so sampling can pick one of them
    (an untrained row, rarely): decoding must not crash on it."""
    try:
        return enc.decode_single_token_bytes(int(token_id))
    except KeyError:
        return b""


def decode_ids(enc, ids: Iterable[int]) -> str:
    """Like enc.decode (invalid UTF-8 becomes U+FFFD) but skipping unassigned ids instead of raising."""
    return b"".join(token_bytes_safe(enc, i) for i in ids).decode("utf-8", errors="replace")


def token_label(enc, token_id: int) -> str:
    """show_token, or <unused id N> for an unassigned id."""
    try:
        return show_token(enc, int(token_id))
    except KeyError:
        return f"<unused id {int(token_id)}>"


# ------------------------------------------------------------------------------ prompts


def encode_prompt(enc, prompt: str, block_size: int) -> list[int]:
    """Token ids for one prompt, always usable by the model.

    An empty prompt starts from <|endoftext|> (the token every training document starts with),
    so the model samples a line from scratch instead of failing on a (1, 0) tensor. A prompt
    longer than the context keeps its last `block_size` tokens, with a warning: the model cannot
    attend further back anyway, and an index error would teach nothing.
    """
    ids = enc.encode(prompt) if prompt else [enc.eot_token]
    if len(ids) > block_size:
        warnings.warn(f"prompt has {len(ids)} tokens but the context holds {block_size}: "
                      f"keeping the last {block_size} tokens", stacklevel=2)
        ids = ids[-block_size:]
    return ids


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per line (seed 003's batch mode); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path.name} (expected a text file with one prompt per line)")
    prompts = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [p for p in prompts if p.strip()]


# ------------------------------------------------------------------------ the decode loop

StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def generate_ids(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
                 use_cache: bool = True, attention_mask: torch.Tensor | None = None,
                 on_step: StepHook | None = None, stop_when: Callable[[torch.Tensor], bool] | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T) and return (B, T + max_new_tokens).

    use_cache=False is the plain loop: re-run the last block_size tokens for every new token.
    use_cache=True prefills the prompt once, then feeds one token per step (KV cache). When the
    sequence grows past block_size the window slides, every position changes, and cached keys are
    stale; the cached path then re-prefills the last block_size tokens each step, which is exactly
    what the plain loop computes (so greedy output stays token-exact, with no speed-up there).

    attention_mask (B, T) marks real tokens with 1 (0 = left padding). on_step(step, logits,
    adjusted, next_ids) sees the raw last-position logits, the logits after the repetition
    penalty, and the chosen ids (B, 1): the trace and the streamer hook in here. stop_when(next_ids)
    returning True ends the loop early (then fewer than max_new_tokens tokens are appended).
    """
    check_sampling_args(temperature, top_k, top_p, max_new_tokens, repetition_penalty)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (batch, T) with T >= 1, got shape {tuple(idx.shape)}; "
                         "an empty prompt should start from the <|endoftext|> token (see encode_prompt)")
    block = model.block_size
    if idx.shape[1] > block:
        warnings.warn(f"context of {idx.shape[1]} tokens is longer than block_size {block}: "
                      f"the model sees only the last {block}", stacklevel=2)
    mask = None if attention_mask is None else attention_mask.to(idx.device).long()
    cache = None
    for step in range(max_new_tokens):
        window = idx[:, -block:]
        wmask = None if mask is None else mask[:, -block:]
        if not use_cache:
            logits = model(window, attention_mask=wmask)[:, -1, :]
        elif cache is None or idx.shape[1] > block:  # first step, or the window slid: (re)prefill
            logits, cache = model.prefill(window, attention_mask=wmask, cache=cache)
        else:  # the usual step: one token in, the cache holds everything before it
            logits = model.decode_step(idx[:, -1:], cache, attention_mask=wmask)
        adjusted = logits
        if repetition_penalty != 1.0:
            adjusted = apply_repetition_penalty(logits, window, repetition_penalty, wmask)
        nxt = sample_next(adjusted, temperature, top_k, top_p, generator)
        if on_step is not None:
            on_step(step, logits, adjusted, nxt)
        idx = torch.cat([idx, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if stop_when is not None and stop_when(nxt):
            break
    return idx


# ----------------------------------------------------------------------------- the trace


@dataclass
class Candidate:
    token_id: int
    token: str          # show_token: text, or <e5 86> for a partial UTF-8 character
    prob: float         # model probability (softmax of the raw logits)
    prob_filtered: float  # after penalty, temperature, top-k, top-p (what was actually sampled from)


@dataclass
class TraceStep:
    step: int
    candidates: list[Candidate]
    chosen_id: int
    chosen: str
    chosen_prob_filtered: float
    text: str           # the generated text so far; bytes of an unfinished character shown as <..>


@dataclass
class Trace:
    prompt: str
    settings: dict
    steps: list[TraceStep] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # prompt + generated

    def generated_ids(self) -> list[int]:
        return [s.chosen_id for s in self.steps]


def _visible_text(enc, ids: list[int]) -> str:
    """Decode ids; trailing bytes that are not yet a whole character are shown as <xx ..>."""
    raw = b"".join(token_bytes_safe(enc, i) for i in ids)
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):  # an unfinished character is at most 3 bytes
        try:
            text = raw[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        tail = raw[cut:]
        return text + ("<" + " ".join(f"{b:02x}" for b in tail) + ">" if tail else "")
    return raw.decode("utf-8", errors="replace")


@torch.no_grad()
def generate_with_trace(model, enc, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, *, repetition_penalty: float = 1.0,
                        generator: torch.Generator | None = None, n_candidates: int = 5) -> Trace:
    """Generate from one prompt and record every step: the n most likely tokens with their
    probability before and after filtering, the chosen token, and the text so far."""
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 1:
        raise ValueError(f"n_candidates must be an int >= 1, got {n_candidates!r}")
    ids = encode_prompt(enc, prompt, model.block_size)
    trace = Trace(prompt, dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty))
    generated: list[int] = []

    def record(step: int, logits: torch.Tensor, adjusted: torch.Tensor, nxt: torch.Tensor) -> None:
        before = logits[0].float().softmax(-1)
        after = filter_logits(adjusted[0:1], temperature, top_k, top_p)[0].softmax(-1)
        top = torch.topk(before, min(n_candidates, before.numel()))
        cands = [Candidate(int(i), token_label(enc, int(i)), float(p), float(after[i])) for p, i in zip(top.values, top.indices, strict=True)]
        chosen = int(nxt[0, 0])
        generated.append(chosen)
        trace.steps.append(TraceStep(step + 1, cands, chosen, token_label(enc, chosen), float(after[chosen]),
                                     _visible_text(enc, generated)))

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    out = generate_ids(model, x, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                       generator=generator, on_step=record)
    trace.token_ids = out[0].tolist()
    return trace


def format_trace(trace: Trace, digits: int = 2, show_text: bool = True) -> str:
    """Seed 001's printout, one block per step:

    Step 3 candidates: '天'(0.61→0.83)  '纯'(0.22→0.17) ... → chosen '天'
    """
    s = trace.settings
    lines = [f"Prompt {trace.prompt!r}  (temperature={s['temperature']}, top_k={s['top_k']}, top_p={s['top_p']}, "
             f"repetition_penalty={s['repetition_penalty']}); probabilities shown as model→after filtering"]
    for st in trace.steps:
        cands = "  ".join(f"{c.token!r}({c.prob:.{digits}f}→{c.prob_filtered:.{digits}f})" for c in st.candidates)
        listed = any(c.token_id == st.chosen_id for c in st.candidates)
        extra = "" if listed else f" (outside the top {len(st.candidates)}, p={st.chosen_prob_filtered:.{digits}f})"
        lines.append(f"Step {st.step} candidates: {cands} → chosen {st.chosen!r}{extra}")
        if show_text:
            lines.append(f"        text so far: {st.text!r}")
    return "\n".join(lines)


def print_trace(trace: Trace, digits: int = 2, show_text: bool = True) -> None:
    print(format_trace(trace, digits, show_text))


# ----------------------------------------------------------------------------- streaming


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
        text = self._decoder.decode(b"".join(token_bytes_safe(self.enc, t) for t in ids))
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
def generate_stream(model, enc, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
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


# ------------------------------------------------------------------------------ batching


def pad_batch(enc, prompts: Sequence[str], block_size: int, side: str = "left",
              pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) and attention mask (B, T) for prompts of different lengths.

    side="left" puts the padding before each prompt so every row's last column is its last real
    token: the next token of every row is read from the same column. side="right" exists to show
    why that is wrong for generation (the last column of a short row is padding).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    pad_id = enc.eot_token if pad_id is None else pad_id
    rows = [encode_prompt(enc, p, block_size) for p in prompts]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions for a left-padded batch: each row's first real token is position 0.
    Padding gets 0 too (a dummy: it is masked out and never read)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate_batch(model, enc, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, *, repetition_penalty: float = 1.0,
                   generator: torch.Generator | None = None, batch_size: int = 16, use_cache: bool = True,
                   stop: str | None = None, progress: bool = False) -> list[str]:
    """Completions (new text only) for many prompts, batch_size prompts per forward pass.

    Prompts are left-padded with an attention mask; positions come from the mask, so each row's
    greedy output equals running that prompt alone. `stop` cuts each completion at the first
    occurrence of that string (e.g. "\\n" for one listing). progress shows a tqdm bar over prompts.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string; wrap it: [prompt]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    check_sampling_args(temperature, top_k, top_p, max_new_tokens, repetition_penalty)
    from tqdm.auto import tqdm  # imported here: only the batch path needs it

    out: list[str] = []
    with tqdm(total=len(prompts), disable=not progress, desc="prompts") as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            ids, mask = pad_batch(enc, chunk, model.block_size, side="left")
            ids, mask = ids.to(model.device), mask.to(model.device)
            done = torch.zeros(len(chunk), dtype=torch.bool)

            def all_stopped(nxt: torch.Tensor, done: torch.Tensor = done) -> bool:  # every row has produced the stop string: stop early
                done.logical_or_(torch.tensor([stop.encode() in token_bytes_safe(enc, t) for t in nxt[:, 0].tolist()]))
                return bool(done.all())

            full = generate_ids(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                                generator=generator, use_cache=use_cache, attention_mask=mask,
                                stop_when=all_stopped if stop else None)
            for row in full[:, ids.shape[1]:].tolist():
                text = decode_ids(enc, row)
                out.append(text.split(stop)[0] if stop else text)
            bar.update(len(chunk))
    return out


# --------------------------------------------------------------------- measuring samples


@torch.no_grad()
def next_token_logits(model, enc, prompt: str) -> torch.Tensor:
    """The model's raw logits (vocab,) for the token after `prompt`."""
    x = torch.tensor([encode_prompt(enc, prompt, model.block_size)], dtype=torch.long, device=model.device)
    return model(x)[0, -1].float()


@torch.no_grad()
def sample_lines(model, enc, prompts: Sequence[str], n_per_prompt: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, repetition_penalty: float = 1.0, max_new_tokens: int = 36,
                 seed: int = 0, batch_size: int = 64) -> list[str]:
    """n_per_prompt sampled first lines (prompt included) per prompt, reproducible from seed."""
    gen = torch.Generator().manual_seed(seed)
    many = [p for p in prompts for _ in range(n_per_prompt)]
    comps = generate_batch(model, enc, many, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                           generator=gen, batch_size=batch_size, stop="\n")
    return [p + c for p, c in zip(many, comps, strict=True)]


def quality_and_diversity(lines: Sequence[str], is_good: Callable[[str], bool]) -> dict:
    """Well-formed rate (grammar check) and distinct rate (unique lines / lines) of samples."""
    n = len(lines)
    if n == 0:
        raise ValueError("no lines to measure")
    return {"n": n, "well_formed": sum(map(is_good, lines)) / n, "distinct": len(set(lines)) / n}
