"""Speculative decoding: a cheap drafter guesses k tokens, the target checks them all in one forward pass.

At batch 1 a decode step of the course model is dominated by per-step overhead and by its 100k-row
head, so scoring k + 1 positions in one pass costs less than k + 1 steps, but not the same as one:
the pass grows with its width (chapter 08 measured a 5-position step at 2.64x a 1-position step on a
loaded CPU; the head's (k + 1)-row product is a different kernel from the 1-row one). So a drafter
proposes d1..dk, the target runs once over [cur, d1..dk] (k + 1 positions, written into its KV cache
at explicit positions), and every guess that matches what the target would have produced is a token
gained for the price of one more verify row. Two drafters:

- a small draft model (`course_lib.text.draft`, trained to imitate the target), and
- prompt lookup (Hugging Face's `prompt_lookup_num_tokens`): find the last n-gram earlier in the
  context and propose what followed it. No model at all; it pays on repetitive text.

Acceptance (Leviathan et al. 2023, Chen et al. 2023). Greedy: accept the longest prefix where
d_i equals the target's argmax, then append the target's own token, so the output is token-identical
to the target alone up to float near-ties (the (k + 1)-position verify and the one-at-a-time loop sum
in different orders, so their logits can differ in the last bits; where the two best tokens are that
close, the argmax could differ). Sampling: accept d_i with probability min(1, p(d_i) / q(d_i)) (p, q the target's
and drafter's distributions after the same temperature → top-k → top-p filtering); at the first
rejection draw from normalize(max(0, p − q)); after k acceptances draw a bonus token from p. The
output is then distributed exactly as the target's own sampling. Prompt lookup proposes a point mass
(q = 1 at its guess), a special case of the same rule.

Caches: both models keep a `StaticKVCache` (chapter 06). Rolling back past rejected tokens is just
moving the position: the next step overwrites those slots, and the causal mask hides every slot past
the query, so stale keys are never read. A round's draft calls start over the last *two* tokens, which
(re)writes the slot of the previous round's last guess d_k, so no round spends a (k + 1)-th draft call only to
cache d_k. With fixed shapes a greedy round (k draft calls and the (k + 1)-position verify) compiles to one
graph per k (`compile=True`), so no Python runs between its calls.

Why its own loop and not a runner of `decoding.decode.decode_loop`: that loop appends exactly one token per
row per step, while a round here appends 1 .. k + 1 tokens, decided by comparing the drafter's guesses with
the target's verify; and rolling back a rejected suffix is a move of the write position, not a cache row
selection. What it shares with every method: the cache protocol (`StaticKVCache.for_model`, its mask rule),
the one model step (`caches.protocol.step_logits`), the sampling step (`SamplingSettings`), the argument
checks, and the loop itself past block_size (`_finish` hands the sliding window to `generate_ids`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from course_lib.caches.protocol import step_logits
from course_lib.caches.static_cache import StaticKVCache
from course_lib.core.checks import check_generation_inputs, check_int
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings, check_sampling_args
from course_lib.decoding.stopping import StopCriteria, default_pad_id, stop_encoding

__all__ = ["SpecStats", "speculative_generate", "prompt_lookup_generate", "prompt_lookup_candidates",
           "accept_greedy", "accept_sampled", "verify_static", "draft_step_greedy", "verify_greedy"]


@dataclass
class SpecStats:
    """What a speculative run did: per draft position how often it was proposed and accepted, and calls."""

    k: int
    proposed: list[int] = field(default_factory=list)   # proposed[i]: rounds that drafted position i + 1
    accepted: list[int] = field(default_factory=list)   # accepted[i]: rounds that accepted it
    target_calls: int = 0                                # target forward passes (prefill included)
    new_tokens: int = 0
    rounds: list[tuple[list[int], int, int]] = field(default_factory=list)  # (drafted, n accepted, target token)
    keep_rounds: bool = False

    def record(self, drafted: list[int], n: int, token: int) -> None:
        while len(self.proposed) < len(drafted):
            self.proposed.append(0)
            self.accepted.append(0)
        for i in range(len(drafted)):
            self.proposed[i] += 1
            self.accepted[i] += i < n
        if self.keep_rounds:
            self.rounds.append((drafted, n, token))

    def acceptance_per_position(self) -> list[float]:
        """P(position i accepted | drafted): falls with i, since every earlier guess must be right too."""
        return [a / p if p else float("nan") for a, p in zip(self.accepted, self.proposed, strict=True)]

    @property
    def tokens_per_call(self) -> float:
        """New tokens per target forward pass (1.0 for plain decoding)."""
        return self.new_tokens / self.target_calls if self.target_calls else float("nan")


# ------------------------------------------------------------------------------ acceptance rules
def accept_greedy(drafted: torch.Tensor, target_argmax: torch.Tensor) -> tuple[int, int]:
    """drafted (k,), target_argmax (k + 1,) → (n accepted, the target's token after them)."""
    k = drafted.shape[0]
    agree = (drafted == target_argmax[:k]).long()
    n = int(agree.cumprod(0).sum())
    return n, int(target_argmax[n])


def accept_sampled(drafted: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[int, int]:
    """The rejection rule. drafted (k,) ids, q (k, V) the drafter's probabilities, p (k + 1, V) the target's.

    Accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw from
    normalize(max(0, p_i − q_i)); if all k are accepted draw a bonus token from p_k. Returns (n, token).
    """
    k = drafted.shape[0]
    u = torch.rand(k, generator=generator, device=p.device) if k else None
    for i in range(k):
        d = drafted[i]
        if u[i] * q[i, d] > p[i, d]:  # reject (u < p/q written without dividing by a zero q)
            residual = (p[i] - q[i]).clamp(min=0)
            total = residual.sum()
            if total <= 0:  # p == q up to rounding: the residual is empty, p itself is the right law
                residual, total = p[i], p[i].sum()
            return i, int(torch.multinomial(residual / total, 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


# ------------------------------------------------------------------------------ model steps
def verify_static(model, cache: StaticKVCache, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, vocab) at *every* position of ids (B, T) written at slots input_pos (T,).

    `static_cache.forward_static` keeps only the last position; verification needs all k + 1."""
    return step_logits(model, ids, cache.positions(input_pos), cache.mask(input_pos), cache.at(input_pos), last_only=False)


def _draft_vocab(target, draft) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(to_draft lut, to_target ids) for a reduced-vocabulary draft, (None, None) for a same-vocabulary one."""
    tv = target.h_params["vocab_size"]
    if hasattr(draft, "vocab_ids"):
        if draft.target_vocab_size != tv:
            raise ValueError(f"the draft maps into a vocabulary of {draft.target_vocab_size:,} ids but the target has "
                             f"{tv:,}; train a draft for this target (python -m course_lib.train.draft --target ...)")
        return draft.lut, draft.vocab_ids
    if draft.h_params["vocab_size"] != tv:
        raise ValueError(f"draft vocab_size {draft.h_params['vocab_size']:,} differs from the target's {tv:,} and the draft "
                         "has no vocab_ids map; use a draft over the same tokenizer (e.g. load_draft())")
    return None, None


def draft_step_greedy(draft, cache: StaticKVCache, tok: torch.Tensor, pos: torch.Tensor, reduced: bool) -> torch.Tensor:
    """One draft step: token (1, 1) (draft index) at slot pos (1,) → the draft's top next index (1, 1).
    reduced=True never proposes the last ("other") row of a reduced-vocabulary draft."""
    logits = verify_static(draft, cache, tok, pos)[:, -1]
    return (logits[:, :-1] if reduced else logits).argmax(-1, keepdim=True)


def verify_greedy(target, cache: StaticKVCache, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """The target's top token (T,) after each of ids (1, T) written at slots input_pos (T,)."""
    return verify_static(target, cache, ids, input_pos)[0].argmax(-1)


def greedy_round(target, draft, tcache: StaticKVCache, dcache: StaticKVCache, last2: torch.Tensor, pos2: torch.Tensor,
                 k: int, lut: torch.Tensor | None, vocab_ids: torch.Tensor | None,
                 step=draft_step_greedy, verify=verify_greedy) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy round: k draft calls, then the target's verify over k + 1 positions.

    last2 (1, 2) are the last two target ids, at slots pos2 (2,) = [L - 1, L]; slot L - 1 is already in the
    target's cache, L (the pending token) is not. The draft's first call runs over both: it (re)writes slot
    L - 1, which a round that accepted all k never wrote (its d_k), so no round needs a (k + 1)-th draft
    call just to store d_k. Returns (drafted (k,), target argmax (k + 1,)), both target ids."""
    reduced = vocab_ids is not None
    tok = step(draft, dcache, last2 if lut is None else lut[last2], pos2, reduced)
    drafted = [tok]
    for i in range(1, k):
        tok = step(draft, dcache, tok, pos2[1:] + i, reduced)
        drafted.append(tok)
    d = torch.cat(drafted, dim=1)                                      # (1, k) draft indices
    d_target = d if vocab_ids is None else vocab_ids[d]
    ids = torch.cat([last2[:, 1:], d_target], dim=1)                   # (1, k + 1)
    return d_target[0], verify(target, tcache, ids, pos2[1] + torch.arange(k + 1, device=pos2.device))


_COMPILED: dict[str, object] = {}
_FNS = {"draft_step_greedy": draft_step_greedy, "verify_greedy": verify_greedy, "greedy_round": greedy_round}


def compiled(name: str):
    """`torch.compile`d draft step / verify / whole greedy round (fullgraph, static shapes), built once per
    process: the draft step is one graph for every k, the verify and the round one graph per k."""
    if name not in _COMPILED:
        # freezing: inductor treats the weights as constants and pre-packs them for the CPU matmul kernels;
        # unpacked, the head's product with k + 1 rows re-packs the 100k x 64 table on every call
        _COMPILED[name] = torch.compile(_FNS[name], fullgraph=True, dynamic=False, options={"freezing": True})
    return _COMPILED[name]


def _greedy_round(target, draft, tcache: StaticKVCache, dcache: StaticKVCache, last2: torch.Tensor, pos2: torch.Tensor,
                  lut: torch.Tensor | None, vocab_ids: torch.Tensor | None, k: int,
                  use_compiled: bool | str = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`greedy_round` eager; as one compiled graph (use_compiled=True: no Python between its k + 1 calls);
    or through separately compiled draft-step and verify graphs (use_compiled="steps", for comparison)."""
    if use_compiled is True:
        return compiled("greedy_round")(target, draft, tcache, dcache, last2, pos2, k, lut, vocab_ids)
    if use_compiled == "steps":
        return greedy_round(target, draft, tcache, dcache, last2, pos2, k, lut, vocab_ids,
                            step=compiled("draft_step_greedy"), verify=compiled("verify_greedy"))
    return greedy_round(target, draft, tcache, dcache, last2, pos2, k, lut, vocab_ids)


def _check_args(target, idx: torch.Tensor, max_new_tokens: int, k: int, attention_mask=None,
                pad_token_id=None) -> torch.Tensor | None:
    check_sampling_args(max_new_tokens=max_new_tokens)
    check_int("k (tokens drafted per round; k=4 is a good start)", k, low=1)
    mask = check_generation_inputs(idx, target.h_params["vocab_size"], attention_mask, pad_token_id)
    if idx.shape[1] > target.block_size:  # the policy of every loop: warn, then the window keeps the last block_size
        warnings.warn(f"context of {idx.shape[1]} tokens is longer than block_size {target.block_size}: "
                      f"the model sees only the last {target.block_size}", stacklevel=3)
    return mask


def _stopper(eos_token_id, stop, enc, device) -> tuple[StopCriteria, object]:
    enc = stop_encoding(stop, enc)
    return StopCriteria(1, eos_token_id, stop, enc, device=device), enc


def _finish(target, seq: list[int], idx: torch.Tensor, max_new_tokens: int, settings: SamplingSettings,
            generator, stats: SpecStats) -> torch.Tensor:
    """Crop to max_new_tokens; past block_size the window slides (every position changes, caches are
    stale): the rest is the target's own loop, which is what target.generate does there too."""
    out = torch.tensor([seq[:idx.shape[1] + max_new_tokens]], dtype=idx.dtype, device=idx.device)
    left = idx.shape[1] + max_new_tokens - out.shape[1]
    if left > 0:
        with warnings.catch_warnings():  # "context longer than block_size": sliding is what we ask for here
            warnings.simplefilter("ignore", UserWarning)
            out = generate_ids(target, out, left, settings.temperature, settings.top_k, settings.top_p, generator=generator)
        stats.target_calls += left
    stats.new_tokens = out.shape[1] - idx.shape[1]
    return out


def _run(target, drafter, idx: torch.Tensor, max_new_tokens: int, k: int, settings: SamplingSettings,
         generator, compile: bool | str, stats: SpecStats, stopper: StopCriteria) -> torch.Tensor:
    """The speculative loop shared by both drafters (see the module docstring)."""
    dev = idx.device
    T = idx.shape[1]
    block = target.block_size
    seq = idx[0].tolist()
    if T > block:  # nothing to speculate in a sliding window: the plain loop (see _finish)
        return _finish(target, seq, idx, max_new_tokens, settings, generator, stats)
    tcache = StaticKVCache.for_model(target, 1)
    with torch.no_grad():
        logits = verify_static(target, tcache, idx, torch.arange(T, device=dev))[:, -1]
        stats.target_calls += 1
        seq.append(int(settings.sample(logits, generator)))
        drafter.prefill(idx)
        # seq[-1] is pending (not in the caches yet); the target's cache holds len(seq) - 1 slots
        fed = T  # new tokens up to here went through the stopper
        while len(seq) - T < max_new_tokens and len(seq) <= block:
            if stopper.active:
                if _stops_at(stopper, seq[fed:]) is not None:  # an eos id or a stop string: later tokens are cut
                    stats.new_tokens = len(seq) - T
                    return torch.tensor([seq], dtype=idx.dtype, device=dev)
                fed = len(seq)
            room = block - len(seq)                  # the verify writes slots len(seq)-1 .. +k
            kk = min(k, room, T + max_new_tokens - len(seq))
            L = len(seq) - 1
            cur = torch.tensor([[seq[-1]]], device=dev)
            pos = torch.tensor([L], device=dev)
            if kk == 0:                              # no room to speculate: a plain target step
                lg = verify_static(target, tcache, cur, pos)[0, -1]
                stats.target_calls += 1
                seq.append(int(settings.sample(lg[None], generator)))
                drafter.sync(seq, L)
                continue
            n, tok, drafted = drafter.round(target, tcache, seq, cur, pos, kk, compile if kk == k else False, settings,
                                             generator)
            stats.target_calls += 1
            stats.record(drafted, n, tok)
            seq.extend(drafted[:n] + [tok])
    return _finish(target, seq, idx, max_new_tokens, settings, generator, stats)


def _stops_at(stopper: StopCriteria, tokens: list[int]) -> int | None:
    """Feed tokens to the (one-row) stopper; the index of the token that finishes the row, or None."""
    for i, t in enumerate(tokens):
        if bool(stopper.update(torch.tensor([[t]], device=stopper.done.device))[0]):
            return i
    return None


def _cut_at_stop(out: torch.Tensor, T: int, eos_token_id, stop, enc) -> torch.Tensor:
    """The decode loop's rule for one row: the output ends with the token that finished it (eos id or the
    end of a stop string), checked over every new token from the start."""
    stopper = StopCriteria(1, eos_token_id, stop, enc, device=out.device)
    end = _stops_at(stopper, out[0, T:].tolist()) if stopper.active else None
    return out if end is None else out[:, :T + end + 1]


def _each_row(run_one, idx: torch.Tensor, mask: torch.Tensor | None, stats: SpecStats, pad: int) -> torch.Tensor:
    """A (left-padded) batch, one row at a time: rows accept different numbers of guesses per round, so
    their caches would need different write positions every round. Each row runs alone without its
    padding (what the decode loop's per-row positions give a padded row, so the tokens are the same);
    the result has the decode loop's shape: (B, T + the longest row's new tokens), shorter rows padded."""
    if idx.shape[0] == 1 and (mask is None or bool(mask.all())):
        return run_one(idx)
    T, news, made = idx.shape[1], [], 0
    for b in range(idx.shape[0]):
        row = idx[b:b + 1] if mask is None else idx[b:b + 1, mask[b].bool()]
        news.append(run_one(row)[0, row.shape[1]:])
        made += stats.new_tokens                      # each run reports its own row
    stats.new_tokens = made
    out = torch.full((idx.shape[0], T + max(len(n) for n in news)), pad, dtype=idx.dtype, device=idx.device)
    out[:, :T] = idx
    for b, n in enumerate(news):
        out[b, T:T + len(n)] = n
    return out


class _ModelDrafter:
    """A draft model with its own static cache; greedy rounds can run through compiled graphs."""

    def __init__(self, target, draft):
        if draft.block_size < target.block_size:
            raise ValueError(f"draft block_size {draft.block_size} < target's {target.block_size}: the draft must see "
                             "as far back as the target")
        self.draft = draft
        self.lut, self.vocab_ids = _draft_vocab(target, draft)
        self.dcache = StaticKVCache.for_model(draft, 1, target.block_size)

    def prefill(self, idx: torch.Tensor) -> None:
        ids = idx if self.lut is None else self.lut[idx]
        verify_static(self.draft, self.dcache, ids, torch.arange(idx.shape[1], device=idx.device))

    def sync(self, seq: list[int], L: int) -> None:
        """After a plain target step: write the token at slot L into the draft's cache too."""
        cur = torch.tensor([[seq[L]]], device=self.dcache.k.device)
        self.prefill_at(cur, L)

    def prefill_at(self, cur: torch.Tensor, L: int) -> None:
        ids = cur if self.lut is None else self.lut[cur]
        verify_static(self.draft, self.dcache, ids, torch.tensor([L], device=cur.device))

    def _probs(self, logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
        """The drafter's filtered distribution over the *target's* vocabulary (zeros off the subset)."""
        if self.vocab_ids is not None:
            logits = logits[..., :-1]
        q = settings.filter(logits).softmax(-1)
        if self.vocab_ids is None:
            return q
        full = q.new_zeros(*q.shape[:-1], self.lut.shape[0])
        return full.index_copy_(-1, self.vocab_ids, q)

    def round(self, target, tcache, seq, cur, pos, k, use_compiled, settings, generator):
        if settings.temperature == 0:
            last2 = torch.tensor([seq[-2:]], device=cur.device)
            pos2 = torch.cat([pos - 1, pos])
            d, t = _greedy_round(target, self.draft, tcache, self.dcache, last2, pos2, self.lut, self.vocab_ids, k,
                                 use_compiled)
            n, tok = accept_greedy(d, t)
            return n, tok, d.tolist()
        # sampling (eager): draft k tokens from q, keep q for the rule
        tok = cur if self.lut is None else self.lut[cur]
        drafted, qs = [], []
        for i in range(k + 1):
            lg = verify_static(self.draft, self.dcache, tok, pos + i)[0, -1]
            if i == k:
                break  # this step only writes d_k into the draft cache
            q = self._probs(lg, settings)
            d = torch.multinomial(q, 1, generator=generator)  # a target id
            drafted.append(int(d))
            qs.append(q)
            tok = (d if self.lut is None else self.lut[d])[None]
        ids = torch.tensor([[int(cur)] + drafted], device=cur.device)
        t_logits = verify_static(target, tcache, ids, pos + torch.arange(k + 1, device=pos.device))[0]
        p = settings.filter(t_logits).softmax(-1)
        n, tok = accept_sampled(torch.tensor(drafted, device=p.device), torch.stack(qs), p, generator)
        return n, tok, drafted


def prompt_lookup_candidates(seq: list[int] | torch.Tensor, num_tokens: int, max_ngram: int = 2) -> list[int]:
    """Hugging Face's prompt lookup: the tokens that followed the first earlier occurrence of the last
    n-gram (n = max_ngram down to 1), at most num_tokens of them; [] when nothing matches."""
    s = torch.as_tensor(seq)
    L = s.shape[0]
    for n in range(min(max_ngram, L - 1), 0, -1):
        windows = s.unfold(0, n, 1)                       # (L - n + 1, n)
        hits = (windows == s[-n:]).all(-1).nonzero()[:, 0]
        for i in hits.tolist():
            start = i + n
            end = min(start + num_tokens, L)
            if start < end:
                return s[start:end].tolist()
    return []


class _LookupDrafter:
    """Prompt lookup: no model, no cache. Candidates are padded to k so the verify shape is fixed."""

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram

    def prefill(self, idx: torch.Tensor) -> None:
        pass

    def sync(self, seq: list[int], L: int) -> None:
        pass

    def round(self, target, tcache, seq, cur, pos, k, use_compiled, settings, generator):
        cand = prompt_lookup_candidates(seq, k, self.max_ngram)
        m = len(cand)
        ids = torch.tensor([[seq[-1]] + cand + [seq[-1]] * (k - m)], device=cur.device)  # padding is never accepted
        input_pos = pos + torch.arange(k + 1, device=pos.device)
        drafted = torch.tensor(cand, dtype=torch.long, device=cur.device)
        if settings.temperature == 0:
            verify = compiled("verify_greedy") if use_compiled else verify_greedy
            n, tok = accept_greedy(drafted, verify(target, tcache, ids, input_pos)[:m + 1])
        else:  # a point mass at each guess
            t_logits = verify_static(target, tcache, ids, input_pos)[0]
            p = settings.filter(t_logits[:m + 1]).softmax(-1)
            q = F.one_hot(drafted, p.shape[-1]).to(p.dtype)
            n, tok = accept_sampled(drafted, q, p, generator)
        return n, tok, cand


@torch.no_grad()
def speculative_generate(target, draft, idx: torch.Tensor, max_new_tokens: int, k: int = 4, temperature: float = DEFAULT_TEMPERATURE,
                         top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                         *, compile: bool | str = False, return_stats: bool = False, keep_rounds: bool = False,
                         eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None, enc=None,
                         attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None):
    """Append max_new_tokens tokens to idx (B, T) with `draft` proposing k tokens per target forward pass.

    Same shape convention as `GPT.generate`: returns (B, T + max_new_tokens), a left-padded batch
    (attention_mask) running one row at a time (`_each_row`); eos ids and stop strings finish a row early,
    padded with pad_token_id (default the first eos id, else <|endoftext|>). temperature=0 is greedy and
    token-identical to `target.generate(idx, n, temperature=0)` (up to float near-ties); otherwise the rejection rule makes the
    output distributed as the target's sampling with the same temperature/top-k/top-p. compile=True
    runs each greedy round as one compiled graph (compile="steps": separate draft-step and verify graphs, kept for
    the benchmark's comparison; sampling stays eager). return_stats=True returns
    (ids, SpecStats); keep_rounds also records every round's drafted tokens.
    """
    settings = SamplingSettings(temperature, top_k, top_p)
    mask = _check_args(target, idx, max_new_tokens, k, attention_mask, pad_token_id)
    stats = SpecStats(k, keep_rounds=keep_rounds)
    stopper, enc = _stopper(eos_token_id, stop, enc, idx.device)

    def one_row(row: torch.Tensor) -> torch.Tensor:
        out = _run(target, _ModelDrafter(target, draft), row, max_new_tokens, k, settings, generator, compile, stats,
                   _stopper(eos_token_id, stop, enc, row.device)[0])
        return _cut_at_stop(out, row.shape[1], eos_token_id, stop, enc)

    out = _each_row(one_row, idx, mask, stats, default_pad_id(pad_token_id, stopper.eos, enc))
    return (out, stats) if return_stats else out


@torch.no_grad()
def prompt_lookup_generate(target, idx: torch.Tensor, max_new_tokens: int, num_tokens: int = 8, max_ngram: int = 2,
                           temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None, top_p: float | None = None,
                           generator: torch.Generator | None = None, *, compile: bool = False,
                           return_stats: bool = False, keep_rounds: bool = False,
                           eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None, enc=None,
                           attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None):
    """Speculative decoding with prompt lookup as the drafter (HF `prompt_lookup_num_tokens=num_tokens`,
    `max_matching_ngram_size=max_ngram`). Same guarantees and batch rules as `speculative_generate`."""
    settings = SamplingSettings(temperature, top_k, top_p)
    mask = _check_args(target, idx, max_new_tokens, num_tokens, attention_mask, pad_token_id)
    check_int("max_ngram", max_ngram, low=1)
    stats = SpecStats(num_tokens, keep_rounds=keep_rounds)
    stopper, enc = _stopper(eos_token_id, stop, enc, idx.device)

    def one_row(row: torch.Tensor) -> torch.Tensor:
        out = _run(target, _LookupDrafter(max_ngram), row, max_new_tokens, num_tokens, settings, generator, compile,
                   stats, _stopper(eos_token_id, stop, enc, row.device)[0])
        return _cut_at_stop(out, row.shape[1], eos_token_id, stop, enc)

    out = _each_row(one_row, idx, mask, stats, default_pad_id(pad_token_id, stopper.eos, enc))
    return (out, stats) if return_stats else out
