"""Training recipes on a device: --device (default cpu), bf16 autocast on CUDA, and what the MANIFEST records.

Nothing here retrains a shipped checkpoint: tiny runs write into a temporary folder and the
MANIFEST update is captured instead of written. Without a GPU the CUDA choice is checked by
wiring (a patched torch.cuda) and bf16 autocast really runs through CPU autocast.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from course_lib.train import common
from course_lib.train.common import autocast_dtype, run_record, setup_run, train_autocast

RECIPES = ["text", "act", "motion_vqvae", "motion_classifier", "motion_trans"]
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The recipes' --threads sets a process-wide value: give later tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_defaults_to_the_cpu_in_fp32(name):
    """`make checkpoints` runs each recipe without flags: it must keep producing the shipped CPU fp32 weights."""
    args = importlib.import_module(f"course_lib.train.{name}").build_parser().parse_args([])
    assert (args.device, args.precision) == ("cpu", "auto")
    assert run_record(torch.device(args.device), autocast_dtype(args.precision, torch.device(args.device))) == \
        {"device": "cpu", "autocast": "off"}


@pytest.mark.parametrize("name", ["text", "motion_vqvae"])
def test_a_bad_device_is_a_usage_error(name, capsys):
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"course_lib.train.{name}").build_parser().parse_args(["--device", "gpu"])
    assert exc.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err


def test_autocast_dtype_is_bf16_only_where_it_helps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", CUDA) is torch.bfloat16  # Ampere or later: bf16 tensor cores
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("auto", MPS) is None
    assert autocast_dtype("fp32", CUDA) is None and autocast_dtype("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", CUDA) is None  # an older GPU: plain fp32
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("fp16", CPU)
    assert run_record(CUDA, torch.bfloat16) == {"device": "cuda", "autocast": "bfloat16"}


def test_device_auto_picks_cuda_when_there_is_one(monkeypatch):
    """The wiring a GPU host would take, with torch.cuda patched to say a GPU is there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    args = importlib.import_module("course_lib.train.text").build_parser().parse_args(["--device", "auto"])
    device, gen = setup_run(args)
    assert device.type == "cuda" and gen.device.type == "cpu"  # data sampling stays on a CPU generator
    assert run_record(device, autocast_dtype(args.precision, device)) == {"device": "cuda", "autocast": "bfloat16"}


def test_train_autocast_runs_matmuls_in_bf16_and_keeps_fp32_weights():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with train_autocast(CPU, torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with train_autocast(CPU, None):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32


def _capture_manifest(monkeypatch, module) -> dict:
    entries: dict = {}

    def fake_update(path, entry):
        entries[path.name] = entry
        return {**entry, "path": path.name, "size_bytes": path.stat().st_size}

    monkeypatch.setattr(module, "update_manifest", fake_update)
    return entries


@pytest.mark.parametrize("precision,autocast", [("auto", "off"), ("bf16", "bfloat16")])
def test_text_recipe_records_device_and_autocast(tmp_path, monkeypatch, precision, autocast):
    """Two training steps of the real recipe (its evaluation stubbed out: minutes on a CPU)."""
    from course_lib.train import text

    entries = _capture_manifest(monkeypatch, text)
    monkeypatch.setattr(text, "evaluate", lambda *a, **k: {"stub": True})
    monkeypatch.setattr(text, "report", lambda m: None)
    out = tmp_path / "gpt.pt"
    assert text.main(["--steps", "2", "--batch", "1", "--seq-len", "16", "--lines", "2000", "--probe-every", "0",
                      "--threads", "1", "--precision", precision, "--out", str(out)]) == 0
    metrics = entries["gpt.pt"]["metrics"]
    assert (metrics["device"], metrics["autocast"]) == ("cpu", autocast)
    assert torch.isfinite(torch.tensor(metrics["final_train_batch_loss"]))


def test_vqvae_recipe_runs_under_bf16_autocast(tmp_path, monkeypatch):
    """The VQ-VAE's EMA codebook updates inside the forward pass: bf16 autocast must not break them."""
    from course_lib.train import motion_vqvae

    entries = _capture_manifest(monkeypatch, motion_vqvae)
    assert motion_vqvae.main(["--iters", "2", "--batch", "4", "--n-train", "8", "--n-heldout", "2", "--threads", "1",
                              "--precision", "bf16", "--out", str(tmp_path / "vq.pth")]) == 0
    metrics = entries["vq.pth"]["metrics"]
    assert (metrics["device"], metrics["autocast"]) == ("cpu", "bfloat16") and metrics["train_iters"] == 2


def test_common_lists_the_devices_pick_device_knows():
    from course_lib.core.device import _VALID

    assert set(common.DEVICES) == set(_VALID)


def test_train_all_passes_device_and_precision_to_every_recipe(monkeypatch):
    from course_lib.train import all as train_all

    calls = []
    monkeypatch.setattr(train_all.subprocess, "run", lambda cmd: calls.append(cmd) or type("R", (), {"returncode": 0})())
    assert train_all.main(["--device", "auto", "--precision", "bf16"]) == 0
    assert calls and all(cmd[-4:] == ["--device", "auto", "--precision", "bf16"] for cmd in calls)
    calls.clear()
    assert train_all.main([]) == 0 and all(cmd[-2:] == ["-m", cmd[-1]] for cmd in calls)  # `make checkpoints`: no flags
