"""One engine: every decoding method gives the contiguous cached loop's greedy tokens, or the same clear error.

The matrix of issue 19: {cached loop, uncached loop, static, static compiled, paged, speculative (model draft,
prompt lookup), beam with num_beams=1, tensor parallel world size 1 (here) and 2 (one torchrun run, below)}
x {multi-head, grouped-query with 2 key/value heads, multi-query} x {an eos id, a stop string split across
tokens, a prompt + budget that crosses block_size, a left-padded batch}. Models are tiny and random (seeded).
Where a method cannot run a case (beam search has no stop strings; speculative decoding runs one row) the
test asserts the clear error, and the same rows one at a time.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.caches.paged_cache import PagedBatch, PagedKVCache
from course_lib.caches.protocol import Cache
from course_lib.caches.static_cache import GraphCounter, StaticKVCache, compile_decode_step
from course_lib.decoding.beam import beam_search
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.paged import generate_paged
from course_lib.decoding.speculative import prompt_lookup_generate, speculative_generate
from course_lib.decoding.static import generate_static
from course_lib.distributed.comm import Comm
from course_lib.distributed.launch import free_port, one_launch_at_a_time
from course_lib.distributed.tp_gpt import TPGPT, tp_generate
from course_lib.text.gpt import GPT
from course_lib.text.tokenizer import get_encoding

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = {"vocab_size": 300, "n_embd": 32, "n_layer": 2, "n_head": 4, "block_size": 32, "dropout": 0.0}
HEADS = {"mha": 4, "gqa": 2, "mqa": 1}
NEW = 10


def make(kind: str, seed: int = 0, **over) -> GPT:
    """A random model whose attention matters: at GPT-2's init (std 0.02) attention is almost uniform and greedy
    decoding repeats one token, which any broken cache would reproduce; weights x 10 make every position count."""
    torch.manual_seed(seed)
    model = GPT({**BASE, "n_kv_head": HEADS[kind], **over}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(10)
    return model


@pytest.fixture(scope="module")
def enc():
    return get_encoding()


def prompt(n: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 120, (1, n), generator=torch.Generator().manual_seed(seed))  # printable cl100k ids


def build_case(model: GPT, enc, case: str) -> dict:
    """The arguments of one case and the reference: the contiguous cached loop, greedy."""
    if case == "batch":
        a, b = prompt(5, 1)[0], prompt(9, 2)[0]
        ids = torch.zeros(2, 9, dtype=torch.long)
        mask = torch.zeros(2, 9, dtype=torch.long)
        ids[0, 4:], mask[0, 4:], ids[1], mask[1] = a, 1, b, 1
        args = {"idx": ids, "attention_mask": mask, "rows": [a.tolist(), b.tolist()]}
    elif case == "crossing":
        args = {"idx": prompt(28, 3)}                                 # 28 + 10 new > block_size 32: the window slides
    else:
        args = {"idx": prompt(6, 4)}
        free = generate_ids(model, args["idx"], NEW, 0.0)[0, 6:].tolist()
        if case == "eos":
            args["eos_token_id"] = free[3]                            # the 4th greedy token ends the row
        else:  # a stop string split across two tokens: the last character of one and the first of the next
            for i in range(2, NEW - 1):
                stop = enc.decode([free[i]])[-1:] + enc.decode([free[i + 1]])[:1]
                if len(stop) == 2 and stop not in enc.decode(free[:i + 1]):  # not complete any earlier
                    break
            args["stop"] = stop
    kw = {k: v for k, v in args.items() if k in ("attention_mask", "eos_token_id", "stop")}
    args["ref"] = generate_ids(model, args["idx"], NEW, 0.0, enc=enc, **kw)
    args["kw"] = kw
    return args


CASES = ["eos", "stop", "crossing", "batch"]


@pytest.mark.parametrize("kind", list(HEADS))
def test_every_method_gives_the_cached_loops_tokens(kind, enc):
    model = make(kind)
    draft = make(kind, seed=1, n_layer=1)
    counter = GraphCounter()
    compiled = compile_decode_step(backend=counter)
    for case in CASES:
        c = build_case(model, enc, case)
        idx, ref, kw = c["idx"], c["ref"], c["kw"]
        assert ref.shape[1] > idx.shape[1], case
        if case == "stop":  # the stop string really spans two tokens
            assert enc.decode(ref[0, -2:].tolist()).endswith(kw["stop"]) and kw["stop"] not in enc.decode(ref[0, -1:].tolist())
        got = {
            "uncached": generate_ids(model, idx, NEW, 0.0, use_cache=False, enc=enc, **kw),
            "static": generate_static(model, idx, NEW, temperature=0.0, enc=enc, **kw),
            "static compiled": generate_static(model, idx, NEW, temperature=0.0, step=compiled, enc=enc, **kw),
        }
        rows = c.get("rows", [idx[0].tolist()])
        paged = generate_paged(model, PagedKVCache.for_model(model, len(rows), 64), rows, NEW, temperature=0.0, enc=enc,
                               **{k: v for k, v in kw.items() if k != "attention_mask"})
        got["paged"] = torch.cat([idx, torch.tensor(paged)], dim=1)
        beam = beam_search(model, idx, NEW, 1, eos_token_id=kw.get("eos_token_id"), stop=kw.get("stop"),
                           attention_mask=kw.get("attention_mask"), enc=enc)
        got["beam 1"] = beam.sequences
        # a left-padded batch runs row by row inside (acceptance differs per row): same tokens, same shape
        got["speculative"] = speculative_generate(model, draft, idx, NEW, temperature=0.0, k=3, enc=enc, **kw)
        got["prompt lookup"] = prompt_lookup_generate(model, idx, NEW, 3, temperature=0.0, enc=enc, **kw)
        for name, out in got.items():
            assert out.tolist() == ref.tolist(), f"{name}, {kind}, {case}"
    assert counter.graphs >= 1  # the compiled step really went through dynamo


@pytest.mark.parametrize("kind", HEADS)
def test_tensor_parallel_world_size_1_gives_the_cached_loops_tokens(kind, enc):
    model = make(kind)
    for case in CASES:
        c = build_case(model, enc, case)
        out = tp_generate(TPGPT(model, Comm(0, 1)), c["idx"], NEW, 0.0, enc=enc, **c["kw"])
        assert out.tolist() == c["ref"].tolist(), f"{kind}, {case}"


def test_the_length_policy_is_the_same_for_every_cache(enc):
    """A prompt longer than block_size: every method warns, keeps the last block_size tokens and slides
    (was: generate_static with a long cache and generate_paged decoded past block_size without a word)."""
    model = make("gqa")
    idx = prompt(40, 7)
    with pytest.warns(UserWarning, match="longer than block_size 32"):
        ref = generate_ids(model, idx, 4, 0.0)
    with pytest.warns(UserWarning, match="longer than block_size 32"):
        static = generate_static(model, idx, 4, temperature=0.0, cache=StaticKVCache.for_model(model, 1, 64))
    with pytest.warns(UserWarning, match="longer than block_size 32"):
        paged = generate_paged(model, PagedKVCache.for_model(model, 1, 64), [idx[0].tolist()], 4, temperature=0.0)
    with pytest.warns(UserWarning, match="longer than block_size 32"):
        spec = speculative_generate(model, make("gqa", seed=1, n_layer=1), idx, 4, temperature=0.0, k=2)
    assert static.tolist() == ref.tolist() == spec.tolist()
    assert paged[0] == ref[0, 40:].tolist()


def test_a_long_static_cache_slides_at_block_size_like_the_contiguous_loop():
    model = make("mha")
    idx = prompt(28, 3)
    ref = generate_ids(model, idx, NEW, 0.0)
    cache = StaticKVCache.for_model(model, 1, 64)  # 64 slots > block_size 32
    out = generate_static(model, idx, NEW, temperature=0.0, cache=cache)
    assert out.tolist() == ref.tolist()
    assert not cache.k[:, :, :, 32:].any()  # nothing was ever written at a position past block_size (was: slots 32..36)


BAD_IDS = [
    (torch.tensor([[1, 100277]]), r"token id 100277, outside the vocabulary \[0, 300\)"),
    (torch.tensor([[1, -1]]), r"token id -1, outside the vocabulary"),
    (torch.tensor([[1.0, 2.0]]), "integer token ids"),
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
]
BAD_MASKS = [
    (torch.tensor([[1.0, 0.5, 1.0]]), "only 0 .padding. and 1"),
    (torch.tensor([[1, 2, 1]]), "only 0 .padding. and 1"),
    (torch.ones(1, 2, dtype=torch.long), "the ids' shape"),
    (torch.tensor([[1, 0, 1]]), "left-padded"),
]


def _entry_points(model, draft):
    tp = TPGPT(model, Comm(0, 1))
    return {
        "generate": lambda ids, **kw: model.generate(ids, 2, 0.0, **kw),
        "generate_ids": lambda ids, **kw: generate_ids(model, ids, 2, 0.0, **kw),
        "beam": lambda ids, **kw: model.generate(ids, 2, num_beams=2, **kw),
        "static": lambda ids, **kw: generate_static(model, ids, 2, temperature=0.0, **kw),
        "tensor parallel": lambda ids, **kw: tp_generate(tp, ids, 2, 0.0, **kw),
        "speculative": lambda ids, **kw: speculative_generate(model, draft, ids, 2, temperature=0.0, **kw),
        "prompt lookup": lambda ids, **kw: prompt_lookup_generate(model, ids, 2, temperature=0.0, **kw),
    }


@pytest.mark.parametrize("bad,needle", BAD_IDS)
def test_bad_token_ids_are_a_clear_error_in_every_path(bad, needle):
    model, draft = make("mha"), make("mha", seed=1, n_layer=1)
    for run in _entry_points(model, draft).values():
        with pytest.raises(ValueError, match=needle):
            run(bad)
    with pytest.raises(ValueError):
        generate_paged(model, PagedKVCache.for_model(model, 1, 32), [[1, 100277]] if bad.numel() else [[]], 2, temperature=0.0)


@pytest.mark.parametrize("mask,needle", BAD_MASKS)
def test_bad_attention_masks_are_a_clear_error_in_every_path(mask, needle):
    model, draft = make("mha"), make("mha", seed=1, n_layer=1)
    ids = torch.ones(1, 3, dtype=torch.long)
    for name, run in _entry_points(model, draft).items():
        if name in ("speculative", "prompt lookup"):
            continue  # one unpadded row: no attention_mask argument
        with pytest.raises(ValueError, match=needle):
            run(ids, attention_mask=mask)


def test_pad_id_out_of_range_is_a_clear_error():
    model = make("mha")
    ids = torch.ones(1, 3, dtype=torch.long)
    for run in (lambda: model.generate(ids, 2, 0.0, eos_token_id=1, pad_token_id=10**12),
                lambda: generate_ids(model, ids, 2, 0.0, pad_token_id=-1),
                lambda: generate_static(model, ids, 2, temperature=0.0, pad_token_id=300),
                lambda: beam_search(model, ids, 2, 2, pad_token_id=10**12)):
        with pytest.raises(ValueError, match="pad_token_id must be an int in"):
            run()


def test_paged_prefix_may_be_a_tensor_and_an_empty_static_prompt_is_a_clear_error():
    model = make("gqa")
    pre = prompt(5, 9)[0]
    a = generate_paged(model, PagedKVCache.for_model(model, 2, 32), [[7], [8, 9]], 3, temperature=0.0, prefix=pre)  # was: "Boolean value"
    b = generate_paged(model, PagedKVCache.for_model(model, 2, 32), [[7], [8, 9]], 3, temperature=0.0, prefix=pre.tolist())
    assert a == b
    with pytest.raises(ValueError, match="empty prompt"):  # was: a raw IndexError
        generate_static(model, torch.zeros(1, 0, dtype=torch.long), 3, temperature=0.0)


def test_engine_infer_past_max_len_is_a_clear_error():
    from course_lib.labs.engine import Engine
    engine = Engine(make("mha"), max_len=8)
    with pytest.raises(ValueError, match=r"position_ids must be integer slots in \[0, 8\)"):  # was: a raw IndexError
        engine.infer(torch.ones(1, 1, dtype=torch.long), position_ids=torch.tensor([8]))


def test_every_cache_is_built_the_same_way_and_asked_not_edited():
    model = make("gqa")
    for cls in (StaticKVCache, PagedKVCache):
        cache = cls.for_model(model, 2, 16)
        assert cache.k.shape[-2 if cls is PagedKVCache else 2] == 2  # n_kv_head key/value heads
    assert isinstance(model.new_cache(1), Cache) and isinstance(StaticKVCache.for_model(model, 1), Cache)
    assert isinstance(PagedBatch(PagedKVCache.for_model(model, 2, 16), [0, 1]), Cache)  # the pool's batches
    contiguous = type(model.new_cache(1)).for_model(model, 3, 16)
    assert contiguous.k.shape == (2, 3, 2, 16, 8) and contiguous.batch_size == 3
    contiguous.k[:, :, :, :1] = torch.arange(3.0)[None, :, None, None, None]
    contiguous.advance(1)
    contiguous.select_rows(torch.tensor([2, 0, 0]))  # beams: same batch size, rows reordered in place
    assert contiguous.k[0, :, 0, 0, 0].tolist() == [2.0, 0.0, 0.0]
    contiguous.select_rows(torch.tensor([1]))  # finished rows dropped
    assert contiguous.batch_size == 1 and contiguous.k[0, 0, 0, 0, 0] == 0.0


# ------------------------------------------------------------------ world size 2: one torchrun run, every case
WORLD2 = r'''
import sys, torch
sys.path.insert(0, "tests")
from test_one_engine import CASES, HEADS, NEW, build_case, make
from course_lib.distributed.comm import Comm
from course_lib.distributed.process_group import init_from_env, shutdown
from course_lib.distributed.tp_gpt import TPGPT, tp_generate
from course_lib.distributed.tp_layers import TPAttention
from course_lib.text.tokenizer import get_encoding
info = init_from_env("cpu", 60)
enc = get_encoding()
bad = []
for kind in sys.argv[1:]:
    model = make(kind)
    for case in CASES:
        c = build_case(model, enc, case)
        out = tp_generate(TPGPT(model, Comm(info.rank, info.world_size)), c["idx"], NEW, 0.0, enc=enc, **c["kw"])
        if out.tolist() != c["ref"].tolist():
            bad.append(f"{kind} {case}")
if info.rank == 0:
    print("MISMATCH " + ", ".join(bad) if bad else "ALL EQUAL")
shutdown()
'''




def test_tensor_parallel_world_size_2_gives_the_cached_loops_tokens(tmp_path):
    """Multi-head and grouped-query (2 key/value heads: one per rank), every case in one torchrun run;
    multi-query cannot be split over 2 processes (one key/value head) and is refused by check_divides."""
    script = tmp_path / "world2.py"
    script.write_text(WORLD2)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    kinds = ["mha", "gqa"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), *kinds]
    with one_launch_at_a_time():
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ALL EQUAL"


def test_every_generation_entry_point_has_the_one_default_temperature():
    """One default, the seed's: generate(..., temperature=1.0) samples; greedy is asked for with temperature=0."""

    from course_lib.decoding import batching, decode, quality, speculative, streaming, trace
    from course_lib.decoding.paged import generate_paged
    from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings
    from course_lib.decoding.static import generate_static
    from course_lib.distributed.tp_gpt import tp_generate
    from course_lib.text.gpt import GPT

    entry_points = [GPT.generate, decode.generate, decode.generate_ids, batching.generate_batch, generate_static,
                    generate_paged, speculative.speculative_generate, speculative.prompt_lookup_generate,
                    streaming.generate_stream, trace.generate_with_trace, quality.generate_scored, tp_generate]
    defaults = {f.__qualname__: inspect.signature(f).parameters["temperature"].default for f in entry_points}
    assert defaults == dict.fromkeys(defaults, DEFAULT_TEMPERATURE) == dict.fromkeys(defaults, 1.0)
    assert SamplingSettings().temperature == DEFAULT_TEMPERATURE
