"""Chapter 09: tensor-parallel layers (one process, ranks simulated), torchrun paths (2 gloo processes),
and the messages of bad setups. The torchrun launches take ~35 s together on 2 cores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib.core.layers import Attention, SwiGLU, rope_angles
from course_lib.core.paths import REPO_ROOT
from course_lib.distributed.comm import Comm
from course_lib.distributed.generate import main as generate_main
from course_lib.distributed.launch import free_port, one_launch_at_a_time
from course_lib.distributed.process_group import DistSetupError, check_divides, check_env
from course_lib.distributed.tp_gpt import TPGPT, global_argmax, local_max_pair, tp_generate
from course_lib.distributed.tp_layers import (
    TPAttention,
    TPSwiGLU,
    VocabParallelTable,
    column_shard,
    row_shard,
    shard_range,
    shard_sizes,
)


class PartialComm(Comm):
    """A rank's Comm whose all-reduce returns its own partial sum: lets one process check the shards."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ------------------------------------------------------------------ shards, one process
@pytest.mark.parametrize("n, world", [(12, 2), (100277, 2), (7, 3), (2, 4)])
def test_shard_ranges_tile_the_rows(n, world):
    ranges = [shard_range(n, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
    assert max(shard_sizes(n, world)) - min(shard_sizes(n, world)) <= 1


def test_column_shards_concatenate_and_row_shards_sum_to_the_full_linear():
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(16, 10, bias=False), torch.randn(3, 16)
    full = lin(x)
    cols = torch.cat([F.linear(x, column_shard(lin.weight, r, 3)) for r in range(3)], -1)
    # Each output feature is the same dot product; BLAS may pick another kernel for fewer rows, so
    # the last bit can differ: equal up to float rounding, not bitwise.
    torch.testing.assert_close(cols, full, rtol=1e-6, atol=1e-7)
    rows = []
    for r in range(3):
        a, b = shard_range(16, r, 3)
        rows.append(F.linear(x[:, a:b], row_shard(lin.weight, r, 3)))
    torch.testing.assert_close(sum(rows), full, rtol=1e-6, atol=1e-6)  # a sum in another order: rounding only


@pytest.mark.parametrize("world", [1, 2, 4])
def test_attention_and_swiglu_partials_sum_to_the_full_layer(world):
    torch.manual_seed(1)
    attn, ffn = Attention(32, 4, causal=True).eval(), SwiGLU(32, 96).eval()
    x = torch.randn(2, 5, 32)
    rope = rope_angles(torch.arange(5), 8)
    attn_parts = [TPAttention(attn, r, world).partial(x, rope) for r in range(world)]
    ffn_parts = [TPSwiGLU(ffn, r, world).partial(x) for r in range(world)]
    torch.testing.assert_close(sum(attn_parts), attn(x, rope), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(ffn_parts), ffn(x), rtol=1e-5, atol=1e-6)


def test_vocab_parallel_lookup_and_logits_are_exact():
    torch.manual_seed(2)
    table = torch.randn(11, 8)
    ids = torch.tensor([[0, 5, 6, 10, 3]])
    parts = [VocabParallelTable(table, PartialComm(r, 2)) for r in range(2)]
    assert torch.equal(sum(p.embed(ids) for p in parts), F.embedding(ids, table))  # others add exact zeros
    h = torch.randn(2, 8)
    torch.testing.assert_close(torch.cat([p.local_logits(h) for p in parts], -1), h @ table.T, rtol=1e-6, atol=1e-7)


def test_distributed_argmax_is_torch_argmax_including_ties():
    logits = torch.randn(4, 11)
    logits[1, 3] = logits[1, 8] = 50.0  # a tie across the two slices: the lower id wins
    logits[2, 6] = logits[2, 7] = 50.0  # a tie inside one slice
    sizes = shard_sizes(11, 2)
    slices = logits.split(sizes, -1)
    pairs = torch.stack([local_max_pair(s, shard_range(11, r, 2)[0]) for r, s in enumerate(slices)], 1)
    assert torch.equal(global_argmax(pairs)[:, 0], logits.argmax(-1))


def test_world_size_one_tp_model_decodes_exactly_like_the_model(make_gpt):
    model = make_gpt(seed=3)
    tp = TPGPT(model, Comm(0, 1))
    idx = torch.tensor([[1, 2, 3, 4]])
    for temperature, top_k in [(0.0, None), (0.9, 20)]:
        ref = model.generate(idx, 8, temperature, top_k, generator=torch.Generator().manual_seed(5))
        out = tp_generate(tp, idx, 8, temperature, top_k, generator=torch.Generator().manual_seed(5))
        assert torch.equal(out, ref)
    assert tp.new_cache(1).k.shape[2] == 4  # all heads in one process


# ------------------------------------------------------------------ bad setups
def test_setup_errors_name_the_fix():
    with pytest.raises(DistSetupError, match=r"RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set.*torchrun --nproc_per_node 2"):
        check_env(env={})
    with pytest.raises(DistSetupError, match=r"MASTER_ADDR not set"):
        check_env(env={"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
    with pytest.raises(DistSetupError, match=r"world size 3 does not divide the model's 4 attention heads; use --nproc_per_node in \[1, 2, 4\]"):
        check_divides(3, 4)


def test_cli_by_hand_and_bad_world_size_exit_2(monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert generate_main(["--prompt", "Sunbeam"]) == 2
    assert "not set" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert generate_main(["--prompt", "Sunbeam"]) == 2  # refused before joining any process group
    assert "does not divide the model's 4 attention heads" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        generate_main(["--prompt", "x", "--max_new_tokens", "0"])
    assert exc.value.code == 2


# ------------------------------------------------------------------ torchrun, 2 gloo processes


def torchrun(*args: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    with one_launch_at_a_time():
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.9", "--top_k", "50", "--seed", "3"]],
                         ids=["greedy", "sampling"])
def test_torchrun_tensor_parallel_text_equals_single_process(shipped_gpt, sampling):
    from course_lib.text.tokenizer import get_encoding
    r = torchrun("-m", "course_lib.distributed.generate", "--prompt", "Sunbeam", "--max_new_tokens", "24", *sampling)
    assert r.returncode == 0, r.stderr[-2000:]
    enc = get_encoding()
    idx = torch.tensor([enc.encode("Sunbeam")])
    temperature, top_k = (0.9, 50) if sampling else (0.0, None)
    ref = shipped_gpt.generate(idx, 24, temperature, top_k, generator=torch.Generator().manual_seed(3 if sampling else 0))
    assert r.stdout == enc.decode(ref[0].tolist()) + "\n"  # printed once: by rank 0 only


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux /proc")
def test_shutdown_leaves_no_gloo_threads_even_when_torch_compiler_loads_late(tmp_path):
    """Building a model on the meta device imports torch._dynamo lazily, after the process group exists.
    If that import kept the group alive, gloo's threads would still run at exit and a rank could die
    with SIGABRT after its work was done (seen as rare CI failures); init_from_env prevents it."""
    script = tmp_path / "threads.py"
    script.write_text(
        "import os, sys, torch\n"
        "from course_lib.distributed.process_group import init_from_env, shutdown\n"
        "info = init_from_env('cpu', timeout=30)\n"
        "with torch.device('meta'):\n"
        "    torch.nn.Embedding(4, 4)  # the first call that imports the compiler\n"
        "assert 'torch._dynamo' in sys.modules\n"
        "torch.distributed.all_reduce(torch.ones(2))\n"
        "shutdown()\n"
        "names = sorted(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task'))\n"
        f"open(f'{tmp_path}/rank{{info.rank}}.txt', 'w').write(repr([n for n in names if 'gloo' in n]))\n")
    r = torchrun(str(script))  # each rank writes its own file: the two ranks' stdout lines can interleave
    assert r.returncode == 0, r.stderr[-2000:]
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == ["[]", "[]"]


def test_a_rank_that_stops_answering_ends_the_others_after_the_timeout(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(
        "import sys, time, torch\n"
        "from course_lib.distributed.process_group import init_from_env, timeout_message\n"
        "info = init_from_env('cpu', timeout=3)\n"
        "if info.rank == 1:\n"
        "    time.sleep(60)  # alive but never joins the all-reduce\n"
        "try:\n"
        "    torch.distributed.all_reduce(torch.ones(1))\n"
        "except Exception as exc:\n"
        "    print(timeout_message(info.rank, 3, exc), file=sys.stderr)\n"
        "    sys.exit(1)\n")
    t0 = time.perf_counter()
    r = torchrun(str(script))
    assert r.returncode != 0
    assert "rank 0: a collective failed or waited more than 3 s for the other ranks" in r.stderr
    assert time.perf_counter() - t0 < 45  # not the 60 s sleep: the timeout ended it


@pytest.fixture(scope="module")
def act_setup(tmp_path_factory):
    from course_lib.act.build_dataset import build
    from course_lib.act.model import ACTReasoner
    from course_lib.core.checkpoints import write_json_atomic
    root = tmp_path_factory.mktemp("act_dist")
    torch.manual_seed(0)
    model = ACTReasoner({"hidden_size": 32, "num_heads": 4, "halt_max_steps": 3})
    (root / "run").mkdir()
    torch.save(model.state_dict(), root / "run" / "step_7")
    write_json_atomic(model.config, root / "run" / "all_config.json")
    return root, root / "run" / "step_7", build(root / "data", seed=5, num_train=0, num_test=12)


def test_torchrun_act_evaluation_equals_single_process(act_setup):
    from course_lib.act.inference import main as act_main
    root, ckpt, data = act_setup
    args = ["--checkpoint", str(ckpt), "--data_paths", str(data), "--batch_size", "20", "--device", "cpu",
            "--halting", "dynamic", "--save_outputs", "preds", "puzzle_identifiers"]
    one, two = root / "one", root / "two"
    env_keys = ("RANK", "WORLD_SIZE")
    assert not any(k in os.environ for k in env_keys)
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert act_main([*args, "--output_dir", str(one)]) == 0
    r = torchrun("-m", "course_lib.act.inference", *args, "--output_dir", str(two))
    assert r.returncode == 0, r.stderr[-2000:]
    norm = lambda text, d: re.sub(re.escape(str(d)), "OUT", text)  # noqa: E731
    assert norm(r.stdout, two) == norm(buf.getvalue(), one)
    sub = "evaluator_ARC_step_7/submission.json"
    assert (two / sub).read_bytes() == (one / sub).read_bytes()
    single = torch.load(one / "step_7_all_preds.0", weights_only=True)
    ranks = [torch.load(two / f"step_7_all_preds.{r}", weights_only=True) for r in (0, 1)]
    assert not (two / "step_7_all_preds.2").exists()
    # rank r holds its half of every batch of 20 rows (48 rows: 10+10, 10+10, 4+4)
    order = torch.cat([ranks[r]["puzzle_identifiers"][b * 10:(b + 1) * 10] for b in range(3) for r in (0, 1)])
    assert torch.equal(order, single["puzzle_identifiers"])
