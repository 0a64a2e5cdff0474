"""Traced generation (seed 001's teaching device): every step's top candidates, before and after filtering.

`generate_with_trace` runs the ordinary decode loop with an `on_step` hook that records, per step,
the n most likely tokens with the model's probability and the probability after penalty,
temperature, top-k and top-p, the chosen token and the text so far. `format_trace` prints it
the way seed 001 does.

Seed 001 is one of the course's source documents: notebooks/SOURCES.md#seed-001.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from course_lib.core.checks import check_int
from course_lib.decoding.decode import encode_prompt, generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings
from course_lib.text.tokenizer import show_token, token_bytes


@dataclass
class TokenCandidate:
    """One of the most likely next tokens at a step of a generation trace."""

    token_id: int
    token: str          # show_token: text, or <e5 86> for a partial UTF-8 character
    prob: float         # model probability (softmax of the raw logits)
    prob_filtered: float  # after penalty, temperature, top-k, top-p (what was actually sampled from)


@dataclass
class TraceStep:
    step: int
    candidates: list[TokenCandidate]
    chosen_id: int
    chosen: str
    chosen_prob_filtered: float
    text: str           # the generated text so far; bytes of an unfinished character shown as <..>


@dataclass
class GenerationTrace:
    """Everything one traced generation saw: the settings, each step, and the final token ids."""

    prompt: str
    settings: dict
    steps: list[TraceStep] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # prompt + generated

    def generated_ids(self) -> list[int]:
        return [s.chosen_id for s in self.steps]


def _visible_text(enc, ids: list[int]) -> str:
    """Decode ids; trailing bytes that are not yet a whole character are shown as <xx ..>."""
    raw = b"".join(token_bytes(enc, i) for i in ids)
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):  # an unfinished character is at most 3 bytes
        try:
            text = raw[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        tail = raw[cut:]
        return text + ("<" + " ".join(f"{b:02x}" for b in tail) + ">" if tail else "")
    return raw.decode("utf-8", errors="replace")


@torch.no_grad()
def generate_with_trace(model, enc, prompt: str, max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                        top_p: float | None = None, *, repetition_penalty: float = 1.0,
                        generator: torch.Generator | None = None, n_candidates: int = 5) -> GenerationTrace:
    """Generate from one prompt and record every step: the n most likely tokens with their
    probability before and after filtering, the chosen token, and the text so far."""
    check_int("n_candidates", n_candidates, low=1)
    settings = SamplingSettings(temperature, top_k, top_p, repetition_penalty)
    ids = encode_prompt(enc, prompt, model.block_size)
    trace = GenerationTrace(prompt, dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                         repetition_penalty=repetition_penalty))
    generated: list[int] = []

    def record(step: int, logits: torch.Tensor, adjusted: torch.Tensor, nxt: torch.Tensor) -> None:
        before = logits[0].float().softmax(-1)
        after = settings.filter(adjusted[0:1])[0].softmax(-1)
        top = torch.topk(before, min(n_candidates, before.numel()))
        cands = [TokenCandidate(int(i), show_token(enc, int(i)), float(p), float(after[i]))
                 for p, i in zip(top.values, top.indices, strict=True)]
        chosen = int(nxt[0, 0])
        generated.append(chosen)
        trace.steps.append(TraceStep(step + 1, cands, chosen, show_token(enc, chosen), float(after[chosen]),
                                     _visible_text(enc, generated)))

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    out = generate_ids(model, x, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                       generator=generator, on_step=record)
    trace.token_ids = out[0].tolist()
    return trace


def format_trace(trace: GenerationTrace, digits: int = 2, show_text: bool = True) -> str:
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


def print_trace(trace: GenerationTrace, digits: int = 2, show_text: bool = True) -> None:
    print(format_trace(trace, digits, show_text))
