"""Checkpoints: safe loading with readable errors, prefix repairs, atomic saving, the manifest hashes."""

import argparse
import json

import pytest
import torch
from torch import nn

from course_lib.core import checkpoints as ck
from course_lib.core.checkpoints import CheckpointError, load_checkpoint, load_weights, strip_prefix
from course_lib.core.paths import CHECKPOINTS


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_round_trip(tmp_path):
    m = small_model()
    p = ck.atomic_save({"model_state_dict": m.state_dict(), "h_params": {"n": 4}}, tmp_path / "m.pt")
    ckpt = load_checkpoint(p)
    assert ckpt["h_params"] == {"n": 4}
    m2 = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    load_weights(m2, ckpt["model_state_dict"])
    x = torch.randn(5, 4)
    assert torch.equal(m(x), m2(x))


def test_missing_path_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_folder_instead_of_file_lists_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"a": torch.zeros(1)}, run / "step_606")
    (run / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run)
    assert "is a folder" in str(err.value) and "step_606" in str(err.value) and "notes.txt" not in str(err.value)


def test_truncated_and_empty_files(tmp_path):
    p = ck.atomic_save({"w": torch.randn(100, 100)}, tmp_path / "m.pt")
    data = p.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a torch checkpoint: it is a text file"):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


def test_unsafe_pickle_refused(tmp_path):
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.zeros(2)}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "unsafe.pt")
    msg = str(err.value)
    assert "refused" in msg and "execute code" in msg and "weights_only" in msg and "argparse.Namespace" in msg


def test_non_dict_rejected(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "t.pt")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_prefix_detected_and_stripped(prefix):
    m = small_model()
    wrapped = {prefix + k: v for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(small_model(), wrapped)
    msg = str(err.value)
    assert "missing keys (4)" in msg and "unexpected keys (4)" in msg
    assert f"strip_prefix(state_dict, {prefix!r})" in msg
    target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    load_weights(target, strip_prefix(wrapped, prefix))
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), m.state_dict().values(), strict=True))


def test_key_diff_and_non_strict():
    sd = small_model().state_dict()
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_weights(small_model(), sd)
    assert "missing keys (1): 2.bias" in str(err.value) and "unexpected keys (1): extra.weight" in str(err.value)
    load_weights(small_model(), {k: v for k, v in sd.items() if k != "extra.weight"}, strict=False)


def test_shape_mismatch_names_key_and_shapes():
    sd = small_model().state_dict()
    sd["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointError, match=r"'0.weight': the model expects \(3, 4\), the checkpoint has \(5, 4\)"):
        load_weights(small_model(), sd)


def test_atomic_save_refuses_overwrite(tmp_path):
    p = ck.atomic_save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        ck.atomic_save({"a": 2}, p)
    assert load_checkpoint(p) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.pt"]  # no temp files left behind


def test_half_state_dict_stores_tied_weights_once(tiny_gpt, tmp_path):
    sd = ck.half_state_dict(tiny_gpt)
    assert sd["tok_emb.weight"].dtype == torch.float16
    assert sd["tok_emb.weight"].data_ptr() == sd["lm_head.weight"].data_ptr()
    tied = ck.atomic_save(sd, tmp_path / "tied.pt").stat().st_size
    untied = ck.atomic_save({**sd, "lm_head.weight": sd["lm_head.weight"].clone()}, tmp_path / "untied.pt").stat().st_size
    one_table = tiny_gpt.tok_emb.weight.numel() * 2
    assert untied - tied >= one_table  # the tied file holds the table once


def test_manifest_verify(tmp_path):
    folder = tmp_path
    manifest = folder / "MANIFEST.json"
    p = ck.atomic_save({"a": torch.ones(2)}, folder / "m.pt")
    data = {"m.pt": {"sha256": ck.sha256_file(p)}}
    manifest.write_text(json.dumps(data))
    entry = ck.read_manifest(manifest)["m.pt"]
    assert entry["sha256"] == ck.sha256_file(p)
    p.write_bytes(p.read_bytes() + b"x")
    assert ck.sha256_file(p) != entry["sha256"]


def test_every_shipped_checkpoint_matches_manifest():
    manifest = ck.read_manifest()
    assert manifest, "checkpoints/MANIFEST.json is empty or missing"
    files = {p.relative_to(CHECKPOINTS).as_posix() for p in CHECKPOINTS.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    listed = set(manifest)
    for name, entry in manifest.items():
        path = CHECKPOINTS / name
        assert path.exists(), f"MANIFEST lists {name}, which is missing"
        assert ck.sha256_file(path) == entry["sha256"], f"{name}: sha256 differs from MANIFEST.json"
        assert path.stat().st_size == entry["size_bytes"]
        ck.verify_checkpoint(path)
        # weights come from a training recipe; the halting threshold from its calibration (no retraining)
        recipes = ("python -m course_lib.train.", "python -m course_lib.act.calibrate")
        assert entry.get("recipe", "").startswith(recipes), f"{name}: no recipe recorded"
    # every weights file is listed (config files beside a checkpoint may be listed or not)
    weights = {f for f in files if not f.endswith((".json", ".yaml", ".txt", ".md"))}
    assert weights <= listed, f"unlisted checkpoint files: {sorted(weights - listed)}"
    total = sum((CHECKPOINTS / f).stat().st_size for f in files)
    assert total < 40_000_000, f"checkpoints/ is {total / 1e6:.1f} MB, over the 40 MB budget"
