"""Hostile input (issue 10): every case ends in one clear message (CLIs: exit 2) — never a raw
traceback, a silent overwrite, mixed results, or an unsafe pickle misreported as corruption."""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from course_lib.core.checkpoints import CheckpointError, atomic_save, load_checkpoint
from course_lib.core.paths import REPO_ROOT


def run_module(module: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=timeout)


# ------------------------------------------------------------------------------- checkpoints
class _Reduce:
    """Pickles as a call of f(*args): the classic payload."""

    def __init__(self, f, args):
        self.f, self.args = f, args

    def __reduce__(self):
        return self.f, self.args


class Custom:
    pass


PAYLOADS = {
    "os.system": (lambda: _Reduce(os.system, ("echo pwned",)), "system"),
    "builtins.eval": (lambda: _Reduce(builtins.eval, ("1 + 1",)), "eval"),
    "subprocess.Popen": (lambda: _Reduce(subprocess.Popen, (["true"],)), "Popen"),
    "custom class": (lambda: Custom(), "Custom"),
    "numpy array": (lambda: np.arange(3), "numpy"),
}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_unsafe_payloads_are_named_unsafe_with_their_global(tmp_path, payload, zip_format):
    make, needle = PAYLOADS[payload]
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": make()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "refused to load" in msg and "execute code" in msg and "corrupted" not in msg, msg
    assert needle in msg.split("(found ")[1].split(")")[0], msg
    assert "\n" not in msg


@pytest.mark.parametrize("first", range(256))
def test_any_first_byte_gives_a_checkpoint_error(tmp_path, first):
    for tail in (b"hello, this is a text file\nline 2\n", b"\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9"):
        path = tmp_path / "x.pt"
        path.write_bytes(bytes([first]) + tail)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_text_file_is_named_as_text(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not weights\n")
    with pytest.raises(CheckpointError, match=r"not a torch checkpoint: it is a text file starting with 'these are"):
        load_checkpoint(path)


def test_git_lfs_pointer_is_recognised(tmp_path):
    path = tmp_path / "text_gpt.pt"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 12345\n")
    with pytest.raises(CheckpointError, match=r"Git LFS pointer.*git lfs pull"):
        load_checkpoint(path)


@pytest.mark.parametrize("obj, needle", [
    ({"w": np.zeros(3)}, "numpy.ndarray"),
    ({"cfg": {"inner": [1, Custom()]}}, "checkpoint['cfg']['inner'][1]"),
    ([torch.zeros(2)], "a checkpoint is a dict"),
])
def test_atomic_save_refuses_what_load_checkpoint_refuses(tmp_path, obj, needle):
    with pytest.raises(CheckpointError, match="refusing to save") as err:
        atomic_save(obj, tmp_path / "m.pt")
    assert needle in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_atomic_save_round_trips_plain_values(tmp_path):
    obj = {"h": {"a": 1, "b": 2.5, "c": "x", "d": None, "e": (1, 2), "f": [True]}, "sd": {"w": torch.ones(2)},
           "dtype": torch.float16, "size": torch.Size([2, 3])}
    back = load_checkpoint(atomic_save(obj, tmp_path / "ok.pt"))
    assert back["h"] == obj["h"] and torch.equal(back["sd"]["w"], obj["sd"]["w"]) and back["dtype"] == torch.float16


def test_unpicklable_bytes_are_checked_too(tmp_path):
    """Saving must never produce bytes load_checkpoint refuses, whatever the walk above misses."""
    assert load_checkpoint(atomic_save({"b": io.BytesIO(b"x").getvalue()}, tmp_path / "b.pt"))["b"] == b"x"


# ------------------------------------------------------------------------- act.inference
@pytest.fixture(scope="module")
def act_setup(tmp_path_factory):
    from course_lib.act.build_dataset import build
    from course_lib.act.model import ACTReasoner
    from course_lib.core.checkpoints import write_json_atomic

    root = tmp_path_factory.mktemp("act_bad")
    torch.manual_seed(0)
    model = ACTReasoner({"hidden_size": 32, "num_heads": 4, "halt_max_steps": 2})
    (root / "run").mkdir()
    torch.save(model.state_dict(), root / "run" / "step_5")
    write_json_atomic(model.config, root / "run" / "all_config.json")
    a = build(root / "a" / "ds", seed=1, num_train=0, num_test=4)
    b = build(root / "b" / "ds", seed=2, num_train=0, num_test=4)
    return root, root / "run" / "step_5", a, b


def act_main(*args: str) -> int:
    from course_lib.act.inference import main

    return main([*args, "--device", "cpu", "--batch_size", "64"])


def test_act_output_dir_is_claimed_at_start_and_a_second_run_is_refused(act_setup, capsys, monkeypatch):
    import course_lib.act.inference as inf

    root, ckpt, a, _ = act_setup
    out = root / "claimed"
    seen = {}

    def spy(*args, **kwargs):  # the folder must exist (claimed) before any compute starts
        seen["claimed"] = (out / "run.json").is_file()
        return real(*args, **kwargs)

    real = inf.run_forced
    monkeypatch.setattr(inf, "run_forced", spy)
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out)) == 0
    assert seen["claimed"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(SystemExit) as exc:  # the same --output_dir again: refused, nothing touched
        act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out))
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_act_claim_race_loser_is_refused(act_setup, capsys, monkeypatch):
    """Two runs that both passed the up-front check: the one that claims second gets one line and exit 2."""
    import course_lib.act.inference as inf

    root, ckpt, a, _ = act_setup
    out = root / "race"
    real = inf.claim_output_dir

    def other_run_first(path, record):
        real(path, {"other": "run"})  # another process claims the folder between our check and our claim
        return real(path, record)

    monkeypatch.setattr(inf, "claim_output_dir", other_run_first)
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already used by another run" in err[0]
    assert [p.name for p in out.iterdir()] == ["run.json"] and "other" in (out / "run.json").read_text()


def test_act_default_folders_never_collide(monkeypatch, tmp_path):
    import course_lib.act.inference as inf

    monkeypatch.setattr(inf, "DEFAULT_ROOT", tmp_path / "act_inference")
    a, _ = inf.claim_output_dir(None, {})
    b, _ = inf.claim_output_dir(None, {})
    assert a != b and a.name == "run-001" and b.name == "run-002"


def test_act_same_folder_name_is_scored_separately(act_setup, capsys):
    root, ckpt, a, b = act_setup
    out = root / "two"
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), str(b), "--output_dir", str(out),
                    "--save_outputs", "puzzle_identifiers") == 0
    text = capsys.readouterr().out
    assert "a/ds/all:" in text and "b/ds/all:" in text
    sub = __import__("json").loads((out / "evaluator_ARC_step_5" / "submission.json").read_text())
    assert len(sub) == 8 and {k.split("/")[0] for k in sub} == {"a", "b"}


def test_act_same_data_path_twice_exits_2(act_setup, capsys):
    root, ckpt, a, _ = act_setup
    with pytest.raises(SystemExit) as exc:
        act_main("--checkpoint", str(ckpt), "--data_paths", str(a), str(a) + "/", "--output_dir", str(root / "twice"))
    assert exc.value.code == 2 and "twice" in capsys.readouterr().err
    assert not (root / "twice").exists()


@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_act_unusable_output_dir_exits_2_before_compute(act_setup, where):
    root, ckpt, a, _ = act_setup
    (root / "afile").write_text("x")
    out = {"under_file": root / "afile" / "out", "proc": "/proc/act_out"}[where]
    r = run_module("course_lib.act.inference", "--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--output_dir" in r.stderr and ("is a file" in r.stderr or "not writable" in r.stderr)
    assert len(r.stderr.strip().splitlines()[-1]) < 300


def test_act_ctrl_c_removes_the_claimed_folder_and_exits_130(act_setup, capsys, monkeypatch):
    import course_lib.act.inference as inf

    root, ckpt, a, _ = act_setup

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inf, "run_forced", interrupt)
    out = root / "interrupted"
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out)) == 130
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


# ------------------------------------------------------------------------------ run_course
def test_run_course_ctrl_c_leaves_no_partial_notebook_and_exits_130(tmp_path, capsys, monkeypatch):
    papermill = pytest.importorskip("papermill")
    from course_lib.course.run_course import main

    def interrupted(nb, out, **kwargs):
        open(out, "w").write("{half a notebook")
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert main(["--out", str(tmp_path / "build"), "--only", "04"]) == 130
    assert not list((tmp_path / "build").rglob("*.ipynb"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


@pytest.mark.parametrize("data, needle", [
    (b"\x00\x01binary\x02", "looks binary"),
    (b"04:\n  seed: 3\n  name: \xff\xfe\n", "is not UTF-8"),
    (b"04:\n  seed: \x07\n", "is not valid YAML"),
])
def test_run_course_bad_yaml_bytes_exit_2(tmp_path, capsys, data, needle):
    from course_lib.course.run_course import main

    (tmp_path / "p.yaml").write_bytes(data)
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "build")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and needle in err[-1] and not (tmp_path / "build").exists()


def test_run_course_strips_a_bom_and_refuses_a_notebook_named_twice(tmp_path):
    import yaml

    from course_lib.course.run_course import notebooks, read_text_file, resolve_params

    (tmp_path / "p.yaml").write_bytes(b"\xef\xbb\xbf04:\n  seed: 3\n")
    spec = yaml.safe_load(read_text_file(tmp_path / "p.yaml"))
    assert resolve_params(spec, notebooks()) == {next(p for p in notebooks() if p.stem.startswith("04")): {"seed": 3}}
    with pytest.raises(ValueError, match="names 04_act_halting_loops twice"):
        resolve_params({"04": {"seed": 1}, "04_act_halting_loops": {"seed": 2}}, notebooks())
    with pytest.raises(ValueError, match="twice"):
        resolve_params(yaml.safe_load("0:\n  seed: 1\n00_setup_and_tour:\n  seed: 2\n"), notebooks())


@pytest.mark.parametrize("module, flag, extra", [
    ("course_lib.course.run_course", "--out", ["--only", "04"]),
    ("course_lib.act.build_dataset", "--out", ["--seed", "0", "--num-train", "0", "--num-test", "2"]),
])
@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_unusable_output_folder_exits_2_before_compute(tmp_path, module, flag, extra, where):
    (tmp_path / "afile").write_text("x")
    out = {"under_file": str(tmp_path / "afile" / "out"), "proc": "/proc/course_out"}[where]
    r = run_module(module, flag, out, *extra)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("is a file" in r.stderr or "not writable" in r.stderr) and flag in r.stderr.splitlines()[-1]


# ------------------------------------------------------------------ text model and sampling
TINY = {"vocab_size": 100277, "n_embd": 8, "n_layer": 1, "n_head": 2, "block_size": 16}


@pytest.fixture(scope="module")
def tiny_gpt():
    from course_lib.text.gpt import GPT

    torch.manual_seed(0)
    return GPT(TINY).eval()


def test_tiny_temperature_is_refused_not_nan(tiny_gpt):
    x = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"temperature 1e-300 is too small.*use 0 for greedy"):
        tiny_gpt.generate(x, 2, temperature=1e-300)
    with pytest.raises(ValueError, match="temperature must be finite"):
        tiny_gpt.generate(x, 2, temperature=float("inf"))


def test_numpy_scalars_are_numbers(tiny_gpt):
    x = torch.tensor([[1, 2, 3]])
    g = torch.Generator().manual_seed(0)
    out = tiny_gpt.generate(x, 3, temperature=np.float32(0.7), top_k=np.int64(5), top_p=np.float64(0.9), generator=g)
    ref = tiny_gpt.generate(x, 3, temperature=0.7, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ref)


def test_generate_warns_once_in_training_mode():
    import warnings

    from course_lib.text.gpt import GPT

    model = GPT({**TINY, "dropout": 0.5}).train()
    x = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(x, 2, temperature=0)
        model.generate(x, 2, temperature=0)
        model.eval().generate(x, 2, temperature=0)
    msgs = [str(w.message) for w in caught if "training mode" in str(w.message)]
    assert len(msgs) == 1 and "model.eval()" in msgs[0]


@pytest.mark.parametrize("key, value", [("n_embd", "32"), ("n_layer", 3.0), ("n_head", None), ("block_size", True),
                                        ("vocab_size", 0), ("dropout", float("nan")), ("rope_theta", -1.0)])
def test_gpt_h_params_wrong_types_name_the_key(key, value):
    from course_lib.text.gpt import GPT

    with pytest.raises(ValueError, match=rf"h_params\[{key!r}\]"):
        GPT({**TINY, key: value})


def _save_gpt(tmp_path, sd=None, hp=None):
    from course_lib.text.gpt import GPT

    model = GPT(TINY)
    sd = model.state_dict() if sd is None else sd
    path = tmp_path / "g.pt"
    torch.save({"h_params": TINY if hp is None else hp, "model_state_dict": sd}, path)
    return path, model.state_dict()


@pytest.mark.parametrize("case, needle", [("nan", "holds NaN or inf"), ("int", "expected floating point"),
                                          ("list", "must be a mapping"), ("value", "is a str, not a tensor"),
                                          ("h_params", r"h_params\['n_embd'\] must be an int")])
def test_load_gpt_checks_weights_when_loading(tmp_path, case, needle):
    from course_lib.text.gpt import load_gpt

    path, sd = _save_gpt(tmp_path)
    name = "blocks.0.attn.qkv.weight"
    if case == "nan":
        sd[name][0, 0] = float("nan")
    elif case == "int":
        sd[name] = sd[name].long()
    elif case == "list":
        sd = list(sd.values())
    elif case == "value":
        sd[name] = "oops"
    path, _ = _save_gpt(tmp_path, sd, {**TINY, "n_embd": "8"} if case == "h_params" else None)
    with pytest.raises(CheckpointError, match=needle) as err:
        load_gpt(path)
    assert case in ("list", "h_params") or name in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_gpt_on_missing_cuda_says_so(tmp_path):
    from course_lib.text.gpt import load_gpt

    path, _ = _save_gpt(tmp_path)
    with pytest.raises(RuntimeError, match=r"device='cuda' requested but torch.cuda.is_available\(\) is False"):
        load_gpt(path, device="cuda")


def test_prompts_special_token_text_and_non_strings():
    from course_lib.decoding.batching import generate_batch, pad_batch
    from course_lib.decoding.decode import encode_prompt
    from course_lib.text.tokenizer import get_encoding

    enc = get_encoding()
    plain = encode_prompt(enc, "a <|endoftext|> b", 64)
    assert enc.eot_token not in plain and enc.decode(plain) == "a <|endoftext|> b"
    assert enc.eot_token in encode_prompt(enc, "a <|endoftext|> b", 64, allowed_special="all")
    for bad in (None, 3, b"bytes"):
        with pytest.raises(TypeError, match="prompt must be a str"):
            encode_prompt(enc, bad, 64)
    with pytest.raises(TypeError, match=r"prompts\[1\] is None"):
        pad_batch(enc, ["ok", None], 64)
    with pytest.raises(TypeError, match="prompts must be a list of strings"):
        generate_batch(None, enc, None, 3, temperature=0.0)


# ------------------------------------------------------------------------ notebook parameters
def test_unknown_injected_parameter_is_rejected():
    from course_lib.course.notebook import ParameterError, check_no_unknown_params

    params_cell = 'device = "cpu"\nseed = 0\nthreshold = 0.5'
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['sede'\].*declares device, seed, threshold"):
        check_no_unknown_params(["", "import x", params_cell, "# Parameters\nsede = 3\n", "check()"])
    check_no_unknown_params(["", params_cell, "# Parameters\nseed = 3\nthreshold = 1\n"])  # known names pass
    check_no_unknown_params(["", params_cell, "print(1)"])  # no papermill: nothing to check


def test_check_param_int_for_float_empty_text_missing_file_and_lists():
    from course_lib.course.notebook import ParameterError, check_param

    assert check_param("threshold", 1, kind=float, low=0.0, high=1.0) == 1
    with pytest.raises(ParameterError, match="must be float"):
        check_param("threshold", True, kind=float)
    with pytest.raises(ParameterError, match="'prompt' is empty"):
        check_param("prompt", "  ", kind=str, nonempty=True)
    with pytest.raises(ParameterError, match=r"'prompts_file': file not found: assets/nope.txt"):
        check_param("prompts_file", "assets/nope.txt", kind=str, file=True)
    check_param("checkpoint", "checkpoints/act/step_8000", kind=str, file=True)
    with pytest.raises(ParameterError, match=r"pass lists with -y, e.g. papermill ... -y 'temperatures: \[1, 2\]'"):
        check_param("temperatures", "[0.3, 0.7]", kind=list)


def test_papermill_misspelt_parameter_stops_at_the_parameters_cell(tmp_path):
    pm = pytest.importorskip("papermill")
    from course_lib.core.paths import NOTEBOOKS

    nb = NOTEBOOKS / "04_act_halting_loops.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={"sede": 3}, cwd=str(NOTEBOOKS),
                            kernel_name="python3", progress_bar=False)
    assert "ParameterError" in str(err.value) and "unknown parameter(s) ['sede']" in str(err.value)


# -------------------------------------------------------------- ACT config, data, build_dataset
@pytest.mark.parametrize("cfg, needle", [
    ({"hidden_size": 32, "num_heads": 4, "halt_max_step": 3}, "unknown config key(s) ['halt_max_step']"),
    ({"hidden_size": "32", "num_heads": 4}, "'hidden_size' must be an integer >= 1, got '32'"),
    ({"hidden_size": 32, "num_heads": 4, "act_continue": 1}, "'act_continue' must be true or false"),
    ({"hidden_size": 32, "num_heads": 4, "rope_theta": None}, "'rope_theta' must be a finite number"),
    ([1, 2], "must hold a JSON object"),
])
def test_act_config_unknown_key_or_wrong_type_exits_2(act_setup, tmp_path, capsys, cfg, needle):
    import json
    import shutil

    root, ckpt, a, _ = act_setup
    bad = tmp_path / "run"
    bad.mkdir()
    shutil.copy(ckpt, bad / ckpt.name)
    (bad / "all_config.json").write_text(json.dumps(cfg))
    assert act_main("--checkpoint", str(bad / ckpt.name), "--data_paths", str(a), "--output_dir", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --checkpoint") and needle in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("field, array, needle", [
    ("inputs", np.zeros((3, 7), np.int32), "must be integers of shape"),
    ("labels", np.zeros((16, 25), np.float32), "must be integers of shape"),
    ("inputs", np.full((16, 25), 99, np.int32), "tokens outside"),
    ("puzzle_identifiers", np.full(16, 10_000, np.int32), "points past identifiers.json"),
])
def test_act_malformed_dataset_arrays_exit_2(act_setup, tmp_path, capsys, field, array, needle):
    import shutil

    root, ckpt, a, _ = act_setup
    bad = tmp_path / "ds"
    shutil.copytree(a, bad)
    np.save(bad / "test" / f"all__{field}.npy", array)
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(bad), "--output_dir", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data_paths") and needle in err[0], err


def test_act_empty_test_split_exits_2(act_setup, tmp_path, capsys):
    import shutil

    root, ckpt, a, _ = act_setup
    bad = tmp_path / "ds"
    shutil.copytree(a, bad)
    for f, shape in (("inputs", (0, 25)), ("labels", (0, 25)), ("puzzle_identifiers", (0,)), ("blanks", (0,))):
        np.save(bad / "test" / f"all__{f}.npy", np.zeros(shape, np.int32))
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(bad), "--output_dir", str(tmp_path / "o")) == 2
    assert "holds no puzzles (an empty split)" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [(["--num-test", "5000"], "use --num-test <= 4628"),
                                          (["--num-train", "70411", "--num-test", "1"], "keep the sum <= 70411")])
def test_build_dataset_sizes_beyond_the_puzzle_space_exit_2(tmp_path, args, needle):
    r = run_module("course_lib.act.build_dataset", "--out", str(tmp_path / "d"), "--seed", "0", *args, timeout=60)
    assert r.returncode == 2 and needle in r.stderr.splitlines()[-1] and not (tmp_path / "d").exists()


def test_build_dataset_uses_the_umask_and_a_concurrent_loser_gets_one_line(tmp_path, monkeypatch, capsys):
    import course_lib.act.build_dataset as bd

    old = os.umask(0o022)
    try:
        out = bd.build(tmp_path / "d", seed=0, num_train=2, num_test=2)
    finally:
        os.umask(old)
    assert all((p.stat().st_mode & 0o777) == 0o755 for p in (out, out / "train", out / "test"))

    real = bd.write_split

    def other_run_finishes_first(folder, split, *args, **kwargs):
        real(folder, split, *args, **kwargs)
        if split == "test":  # another run renames its dataset into --out while this one is still writing
            (tmp_path / "race" / "train").mkdir(parents=True)

    monkeypatch.setattr(bd, "write_split", other_run_finishes_first)
    assert bd.main(["--out", str(tmp_path / "race"), "--seed", "0", "--num-train", "2", "--num-test", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "created by another run meanwhile" in err[0]
    assert [p.name for p in (tmp_path / "race").iterdir()] == ["train"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".race.")]


# ============================================================ issue 20 (inputs): notebook parameters
@pytest.mark.parametrize("name, value, kw, needle", [
    ("threshold", float("nan"), dict(kind=float, low=0.0, high=1.0), "must be a finite number, got nan"),
    ("temperature", float("inf"), dict(kind=(int, float), low=0, high=5), "must be a finite number, got inf"),
    ("extend_factor", float("-inf"), dict(kind=(int, float), low=1.0, high=64.0), "must be a finite number, got -inf"),
    ("extend_factor", float("nan"), dict(kind=(int, float), low=1.0, high=64.0), "must be a finite number, got nan"),
    ("seed", 10**30, dict(kind=int, low=0), r"must be an int in \[0, 4294967295\], got 10000"),
    ("seed", -1, dict(kind=int, low=0), r"must be >= 0, got -1"),
    ("n", -(10**30), dict(kind=int, high=5), r"must be an int in \[-4294967295, 5\]"),
    ("batch_lengths", [], dict(kind=list, nonempty=True), "is an empty list; give at least one value"),
])
def test_check_param_refuses_nan_inf_huge_ints_and_empty_lists(name, value, kw, needle):
    from course_lib.course.notebook import ParameterError, check_param

    with pytest.raises(ParameterError, match=needle) as err:
        check_param(name, value, **kw)
    assert "\n" not in str(err.value) and repr(name) in str(err.value)


def test_check_param_still_accepts_what_it_should():
    from course_lib.course.notebook import INT_PARAM_MAX, check_param

    assert check_param("seed", INT_PARAM_MAX, kind=int, low=0) == INT_PARAM_MAX
    assert check_param("threshold", 1, kind=float, low=0.0, high=1.0) == 1  # an int where a float is meant
    assert check_param("top_ks", [], kind=list) == []  # empty is fine where it means "none"
    assert check_param("temperature", 0.7, kind=(int, float), low=0, high=5) == 0.7


def _papermill_04(tmp_path, **parameters):
    pm = pytest.importorskip("papermill")
    from course_lib.core.paths import NOTEBOOKS

    nb = NOTEBOOKS / "04_act_halting_loops.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=parameters, cwd=str(NOTEBOOKS),
                            kernel_name="python3", progress_bar=False)
    return err.value


def test_papermill_04_threshold_nan_stops_at_the_parameters_check(tmp_path):
    from papermill.cli import _resolve_type

    value = _resolve_type("nan")  # what `papermill ... -p threshold nan` passes
    err = _papermill_04(tmp_path, threshold=value)
    assert err.ename == "ParameterError" and "\n" not in err.evalue
    assert "'threshold' must be a finite number, got nan" in err.evalue
    assert "check_param" in err.source  # the parameters check cell, not twenty cells later


def test_papermill_04_unknown_name_stops_with_one_line(tmp_path):
    err = _papermill_04(tmp_path, sede=3)
    assert err.ename == "ParameterError" and "\n" not in err.evalue and "unknown parameter(s) ['sede']" in err.evalue


# ======================================================= issue 20 (inputs): pickle protocols 2-5
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_safe_checkpoint_loads_under_any_pickle_protocol(tmp_path, protocol, zip_format):
    import collections

    obj = {"h_params": {"n": 1, "name": "x", "t": (1, 2)}, "sd": collections.OrderedDict(w=torch.arange(6.0).view(2, 3)),
           "half": torch.ones(2, dtype=torch.float16), "b": b"xy", "size": torch.Size([2, 3])}
    path = tmp_path / "ok.pt"
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    back = load_checkpoint(path)
    assert back["h_params"] == obj["h_params"] and torch.equal(back["sd"]["w"], obj["sd"]["w"])
    assert back["half"].dtype == torch.float16 and back["b"] == b"xy" and back["size"] == torch.Size([2, 3])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_protocol_4_and_5_unsafe_globals_are_named_and_never_run(tmp_path, payload, protocol, zip_format, monkeypatch):
    make, needle = PAYLOADS[payload]
    ran = []
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": make()}, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    monkeypatch.setattr(os, "system", lambda *a: ran.append(a))  # the payload must never execute
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "refused to load" in msg and "corrupted" not in msg and "\n" not in msg, msg
    assert needle in msg.split("(found ")[1].split(")")[0], msg
    assert not ran


def test_stack_global_names_come_from_the_memo(tmp_path):
    """A protocol 4 pickle that names its module by BINGET of a memoized string is still read right."""

    from course_lib.core.checkpoints import unsafe_globals

    path = tmp_path / "x.pt"
    # PROTO 4, module string memoized, name, STACK_GLOBAL; then the same module again via BINGET
    body = (b"\x80\x04" + b"\x8c\x05posix\x94" + b"\x8c\x06system\x94" + b"\x93\x94"
            + b"h\x00" + b"\x8c\x04nice\x94" + b"\x93" + b"\x86." )
    path.write_bytes(body)
    assert unsafe_globals(path) == ["posix.system", "posix.nice"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_truncated_protocol_4_file_is_called_corrupted(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(100)}, path, pickle_protocol=4, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


# ================================================ issue 20 (inputs): absurd sizes, non-finite weights
def _loaders():
    from course_lib.act.checkpoint import load_reasoner
    from course_lib.motion.classifier import load_classifier
    from course_lib.motion.gpt import load_trans
    from course_lib.motion.text_encoder import load_text_encoder
    from course_lib.motion.vqvae import load_vqvae
    from course_lib.text.draft import load_draft
    from course_lib.text.gpt import load_gpt

    # kind: (shipped file, loader, key of the config dict, key of the state dict)
    return {
        "text": ("text_gpt.pt", load_gpt, "h_params", "model_state_dict"),
        "draft": ("draft_gpt.pt", load_draft, "h_params", "model_state_dict"),
        "motion_trans": ("motion/trans.pth", load_trans, "config", "trans"),
        "vqvae": ("motion/vqvae.pth", load_vqvae, "config", "net"),
        "text_encoder": ("motion/text_encoder.pt", load_text_encoder, "config", "state_dict"),
        "classifier": ("motion/action_classifier.pt", load_classifier, "config", "state_dict"),
        "act": ("act/step_8000", load_reasoner, None, None),
    }


ABSURD = [
    ("text", {"vocab_size": 10**12}), ("text", {"n_embd": 2**20, "n_head": 4}), ("text", {"n_layer": 10**7}),
    ("text", {"block_size": 10**7}), ("draft", {"target_vocab_size": 10**12}),
    ("motion_trans", {"n_embd": 2**20}), ("motion_trans", {"n_layer": 10**7}), ("motion_trans", {"block_size": 10**7}),
    ("vqvae", {"width": 10**6}), ("vqvae", {"nb_code": 10**10}), ("vqvae", {"depth": 10**6}),
    ("text_encoder", {"vocab_size": 10**11}), ("text_encoder", {"n_layer": 10**8}),
    ("classifier", {"width": 10**6}),
    ("act", {"hidden_size": 2**20}), ("act", {"halt_max_steps": 10**9}), ("act", {"H_layers": 10**7}),
    ("act", {"H_cycles": 1000, "L_cycles": 1000}),
]


def _copy_with(tmp_path, kind, config=None, nan=False):
    """A copy of a shipped checkpoint with config keys replaced and/or its first float tensor set to NaN."""
    import json

    from course_lib.core.paths import CHECKPOINTS

    name, loader, cfg_key, sd_key = _loaders()[kind]
    ckpt = torch.load(CHECKPOINTS / name, weights_only=True)
    out = tmp_path / Path(name).name
    if kind == "act":
        cfg = json.loads((CHECKPOINTS / "act" / "all_config.json").read_text())
        (tmp_path / "all_config.json").write_text(json.dumps({**cfg, **(config or {})}))
        sd = ckpt
    else:
        ckpt[cfg_key] = {**ckpt[cfg_key], **(config or {})}
        sd = ckpt[sd_key]
    if nan:
        key = next(k for k, v in sd.items() if v.is_floating_point())
        sd[key] = sd[key].clone()
        sd[key].view(-1)[0] = float("nan")
    torch.save(ckpt, out)
    return out, loader, (key if nan else None)


from pathlib import Path  # noqa: E402


@pytest.mark.parametrize("kind, config", ABSURD, ids=[f"{k}-{'-'.join(c)}" for k, c in ABSURD])
def test_absurd_sizes_are_refused_before_allocating(tmp_path, kind, config, monkeypatch):
    import time

    from course_lib.core.checkpoints import CheckpointError
    from course_lib.core.sizes import MAX_MODEL_BYTES

    path, loader, _ = _copy_with(tmp_path, kind, config)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        loader(path)
    assert time.perf_counter() - start < 60  # refused, not built (a build would take minutes or fail in the allocator)
    msg = str(err.value)
    assert "\n" not in msg and (path.name in msg or "all_config.json" in msg), msg
    assert "above the loader's limit of" in msg and any(k in msg for k in config), msg
    assert f"{MAX_MODEL_BYTES / 2**30:.3g} GiB" in msg or "limit of 1024" in msg or "limit of 64" in msg or "65,536" in msg, msg


def test_size_message_has_the_estimate_and_the_limit(tmp_path):
    from course_lib.core.checkpoints import CheckpointError
    from course_lib.text.gpt import load_gpt

    path, _, _ = _copy_with(tmp_path, "text", {"vocab_size": 10**9})
    with pytest.raises(CheckpointError, match=r"\(vocab_size=1000000000, n_embd=64, n_layer=4, block_size=512\) needs about 2,146 GiB .*above the loader's limit of 4 GiB"):
        load_gpt(path)


def test_shipped_models_are_far_below_the_size_limit():
    from course_lib.core.sizes import MAX_MODEL_BYTES
    from course_lib.text.gpt import DEFAULT_H_PARAMS, check_gpt_size

    assert check_gpt_size("checkpoints/text_gpt.pt", DEFAULT_H_PARAMS) < MAX_MODEL_BYTES / 10


@pytest.mark.parametrize("kind", ["text", "draft", "motion_trans", "vqvae", "text_encoder", "classifier", "act"])
def test_nan_weights_are_refused_naming_the_checkpoint_and_tensor(tmp_path, kind):
    from course_lib.core.checkpoints import CheckpointError

    path, loader, key = _copy_with(tmp_path, kind, nan=True)
    with pytest.raises(CheckpointError) as err:
        loader(path)
    msg = str(err.value)
    assert path.name in msg and "NaN" in msg and "\n" not in msg, msg
    assert key.split(".")[-1] in msg, msg


def test_vqvae_nan_statistics_are_refused(tmp_path):
    from course_lib.core.checkpoints import CheckpointError
    from course_lib.core.paths import CHECKPOINTS
    from course_lib.motion.vqvae import load_vqvae

    ckpt = torch.load(CHECKPOINTS / "motion" / "vqvae.pth", weights_only=True)
    ckpt["std"] = ckpt["std"].clone()
    ckpt["std"][3] = float("inf")
    torch.save(ckpt, tmp_path / "vq.pth")
    with pytest.raises(CheckpointError, match=r"vq.pth: tensor 'std' holds inf"):
        load_vqvae(tmp_path / "vq.pth")


def test_act_cli_refuses_nan_weights_with_exit_2(tmp_path):
    path, _, _ = _copy_with(tmp_path, "act", nan=True)
    from course_lib.act.build_dataset import build

    data = build(tmp_path / "ds", seed=3, num_train=0, num_test=2)
    r = run_module("course_lib.act.inference", "--checkpoint", str(path), "--data_paths", str(data),
                   "--output_dir", str(tmp_path / "out"), "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "NaN" in r.stderr and not (tmp_path / "out").exists()


# ================================ issue 20 (inputs): act.inference on a full disk, read-only, symlink loops
def _enospc_on_write(monkeypatch, err=28):
    """Every atomic write (mode "wb") fails as a full disk would (OSError errno 28 from write); the
    run's claim marker (mode "w") still goes through, so the failure comes while saving results."""
    import course_lib.core.files as files

    real_fdopen = files.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(err, os.strerror(err))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode="r", *a, **k: (Full if mode == "wb" else lambda f: f)(
        real_fdopen(fd, mode, *a, **k)))


@pytest.mark.parametrize("err, words", [(28, "the disk is full"), (30, "the file system is read-only")])
def test_act_full_disk_or_read_only_is_one_line_naming_the_file(act_setup, capsys, monkeypatch, err, words):
    root, ckpt, a, _ = act_setup
    out = root / f"full-{err}"
    _enospc_on_write(monkeypatch, err)
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out)) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "step_5_all_preds.0" in lines[0], lines
    assert "unexpected pos" not in lines[0] and "Errno" not in lines[0]
    assert not out.exists()  # the claim is released: nothing half-written


def test_act_output_dir_claim_failing_is_one_line(act_setup, capsys, monkeypatch):
    import course_lib.act.inference as inf

    root, ckpt, a, _ = act_setup

    def read_only(path, record):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(inf, "claim_output_dir", read_only)
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(root / "ro")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0] and "ro" in lines[0]


@pytest.mark.parametrize("flag", ["--checkpoint", "--data_paths", "--output_dir"])
def test_act_symlink_loop_is_one_line_naming_the_path(act_setup, tmp_path, flag):
    root, ckpt, a, _ = act_setup
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    args = {"--checkpoint": str(ckpt), "--data_paths": str(a), "--output_dir": str(tmp_path / "out")}
    args[flag] = str(tmp_path / "l1") + ("/x" if flag == "--output_dir" else "")
    r = run_module("course_lib.act.inference", *[x for kv in args.items() for x in kv])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "symlink loop" in last and str(tmp_path / "l1") in last


def test_display_path_of_a_symlink_loop_does_not_raise(tmp_path):
    from course_lib.core.paths import display_path, link_problem

    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    assert display_path(tmp_path / "l1") == str(tmp_path / "l1")
    assert link_problem(tmp_path / "l1" / "x") == "a symlink loop" and link_problem(tmp_path) is None


@pytest.mark.parametrize("where", ["load_reasoner", "load_split", "claim", "run_forced", "save"])
def test_act_ctrl_c_at_any_stage_is_one_line_exit_130(act_setup, capsys, monkeypatch, where):
    import course_lib.act.inference as inf

    root, ckpt, a, _ = act_setup

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"load_reasoner": "load_reasoner", "load_split": "load_split", "claim": "claim_output_dir",
              "run_forced": "run_forced", "save": "save_tensors"}[where]
    monkeypatch.setattr(inf, target, interrupt)
    out = root / f"ctrl-c-{where}"
    assert act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--output_dir", str(out)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
    assert not out.exists()


# ======================================= issue 20 (inputs): ACT test sets that share a folder name
def test_act_two_12_puzzle_sets_in_folders_of_one_name_give_24_puzzles(tmp_path, capsys):
    """a/ds and b/ds (and a folder whose name holds the variant separator "|") are scored and voted apart."""
    import json

    from course_lib.act.build_dataset import build
    from course_lib.act.checkpoint import SHIPPED

    a = build(tmp_path / "a" / "ds", seed=11, num_train=0, num_test=12)
    b = build(tmp_path / "b" / "ds", seed=11, num_train=0, num_test=12)  # the same seed: identical puzzle names
    c = build(tmp_path / "x|y" / "ds", seed=12, num_train=0, num_test=12)
    out = tmp_path / "out"
    assert act_main("--checkpoint", str(SHIPPED), "--data_paths", str(a), str(b), str(c), "--output_dir", str(out)) == 0
    sub = json.loads((out / "evaluator_ARC_step_8000" / "submission.json").read_text())
    assert len(sub) == 36
    assert {k.rsplit("/", 1)[0] for k in sub} == {"a/ds", "b/ds", "x|y/ds"}
    assert all(sum(k.startswith(p + "/") for k in sub) == 12 for p in ("a/ds", "b/ds", "x|y/ds"))


def test_act_threshold_nan_exits_2(act_setup, capsys):
    root, ckpt, a, _ = act_setup
    with pytest.raises(SystemExit) as exc:
        act_main("--checkpoint", str(ckpt), "--data_paths", str(a), "--halting", "dynamic", "--threshold", "nan",
                 "--output_dir", str(root / "nan"))
    assert exc.value.code == 2 and "--threshold is a probability" in capsys.readouterr().err and not (root / "nan").exists()
# ============================================================================================
# Instructor tools (issue 20): the release and the grader. Each case here runs no notebook;
# grading runs (isolation, cheats, detached children) are in tests/test_grade.py.
# ============================================================================================
@pytest.fixture
def tiny_course_dir(tmp_path):
    import sys as _sys

    _sys.path.insert(0, str(REPO_ROOT / "tests"))
    from instructor_fixtures import STEM, tiny_notebook

    from course_lib.course.exercises import apply_tags
    from course_lib.course.release import write_nb

    nb = tiny_notebook()
    apply_tags(nb, STEM)
    write_nb(tmp_path / "course" / f"{STEM}.ipynb", nb)
    return tmp_path / "course"


def _grade(tmp_path, course, *args):
    from course_lib.course.grade import main

    return main([*args, "--notebooks", str(course), "--no-progress"])


@pytest.mark.parametrize("value, needle", [("nan", "finite"), ("inf", "finite"), ("-1", "> 0"), ("0", "> 0"),
                                           ("soon", "must be a number")])
def test_grade_timeout_is_validated(tmp_path, capsys, tiny_course_dir, value, needle):
    (tmp_path / "h" / "s").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        _grade(tmp_path, tiny_course_dir, str(tmp_path / "h"), "--timeout", value)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "--timeout" in err[-1] and needle in err[-1], err


@pytest.mark.parametrize("where, needle", [
    ("handins/grades.csv", "inside the hand-ins"),
    ("handins/s1/90_tiny.ipynb", "inside the hand-ins"),
    ("REPO/notebooks/grades.csv", "inside the course"),
    ("REPO/notebooks/00_setup_and_tour.ipynb", "inside the course"),
    ("REPO/course_lib/grades.csv", "inside the course"),
    ("notes.txt", "not a grades CSV"),
    ("roster.csv", "not a grades CSV"),
    ("afolder", "is a folder"),
    ("notes.txt/grades.csv", "is a file"),
])
def test_grade_out_where_it_must_not_write_exits_2(tmp_path, capsys, tiny_course_dir, where, needle):
    handin = tmp_path / "handins" / "s1" / "90_tiny.ipynb"
    handin.parent.mkdir(parents=True)
    handin.write_text("{}")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "roster.csv").write_text("name,email\n")
    (tmp_path / "afolder").mkdir()
    out = REPO_ROOT / where[5:] if where.startswith("REPO/") else tmp_path / where
    before = {p: p.read_bytes() for p in (handin, tmp_path / "notes.txt", tmp_path / "roster.csv", out) if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        _grade(tmp_path, tiny_course_dir, str(tmp_path / "handins"), "--out", str(out))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and needle in err[-1], err
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "handins" / "grades.csv").exists()


def test_grade_unreadable_handins_are_one_failed_row_each(tmp_path, capsys, tiny_course_dir, monkeypatch):
    import csv

    import course_lib.course.grade as grade

    h = tmp_path / "handins"
    for student in ("loop", "text", "latin1", "cells", "deep", "fifo", "folder", "big", "other"):
        (h / student).mkdir(parents=True)
    (h / "loop" / "90_tiny.ipynb").symlink_to("90_tiny.ipynb")  # a symlink loop
    (h / "text" / "90_tiny.ipynb").write_text("{not json")
    (h / "latin1" / "90_tiny.ipynb").write_bytes(b'{"cells": "\xe9"}')
    (h / "cells" / "90_tiny.ipynb").write_text('{"cells": [1, 2], "metadata": {}}')
    (h / "deep" / "90_tiny.ipynb").write_text("[" * 2000 + "]" * 2000)
    os.mkfifo(h / "fifo" / "90_tiny.ipynb")  # reading it would block forever
    (h / "folder" / "90_tiny.ipynb").mkdir()
    (h / "big" / "90_tiny.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "pad": "x" * 6000}))
    (h / "other" / "notes.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    monkeypatch.setattr(grade, "MAX_HANDIN_BYTES", 5000)
    out = tmp_path / "grades.csv"
    assert _grade(tmp_path, tiny_course_dir, str(h), "--out", str(out)) == 0
    with out.open(newline="", encoding="utf-8") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    want = {"loop": "cannot read it (Too many levels of symbolic links)", "text": "not a readable notebook (not JSON",
            "latin1": "not a readable notebook (not UTF-8 text)", "cells": "not a readable notebook (cell 0 is not",
            "deep": "not a readable notebook (not JSON", "fifo": "not a regular file", "folder": "not a regular file",
            "big": "too large"}
    for student, needle in want.items():
        row = rows[student]
        assert (row["status"], row["notebook"], row["out_of"]) == ("failed", "90_tiny", "3"), row
        assert row["error"].startswith(needle) and row["90: Exercise 1"] == "error", row
    assert (rows["other"]["status"], rows["other"]["out_of"]) == ("unknown notebook", "0")
    assert "graded 9 notebooks" in capsys.readouterr().out


def test_grade_duplicates_are_flagged(tmp_path, capsys, tiny_course_dir):
    import csv

    s = tmp_path / "handins" / "s1"
    s.mkdir(parents=True)
    for name in ("90_tiny.ipynb", "90_tiny_final.ipynb"):
        (s / name).write_text("{not json")  # identified by its name; nothing runs
    out = tmp_path / "grades.csv"
    assert _grade(tmp_path, tiny_course_dir, str(tmp_path / "handins"), "--out", str(out)) == 0
    warn = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warn) == 1 and "s1 handed in 90_tiny 2 times" in warn[0]
    with out.open(newline="", encoding="utf-8") as f:
        notes = [r["note"] for r in csv.DictReader(f)]
    assert notes == ["duplicate: s1/90_tiny_final.ipynb", "duplicate: s1/90_tiny.ipynb"]
    with (tmp_path / "grades_totals.csv").open(newline="", encoding="utf-8") as f:
        assert "handed in 2 times" in next(csv.DictReader(f))["note"]


def test_grade_a_handin_changed_before_its_turn_is_a_failed_row(tmp_path, tiny_course_dir):
    from course_lib.course.grade import Course, Handin, grade_one, read_handin

    path = tmp_path / "90_tiny.ipynb"
    path.write_text(json.dumps({"cells": [], "metadata": {}}))
    _, _, digest = read_handin(path)
    path.write_text(json.dumps({"cells": [], "metadata": {}, "x": 1}))  # e.g. rewritten by an earlier hand-in
    row = grade_one(Handin(path, "s", path.name, "90_tiny", digest), Course.load(tiny_course_dir), None, 30)
    assert row["status"] == "failed" and "changed on disk" in row["error"]


def _fake_grading(monkeypatch, fail_on: int, exc: BaseException):
    import course_lib.course.grade as grade

    class NoJudge:
        def __init__(self, course, stem, timeout):
            self.stem, self.broken, self.count = stem, None, 0

        def start(self):
            return self

        def close(self):
            pass

    calls = []

    def fake_grade_one(h, course, judge, timeout):
        calls.append(h)
        if len(calls) == fail_on:
            raise exc
        return {"student": h.student, "notebook": h.stem, "file": h.label, "status": "ok", "score": 1, "out_of": 3}

    monkeypatch.setattr(grade, "Judge", NoJudge)
    monkeypatch.setattr(grade, "grade_one", fake_grade_one)


def _three_handins(tmp_path):
    for s in ("a", "b", "c"):
        (tmp_path / "handins" / s).mkdir(parents=True)
        (tmp_path / "handins" / s / "90_tiny.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    return tmp_path / "handins"


def _csv_rows(path):
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grade_ctrl_c_keeps_every_finished_row_and_exits_130(tmp_path, capsys, tiny_course_dir, monkeypatch):
    _fake_grading(monkeypatch, 3, KeyboardInterrupt())
    out = tmp_path / "grades.csv"
    assert _grade(tmp_path, tiny_course_dir, str(_three_handins(tmp_path)), "--out", str(out)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grading interrupted: 2 of 3" in err[0]
    assert [r["student"] for r in _csv_rows(out)] == ["a", "b"]
    assert [r["score"] for r in _csv_rows(tmp_path / "grades_totals.csv")] == ["1", "1", "0"]


def test_grade_a_crash_keeps_the_rows_written_so_far(tmp_path, tiny_course_dir, monkeypatch):
    _fake_grading(monkeypatch, 2, RuntimeError("the grader itself crashed"))
    out = tmp_path / "grades.csv"
    with pytest.raises(RuntimeError):
        _grade(tmp_path, tiny_course_dir, str(_three_handins(tmp_path)), "--out", str(out))
    assert [r["student"] for r in _csv_rows(out)] == ["a"]


def test_grade_disk_full_is_one_line_exit_2(tmp_path, capsys, tiny_course_dir, monkeypatch):
    import course_lib.course.grade as grade

    _fake_grading(monkeypatch, 99, RuntimeError())
    real, calls = grade._write_durably, []

    def write(path, text):
        calls.append(path)
        if len(calls) == 5:  # header (2 files), first hand-in (2 files), then the disk is full
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(grade, "_write_durably", write)
    out = tmp_path / "grades.csv"
    assert _grade(tmp_path, tiny_course_dir, str(_three_handins(tmp_path)), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "grades.csv" in err[0] and "No space left" in err[0]
    assert [r["student"] for r in _csv_rows(out)] == ["a"]  # the last complete file stays


@pytest.mark.parametrize("out, needle", [("notebooks", "inside the course's source tree"),
                                         ("/proc/course_release_probe", "nothing written")])
def test_release_cli_refuses_with_one_line(out, needle):
    r = run_module("course_lib.course.release", "--out", out, "notebooks/00_setup_and_tour.ipynb", timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("target", ["REPO/notebooks/00_setup_and_tour.ipynb", "loop"])
def test_grade_out_through_a_symlink_is_judged_by_its_target(tmp_path, capsys, tiny_course_dir, target):
    (tmp_path / "h" / "s").mkdir(parents=True)
    (tmp_path / "h" / "s" / "90_tiny.ipynb").write_text("{}")
    link = tmp_path / "grades.csv"
    link.symlink_to(REPO_ROOT / target[5:] if target.startswith("REPO/") else link)  # into the course, or a loop
    with pytest.raises(SystemExit) as exc:
        _grade(tmp_path, tiny_course_dir, str(tmp_path / "h"), "--out", str(link))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and ("inside the course" in err[-1] or "cannot resolve" in err[-1]), err


@pytest.mark.parametrize("as_command", [True, False], ids=["python -m", "imported"])
def test_ctrl_c_before_a_commands_handler_is_one_line(as_command):
    """A Ctrl-C while a `python -m course_lib....` command still imports torch never reaches the command's own
    handler: the package prints one line for it (exit by SIGINT, 130 in a shell). Code that merely imports
    course_lib keeps Python's usual traceback."""
    code = ("import sys\n"
            + ("sys.argv[0] = '-m'  # what Python sets while `-m` imports the package\n" if as_command else "")
            + "import course_lib\n"
            "raise KeyboardInterrupt\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert r.returncode in (-2, 130)
    if as_command:
        assert r.stderr.splitlines() == ["interrupted (Ctrl-C)"]
    else:
        assert "Traceback" in r.stderr and "KeyboardInterrupt" in r.stderr


@pytest.mark.parametrize("module", ["course_lib.decoding.quality", "course_lib.decoding.speed"])
def test_measuring_clis_never_overwrite_a_saved_run(module, tmp_path, capsys):
    import importlib

    saved = tmp_path / "run.json"
    saved.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--out", str(saved)])
    assert exc.value.code == 2
    assert "exists; runs never overwrite earlier results: pass a new --out" in capsys.readouterr().err
    assert saved.read_text() == "{}"
