"""Decoding on an accelerator: sampling stays on the device, and the loop never waits on the host.

Without a GPU the device path is exercised on the `meta` device (shapes only, no data) and the
inverse-CDF sampler is checked on the CPU, where it runs the same code. `COURSE_TEST_DEVICE=cuda`
(set by `make test-gpu`) also runs the device checks on a real GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

from course_lib.decoding import decode
from course_lib.decoding.batching import generate_batch
from course_lib.decoding.decode import STOP_CHECK_EVERY, generate_ids
from course_lib.decoding.sampling import apply_repetition_penalty, filter_logits, inverse_cdf_draw, sample_next
from course_lib.text.tokenizer import get_encoding

DEVICES = ["meta"] + ([os.environ["COURSE_TEST_DEVICE"]] if os.environ.get("COURSE_TEST_DEVICE") else [])
PROBS = torch.tensor([0.5, 0.0, 0.2, 0.15, 0.0, 0.1, 0.05])  # zeros must never be drawn


def test_inverse_cdf_matches_multinomial_in_distribution():
    n = 40_000
    probs = PROBS.expand(n, -1)
    ours = inverse_cdf_draw(probs, torch.Generator().manual_seed(0))[:, 0]
    ref = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0))[:, 0]
    f_ours = torch.bincount(ours, minlength=len(PROBS)).double() / n
    f_ref = torch.bincount(ref, minlength=len(PROBS)).double() / n
    se = (PROBS.double() * (1 - PROBS.double()) / n).sqrt()
    assert f_ours[PROBS == 0].sum() == 0  # a zero-probability token is never drawn
    assert ((f_ours - PROBS).abs() <= 5 * se + 1e-12).all(), (f_ours, PROBS)  # within 5 standard errors
    assert ((f_ours - f_ref).abs() <= 5 * (2 ** 0.5) * se + 1e-12).all()
    expected = PROBS.double()[PROBS > 0] * n  # Pearson chi-square, 4 degrees of freedom
    observed = torch.bincount(ours, minlength=len(PROBS)).double()[PROBS > 0]
    assert ((observed - expected) ** 2 / expected).sum() < 18.47  # chi2(4) 99.9% quantile


def test_inverse_cdf_is_deterministic_under_a_seed_and_handles_one_hot():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(-1)
    a = inverse_cdf_draw(probs, torch.Generator().manual_seed(5))
    b = inverse_cdf_draw(probs, torch.Generator().manual_seed(5))
    assert a.shape == (4, 1) and a.dtype == torch.long and torch.equal(a, b)
    one_hot = torch.zeros(3, 50)
    one_hot[:, 49] = 1.0  # the last token, where a rounded-up target would fall off the end
    assert inverse_cdf_draw(one_hot, torch.Generator().manual_seed(0)).flatten().tolist() == [49, 49, 49]


def test_cpu_logits_keep_todays_multinomial_draws():
    # No committed notebook output may change: CPU logits + CPU generator still use torch.multinomial.
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(2))
    ours = sample_next(logits, 0.8, top_k=50, generator=torch.Generator().manual_seed(9))
    ref = torch.multinomial(filter_logits(logits, 0.8, 50).softmax(-1), 1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_device_logits_without_a_generator_sample_on_the_device(device):
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)).to(device)
    a = sample_next(logits, 0.9, top_k=40)
    assert a.device.type == torch.device(device).type and a.shape == (4, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_device_logits_with_a_cpu_generator_sample_on_the_device(device):
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)).to(device)
    a = sample_next(logits, 0.9, top_p=0.9, generator=torch.Generator().manual_seed(4))
    assert a.device.type == torch.device(device).type and a.shape == (4, 1)
    if device != "meta":  # real data: the same seed gives the same tokens, on the device path
        b = sample_next(logits, 0.9, top_p=0.9, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        ref = inverse_cdf_draw(filter_logits(logits, 0.9, top_p=0.9).softmax(-1), torch.Generator().manual_seed(4))
        assert torch.equal(a, ref)



class HostSyncCounter(TorchFunctionMode):
    """Counts every call that makes the host wait for a device tensor (.item(), .tolist(), bool(), ...).

    On the meta device such a call would raise (there is no data); here it is recorded and answered
    from a zero-filled CPU stand-in, so one run lists every sync instead of stopping at the first.
    """

    HOST = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self, fill: int = 0) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fill = fill  # the stand-in's value: e.g. the batch size, for "how many rows are still going?"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_host = name == "to" and any(isinstance(a, (str, torch.device)) and torch.device(a).type == "cpu"
                                       for a in (*args[1:], kwargs.get("device")))
        if (name in self.HOST or to_host) and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
            self.calls.append(name)
            stand_in = torch.full(args[0].shape, self.fill, dtype=args[0].dtype)
            return func(stand_in, *args[1:], **kwargs)
        return func(*args, **kwargs)


def count_syncs(run, fill: int = 0) -> int:
    with HostSyncCounter(fill) as counter:
        run()
    return len(counter.calls)


def test_the_counter_sees_a_sync():
    x = torch.ones(3, device="meta")
    assert count_syncs(lambda: (x.sum().item(), bool(x.any()), x.tolist(), x.cpu(), x.to("cpu"), x.to("meta"))) == 5


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("temperature,seeded", [(0.0, False), (1.0, False), (1.0, True), (0.8, True)])
def test_decode_loop_never_waits_on_the_host(make_gpt, use_cache, batch, temperature, seeded):
    model = make_gpt(vocab_size=300, block_size=32).to("meta")
    idx = torch.zeros(batch, 5, dtype=torch.long, device="meta")
    mask = torch.ones(batch, 5, dtype=torch.long, device="meta")

    def run(n: int):
        gen = torch.Generator().manual_seed(0) if seeded else None
        return lambda: generate_ids(model, idx, n, temperature, top_k=20, top_p=0.9, repetition_penalty=1.2,
                                    generator=gen, use_cache=use_cache, attention_mask=mask)

    short, long = count_syncs(run(3)), count_syncs(run(12))
    assert long - short == 0, f"{(long - short) / 9:.2f} host syncs per generated token"
    assert short == 0  # measured: the loop needs none outside the steps either


def test_public_text_functions_keep_everything_on_the_models_device(make_gpt):
    """Model and inputs on `meta`: a tensor made on the CPU inside would raise or come back on the CPU.

    On a GPU that is the "expected all tensors to be on the same device" crash; here it shows up
    without one. generate_batch ends by decoding ids to text (one .tolist()), answered by the counter.
    """
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=8).to("meta")
    meta = torch.device("meta")
    idx = torch.zeros(2, 5, dtype=torch.long, device=meta)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], device=meta)
    for kwargs in ({}, {"attention_mask": mask}, {"repetition_penalty": 1.3, "use_cache": False}):
        out = model.generate(idx, 6, 0.8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0), **kwargs)
        assert out.device == meta and out.shape == (2, 11)  # 11 > block_size 8: the window slid too
    logits, cache = model.prefill(idx, attention_mask=mask)
    assert logits.device == meta and cache.k.device == meta
    step = model.decode_step(idx[:, -1:], cache, attention_mask=torch.ones(2, 6, dtype=torch.long, device=meta))
    assert step.device == meta and step.shape == (2, enc.n_vocab)
    full, cache = model.infer(idx, position_ids=torch.arange(5, device=meta))
    assert full.device == meta and full.shape == (2, 5, enc.n_vocab)
    assert filter_logits(step, 0.7, top_k=3, top_p=0.5).device == meta
    assert apply_repetition_penalty(step, idx, 1.2, mask).device == meta
    with HostSyncCounter() as counter:
        texts = generate_batch(model, enc, ["Meadow Farm", "农夫山泉", "x"], 4, 0.7, top_k=5,
                               generator=torch.Generator().manual_seed(0), batch_size=2)
    assert len(texts) == 3 and counter.calls == ["tolist", "tolist"]  # one per chunk, after its loop


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_eos_stopping_checks_the_device_every_few_tokens(make_gpt, batch, temperature):
    model = make_gpt(vocab_size=300, block_size=64).to("meta")
    idx = torch.zeros(batch, 5, dtype=torch.long, device="meta")

    def run(n: int):  # the stand-in says no row has finished, so the loop runs all n steps
        return lambda: generate_ids(model, idx, n, temperature, eos_token_id=[7, 9],
                                    generator=torch.Generator().manual_seed(0))

    short, long = count_syncs(run(16), fill=batch), count_syncs(run(32), fill=batch)
    assert long - short == (32 - 16) // STOP_CHECK_EVERY  # one sync per STOP_CHECK_EVERY tokens, not per token


@pytest.mark.parametrize("temperature,batch", [(0.0, 3), (0.0, 4), (0.0, 1), (1.0, 4)])
def test_checking_every_few_tokens_returns_what_checking_every_token_does(make_gpt, monkeypatch, temperature, batch):
    """Greedy: token-exact. Sampled: rows leave the computed batch later, so a seed draws different
    tokens (same distribution); what must hold is that every row ends at its first eos, then pads,
    and the result ends where the last row finished."""
    model = make_gpt(vocab_size=40, block_size=32, dropout=0.0)
    idx = torch.randint(0, 40, (batch, 3), generator=torch.Generator().manual_seed(1))
    free = generate_ids(model, idx, 20, temperature, generator=torch.Generator().manual_seed(2))[:, 3:]
    eos_sets = [free[:, 4].tolist(), free[:1, 9].tolist(), [int(free[-1, 13])]]  # every row / some rows stop
    outs = []
    for every in (1, 3):
        monkeypatch.setattr(decode, "stop_check_interval", lambda device, every=every: every)
        outs.append([generate_ids(model, idx, 20, temperature, eos_token_id=eos, generator=torch.Generator().manual_seed(2))
                     for eos in eos_sets])
    if temperature == 0:
        for a, b in zip(*outs, strict=True):
            assert torch.equal(a, b), (a, b)
    for out, eos in zip(outs[1], eos_sets, strict=True):
        new = out[:, 3:].tolist()
        ends = [next((i for i, t in enumerate(row) if t in eos), None) for row in new]
        for row, end in zip(new, ends, strict=True):
            assert end is None or all(t == eos[0] for t in row[end + 1:])  # after its eos a row only pads
        assert len(new[0]) == 20 if None in ends else len(new[0]) == max(ends) + 1  # trimmed to the last finish
    assert any(o.shape[1] < 23 for o in outs[1])  # some outputs stopped early: the trim was exercised


def _first_stop_step(enc, ids: list[int], stops: list[str]) -> int | None:
    """Brute force: the first step whose generated bytes contain a stop string (the definition)."""
    data = [b"".join(enc.decode_single_token_bytes(t) for t in ids[:i]) for i in range(1, len(ids) + 1)]
    return next((i + 1 for i, d in enumerate(data) if any(s.encode() in d for s in stops)), None)


def test_the_device_stop_matcher_agrees_with_a_byte_search():
    """Stop strings cut out of the text at random byte offsets (across tokens, inside 泉's two tokens,
    overlapping prefixes like "abab"), several at once: the matcher finishes at exactly the first step
    whose bytes contain one, for every row of a batch fed together."""
    import random

    from course_lib.decoding.stopping import StopCriteria

    enc, rng = get_encoding(), random.Random(0)
    texts = ["农夫山泉 天然水 550ml 瓶装\n\n下一行", "aaab abab ababab\n x\n\ny", "Meadow Farm Sparkling Water 12 x 330ml\n"]
    rows = [enc.encode(t) for t in texts]
    width = max(map(len, rows))
    checked = 0
    for _ in range(15):
        stops = []
        for text in texts:
            a = rng.randrange(len(text))
            stops.append(text[a:a + rng.randint(1, 5)])
        sc = StopCriteria(len(rows), stop=stops, enc=enc)
        finished = [None] * len(rows)
        for step in range(width):  # rows that ran out of tokens feed an id past the vocabulary: no bytes
            tok = torch.tensor([[r[step] if step < len(r) else enc.n_vocab + 5] for r in rows])
            for i, d in enumerate(sc.update(tok).tolist()):
                finished[i] = finished[i] or (step + 1 if d else None)
        assert finished == [_first_stop_step(enc, r, stops) for r in rows], stops
        checked += sum(f is not None for f in finished)
    assert checked > 30  # most random stops were found: the comparison was not vacuous


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_stop_strings_check_the_device_every_few_tokens(make_gpt, batch, temperature):
    """With stop strings the loop syncs exactly as with eos ids: N // STOP_CHECK_EVERY times for N
    tokens ("is every row finished?") plus once after the loop (where to trim), 0 per token amortised."""
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=64).to("meta")
    idx = torch.zeros(batch, 5, dtype=torch.long, device="meta")

    def run(n: int):  # the stand-in says no row has finished, so the loop runs all n steps
        return lambda: generate_ids(model, idx, n, temperature, stop=["\n", "ml 瓶"], eos_token_id=7, enc=enc,
                                    generator=torch.Generator().manual_seed(0))

    for n in (16, 32):
        assert count_syncs(run(n), fill=batch) == n // STOP_CHECK_EVERY + 1
    with HostSyncCounter(fill=3) as counter:  # 3 rows still going
        generate_batch(model, enc, ["a", "b", "c"], 16, 0.9, stop="\n", generator=torch.Generator().manual_seed(0))
    assert counter.calls.count("tolist") == 1  # the ids, once, after the loop: the text is cut on the host


@pytest.mark.parametrize("temperature,batch", [(0.0, 4), (0.0, 1), (1.0, 4)])
def test_stop_strings_checked_every_few_tokens_give_what_every_token_gives(make_gpt, monkeypatch, temperature, batch):
    """Greedy: token-exact, and generate_batch's text too. Sampled: every row's text still ends before
    its first stop string and never contains one."""
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=64, dropout=0.0)
    prompts = ["农夫山泉", "Alpine Spring", "三只松鼠 每日坚果", "🙂"][:batch]
    free = generate_batch(model, enc, prompts, 12, temperature=0.0)
    stops = [free[0][3:5] or free[0], free[-1][6:8] or free[-1]]  # text the rows really produce: they stop
    outs = []
    for every in (1, 3):
        monkeypatch.setattr(decode, "stop_check_interval", lambda device, every=every: every)
        outs.append(generate_batch(model, enc, prompts, 12, temperature, stop=stops,
                                   generator=torch.Generator().manual_seed(2)))
    if temperature == 0:
        assert outs[0] == outs[1]
    assert all(not any(s in o for s in stops) for out in outs for o in out)
    assert any(len(o) < len(f) for o, f in zip(outs[1], free, strict=True))  # something really stopped


@pytest.mark.parametrize("use_cache", [True, False])
def test_motion_sampling_checks_the_device_every_few_steps(make_motion_gpt, use_cache):
    """Motion sampling used to sync twice a step (END bookkeeping on the host, "all done?"): now
    "all rows at END?" every STOP_CHECK_EVERY steps, and the codes and lengths cross once at the end."""
    model = make_motion_gpt(block_size=40).to("meta")
    clip = torch.zeros(3, model.config.clip_dim, device="meta")

    def run(n: int):  # the stand-in says no row is done, so every step runs
        return lambda: model.sample(clip, 1.0, top_k=5, max_tokens=n, use_cache=use_cache,
                                    generator=torch.Generator().manual_seed(0))

    for n in (16, 32):
        assert count_syncs(run(n)) == n // STOP_CHECK_EVERY + 2


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_motion_sampling_checked_every_few_steps_gives_what_every_step_gives(make_motion_gpt, monkeypatch, temperature):
    from course_lib.motion import gpt as motion_gpt

    model = make_motion_gpt(block_size=30)
    clip = torch.randn(5, model.config.clip_dim, generator=torch.Generator().manual_seed(0))
    outs = []
    for every in (1, 4):
        monkeypatch.setattr(motion_gpt, "stop_check_interval", lambda device, every=every: every)
        outs.append(model.sample(clip, temperature, generator=torch.Generator().manual_seed(3)))
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))
    assert len({len(o) for o in outs[0]}) > 1  # rows ended at different steps
