"""Bugs found by trying grouped-query attention, the paged cache's pool and beam search as a new user
would (issue 19): each test here failed on the code before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from course_lib.core.layers import Attention, rope_angles
from course_lib.core.paths import REPO_ROOT
from course_lib.distributed.comm import Comm
from course_lib.distributed.launch import free_port, one_launch_at_a_time
from course_lib.distributed.process_group import DistSetupError, check_divides
from course_lib.distributed.tp_gpt import TPGPT, tp_generate
from course_lib.distributed.tp_layers import TPAttention

HEADS = {"mha": 4, "gqa": 2, "mqa": 1}  # n_kv_head of a 4-head model


# ------------------------------------------------------------ tensor parallelism with grouped-query attention
@pytest.mark.parametrize("n_kv_head, world", [(4, 2), (4, 4), (2, 2), (1, 1), (2, 1)])
def test_tp_attention_partials_sum_to_grouped_query_attention(n_kv_head, world):
    torch.manual_seed(1)
    attn = Attention(32, 4, causal=True, n_kv_head=n_kv_head).eval()
    x, rope = torch.randn(2, 5, 32), rope_angles(torch.arange(5), 8)
    parts = [TPAttention(attn, r, world) for r in range(world)]
    assert all(p.n_kv_head == n_kv_head // world for p in parts)  # the key/value heads are split, not repeated
    torch.testing.assert_close(sum(p.partial(x, rope) for p in parts), attn(x, rope), rtol=1e-5, atol=1e-6)


def test_world_size_that_cannot_split_the_key_value_heads_is_refused_naming_both_numbers():
    with pytest.raises(DistSetupError, match=r"world size 2 does not divide the model's 1 key/value heads "
                                             r"\(n_kv_head 1, n_head 4\).*--nproc_per_node in \[1\]"):
        check_divides(2, 4, 1)
    with pytest.raises(DistSetupError, match=r"world size 4 does not divide the model's 2 key/value heads.*\[1, 2\]"):
        check_divides(4, 4, 2)
    check_divides(2, 4, 2)
    check_divides(2, 4, 4)
    check_divides(2, 4)  # the old two-argument form: multi-head attention


@pytest.mark.parametrize("kind", list(HEADS))
def test_world_size_one_tp_model_decodes_grouped_query_models_exactly(make_gpt, kind):
    model = make_gpt(seed=3, n_kv_head=HEADS[kind])
    tp = TPGPT(model, Comm(0, 1))
    idx = torch.tensor([[1, 2, 3, 4]])
    assert tp.new_cache(1).k.shape[2] == HEADS[kind]  # the cache holds the key/value heads only
    for temperature, top_k in [(0.0, None), (0.9, 20)]:
        ref = model.generate(idx, 8, temperature, top_k, generator=torch.Generator().manual_seed(5))
        out = tp_generate(tp, idx, 8, temperature, top_k, generator=torch.Generator().manual_seed(5))
        assert torch.equal(out, ref)


TP_SCRIPT = """
import json, sys, torch
from course_lib.distributed.comm import Comm
from course_lib.distributed.process_group import DistSetupError, init_from_env, shutdown
from course_lib.distributed.tp_gpt import TPGPT
from course_lib.text.gpt import GPT
root = sys.argv[1]
info = init_from_env("cpu", timeout=60)
report = {}
for kind in ("mha", "gqa", "mqa"):
    saved = torch.load(f"{root}/{kind}.pt", weights_only=True)
    model = GPT(saved["h_params"]).eval()
    model.load_state_dict(saved["state"])
    try:
        tp = TPGPT(model, Comm(info.rank, info.world_size))
    except DistSetupError as exc:
        report[kind] = str(exc)
        continue
    cache = tp.new_cache(1, 8)
    rows = [tp.full_logits(tp.prefill(saved["prompt"], cache=cache)[0])]
    for tok in saved["next"].split(1, dim=1):
        rows.append(tp.full_logits(tp.decode_step(tok, cache)))
    torch.save(torch.stack(rows, 1), f"{root}/{kind}.logits.{info.rank}")
    report[kind] = "ran"
if info.rank == 0:
    print(json.dumps(report))
shutdown()
"""




def test_torchrun_world_two_grouped_query_logits_equal_the_single_process_model(make_gpt, tmp_path):
    prompt, nxt = torch.tensor([[5, 17, 3, 250, 9]]), torch.tensor([[40, 41, 299]])
    for kind, n_kv in HEADS.items():
        model = make_gpt(seed=4, n_kv_head=n_kv, dropout=0.0)
        torch.save({"h_params": model.h_params, "state": model.state_dict(), "prompt": prompt, "next": nxt},
                   tmp_path / f"{kind}.pt")
    (tmp_path / "tp.py").write_text(TP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(tmp_path / "tp.py"), str(tmp_path)]
    with one_launch_at_a_time():
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["mha"] == report["gqa"] == "ran"
    # multi-query: one key/value head cannot be split over two ranks; the refusal names both numbers
    assert "world size 2 does not divide the model's 1 key/value heads (n_kv_head 1, n_head 4)" in report["mqa"]
    full = torch.cat([prompt, nxt], 1)
    for kind in ("mha", "gqa"):
        model = make_gpt(seed=4, n_kv_head=HEADS[kind], dropout=0.0)
        with torch.no_grad():
            want = model(full)[:, prompt.shape[1] - 1:]  # the logits at the prompt's last position and each next one
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{kind}.logits.{rank}", weights_only=True)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ RoPE layout conversion with grouped-query attention
@pytest.mark.parametrize("kind", ["gqa", "mqa", "mha"])
def test_rope_layout_conversion_round_trips_grouped_query_models(make_gpt, kind):
    from course_lib.text.rope import convert_qk_layout, set_rope_layout, to_interleaved
    def sharp(seed: int):  # larger q/k weights: attention far from uniform, so positions (and layouts) matter
        m = make_gpt(seed=seed, n_kv_head=HEADS[kind], dropout=0.0)
        with torch.no_grad():
            for b in m.blocks:
                b.attn.qkv.weight.mul_(10)
        return m

    model = sharp(6)
    x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        meta = to_interleaved(model)  # permuted q and k (k has n_kv_head heads) + the interleaved rotation
        torch.testing.assert_close(meta(x), ref, rtol=1e-5, atol=1e-5)
        sd = model.state_dict()
        back = convert_qk_layout(convert_qk_layout(sd, 4, "interleaved"), 4, "rotate_half")
        assert all(torch.equal(back[k], sd[k]) for k in sd)  # a permutation and its inverse: bit for bit
        wrong = set_rope_layout(sharp(6), "interleaved")
        assert (wrong(x) - ref).abs().max() > 1e-2  # the layout without the permutation is wrong  # the layout without the permutation is wrong
    w, w_meta = sd["blocks.0.attn.qkv.weight"], meta.state_dict()["blocks.0.attn.qkv.weight"]
    v_rows = slice(32 + HEADS[kind] * 8, None)
    assert torch.equal(w_meta[v_rows], w[v_rows])  # v carries no rotation: untouched


def test_rope_layout_conversion_names_a_wrong_head_count(make_gpt):
    from course_lib.text.rope import convert_qk_layout
    sd = make_gpt(seed=6, n_kv_head=1).state_dict()  # 32 + 2 * 8 rows
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight has shape \(48, 32\).*n_head 3"):
        convert_qk_layout(sd, 3, "interleaved")  # 32 columns do not split into 3 heads


# ------------------------------------------------------------ the paged cache's bookkeeping
def manager_state(m) -> tuple:
    return list(m.free_blocks), list(m.ref), {s: list(t) for s, t in m.tables.items()}, dict(m.lengths)


@pytest.mark.parametrize("n", [-3, -1, 2.0, True, "2", None])
def test_block_manager_refuses_a_bad_token_count(n):
    from course_lib.caches.paged_cache import BlockManager
    m = BlockManager(4, 4)
    m.add("a")
    m.append("a", 2)
    before = manager_state(m)
    with pytest.raises(ValueError, match=r"n must be an int"):
        m.append("a", n)
    assert manager_state(m) == before and m.lengths["a"] == 2


def test_a_failed_paged_step_reserves_nothing_not_even_copy_on_write_blocks():
    from course_lib.caches.paged_cache import PagedKVCache, PoolExhausted
    cache = PagedKVCache(n_layer=1, n_kv_head=1, head_dim=2, n_blocks=4, block_size=4)
    m = cache.manager
    cache.add("p")
    cache.step(["p"], 6)  # blocks 0 (full) and 1 (half full)
    cache.fork("p", "c1")
    cache.fork("p", "c2")  # both share the half-full block 1: writing into it copies it first
    before = manager_state(m)
    assert m.num_free == 2
    # c1: a copy of block 1 plus one new block (tokens 6..8), the pool's last two; c2 then finds none
    with pytest.raises(PoolExhausted):
        cache.step(["c1", "c2"], 3)
    assert manager_state(m) == before  # free list (same order), reference counts, every table and length
    assert m.num_free == 2
    starts, slots, copies = m.reserve(["c1"], 3)  # the pool is usable as before the failure
    assert starts == [6] and copies == [(1, 2)] and m.tables["c1"] == [0, 2, 3]


def test_a_failed_append_after_copy_on_write_reserves_nothing():
    from course_lib.caches.paged_cache import BlockManager, PoolExhausted
    m = BlockManager(3, 4)
    m.add("p")
    m.append("p", 6)
    m.fork("p", "c")
    before = manager_state(m)
    with pytest.raises(PoolExhausted):
        m.append("c", 7)  # the copy of block 1 fits, the block after it does not
    assert manager_state(m) == before


# ------------------------------------------------------------ beam search when eos ids lead
def first_token_order(model, prompt: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(prompt)[0, -1].argsort(descending=True).tolist()


def test_beam_search_when_several_top_candidates_are_eos_ids(make_gpt):
    from course_lib.decoding.beam import beam_search
    model = make_gpt(seed=7, vocab_size=8, n_embd=16, n_layer=1, n_head=2, block_size=16, dropout=0.0)
    prompt = torch.tensor([[1, 2, 3]])
    order = first_token_order(model, prompt)
    # one beam, the two most likely first tokens both eos: the 2 * num_beams candidates held no live beam
    r = beam_search(model, prompt, 4, 1, eos_token_id=order[:2])
    # HF's rules: the best candidate (eos, rank 0) finishes; its score equals the best live extension's
    # at length 1, so with early_stopping=False the row is done: the answer is that one token
    assert r.sequences[0, 3:].tolist() == [order[0]] and r.steps == 1
    r3 = beam_search(model, prompt, 4, 2, eos_token_id=order[:3])  # three eos ids lead, two beams
    assert r3.sequences.shape[0] == 1 and r3.hypotheses[0]


def test_beam_search_when_every_token_is_an_eos_id(make_gpt):
    from course_lib.decoding.beam import beam_search
    model = make_gpt(seed=7, vocab_size=8, n_embd=16, n_layer=1, n_head=2, block_size=16, dropout=0.0)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    r = beam_search(model, prompt, 5, 2, eos_token_id=list(range(8)))
    # every continuation ends at once: the best is the most likely single token, for each row
    assert r.sequences[:, 3:].tolist() == [[first_token_order(model, prompt[i:i + 1])[0]] for i in range(2)]
    assert r.steps == 1 and all(len(h) == 2 for h in r.hypotheses)


def exhaustive_best(model, prompt: torch.Tensor, max_new: int, eos: list[int], length_penalty: float):
    """Every continuation the rules allow (ends at its first eos id, or runs max_new tokens), scored
    sum_logprob / length ** length_penalty: what beam search returns when its beams hold all of them."""
    V = model.h_params["vocab_size"]
    best, frontier = None, [([], 0.0)]
    for length in range(1, max_new + 1):
        nxt = []
        for toks, total in frontier:
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.cat([prompt, torch.tensor([toks], dtype=torch.long)], 1)
                                               if toks else prompt)[0, -1].double(), -1)
            for t in range(V):
                cand = (toks + [t], total + float(logp[t]))
                if t in eos or length == max_new:
                    score = cand[1] / length ** length_penalty
                    if best is None or score > best[0]:
                        best = (score, cand[0])
                if t not in eos:
                    nxt.append(cand)
        frontier = nxt
    return best


@pytest.mark.parametrize("early_stopping", [False, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_search_with_several_eos_ids_equals_the_rules_by_enumeration(make_gpt, length_penalty, early_stopping):
    from course_lib.decoding.beam import beam_search
    model = make_gpt(seed=8, vocab_size=6, n_embd=16, n_layer=1, n_head=2, block_size=16, dropout=0.0)
    prompt = torch.tensor([[1, 2, 3]])
    order = first_token_order(model, prompt)
    eos = [order[0], order[2]]  # the most likely first token and another one are eos ids
    want_score, want = exhaustive_best(model, prompt, 3, eos, length_penalty)
    assert want[-1] in eos  # the case under test: a finished (eos) hypothesis wins
    # 96 beams hold every live continuation (4 non-eos first tokens, 16 pairs; 96 candidates at step 3):
    # beam search under HF's rules then finds the best of all continuations
    r = beam_search(model, prompt, 3, 96, eos_token_id=eos, length_penalty=length_penalty,
                    early_stopping=early_stopping)
    assert r.sequences[0, 3:].tolist() == want and r.scores[0] == pytest.approx(want_score, abs=1e-9)


# ------------------------------------------------------------ argument checks through core.checks
def test_is_valid_keeps_the_rule_of_the_check():
    import numpy as np

    from course_lib.core.checks import check_float, check_int, check_probability, is_valid
    assert is_valid(check_int, np.int64(3), low=1) and not is_valid(check_int, True, low=1)
    assert not is_valid(check_int, 2.0, low=1) and is_valid(check_int, None, low=1, optional=True)
    assert not is_valid(check_float, float("nan"), low=0.0, finite=False)  # NaN is never a number here
    assert is_valid(check_float, float("inf"), low=0.0, finite=False) and not is_valid(check_float, float("inf"))
    assert not is_valid(check_probability, float("nan")) and is_valid(check_probability, 1.0)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(temperature=float("nan")), "temperature must be a number >= 0 (0 means greedy), got nan"),
    (dict(temperature=float("inf")), "temperature must be finite"),
    (dict(top_p=float("nan")), "top_p must be None or a number in (0, 1], got nan"),
    (dict(top_p=float("inf")), "top_p must be None or a number in (0, 1]"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number > 0"),
    (dict(top_k=float("inf")), "top_k must be None or an int >= 1"),
    (dict(max_new_tokens=float("nan")), "max_new_tokens must be an int >= 0"),
    (dict(max_new_tokens=True), "max_new_tokens must be an int >= 0"),
])
def test_sampling_arguments_refuse_nan_and_inf_everywhere(kwargs, needle):
    from course_lib.decoding.sampling import check_sampling_args
    with pytest.raises(ValueError) as err:
        check_sampling_args(**kwargs)
    assert needle in str(err.value)


def test_sampling_arguments_accept_numpy_scalars():
    import numpy as np

    from course_lib.decoding.sampling import check_sampling_args
    check_sampling_args(np.float32(0.7), np.int64(5), np.float64(0.9), np.int64(3), np.float32(1.2))


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_sequence_logprobs_refuses_a_bad_batch_size(make_gpt, batch_size):
    from course_lib.decoding.scoring import sequence_logprobs
    from course_lib.text.tokenizer import get_encoding
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=32, dropout=0.0)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        sequence_logprobs(model, enc, [("a", "b")], batch_size=batch_size)  # -1 returned [] and 0 a range() error


def test_time_fn_and_group_size_and_n_kv_head_checks():
    from course_lib.caches.quantize import check_group_size
    from course_lib.core.timing import time_fn
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="repeats must be an int"):
            time_fn(lambda: None, repeats=bad)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        time_fn(lambda: None, warmup=-1)
    for bad in (3, 0, True, 4.0):
        with pytest.raises(ValueError, match="group_size must be an even int >= 2"):
            check_group_size(bad, 64)
    for bad in (3, 0, True, 2.0):
        with pytest.raises(ValueError, match=r"n_kv_head .* must be an int >= 1 that divides n_head \(4\)"):
            Attention(32, 4, n_kv_head=bad)
