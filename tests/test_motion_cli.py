"""The batch CLI (seed 004): numbered folders, bad lines skipped, clear exit code 2 on missing files.

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.core.checkpoints import atomic_save
from course_lib.motion import inference_batch
from course_lib.motion.gpt import Config, MotionGPT, save_trans
from course_lib.motion.text_encoder import TextEncoder, WordTokenizer
from course_lib.motion.vqvae import VQVAE


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """Randomly initialised but correctly formatted checkpoints: the CLI's plumbing, not model quality."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    net = VQVAE(dict(nb_code=32, code_dim=16, output_emb_width=16, width=32, depth=1)).eval()
    net.quantizer.codebook.copy_(torch.randn(32, 16))
    atomic_save({"net": {f"module.{k}": v for k, v in net.state_dict().items()}, "config": dict(net.config),
                 "mean": torch.zeros(67), "std": torch.full((67,), 0.01)}, d / "vq.pth")
    tok = WordTokenizer.build(["a person walks forward", "someone jumps twice"])
    enc = TextEncoder({"vocab_size": len(tok.vocab), "clip_dim": 8, "n_layer": 1, "n_head": 2})
    atomic_save({"vocab": tok.vocab, "config": dict(enc.config), "state_dict": enc.state_dict()}, d / "text.pt")
    gpt = MotionGPT(Config.from_name("course-tiny", vocab_size=34, clip_dim=8, block_size=6, dropout=0.0))
    atomic_save(save_trans(gpt, {}), d / "trans.pth")
    return ["--resume_pth", str(d / "vq.pth"), "--resume_trans", str(d / "trans.pth"), "--text_encoder", str(d / "text.pt"),
            "--device", "cpu", "--quiet"]


def run(prompts_file, out, tiny_ckpts, *extra):
    return inference_batch.main(["--infer_batch_prompt", str(prompts_file), "--out_dir", str(out), "--exp_name", "exp",
                                 *tiny_ckpts, *extra])


def test_batch_writes_numbered_folders_and_skips_bad_lines(tmp_path, tiny_ckpts, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person walks forward\n\n   \n" + "x" * 300 + "\nsomeone jumps twice\n", encoding="utf-8")
    assert run(prompts, tmp_path / "out", tiny_ckpts) == 0
    out = capsys.readouterr().out
    assert "line 2: skipped (empty line)" in out and "line 3: skipped (empty line)" in out
    assert "line 4: skipped (300 characters" in out and "Summary: 2 motion(s) written" in out
    root = tmp_path / "out" / "exp"
    assert sorted(p.name for p in root.iterdir()) == ["0", "1"]
    assert (root / "1" / "prompt.txt").read_text(encoding="utf-8") == "someone jumps twice\n"
    feats, joints = np.load(root / "0" / "features.npy"), np.load(root / "0" / "joints.npy")
    assert feats.shape[1] == 67 and joints.shape == (feats.shape[0], 22, 3) and feats.shape[0] % 4 == 0 and feats.shape[0] >= 4
    with Image.open(root / "0" / "motion.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == min(40, joints.shape[0])
    assert not [p for p in root.rglob(".*")]  # no temporary files left behind


def test_numbering_continues_after_the_largest_existing_folder(tmp_path, tiny_ckpts):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person walks forward\n", encoding="utf-8")
    root = tmp_path / "out" / "exp"
    (root / "7").mkdir(parents=True)
    (root / "notes").mkdir()
    assert run(prompts, tmp_path / "out", tiny_ckpts, "--no_gif") == 0
    assert run(prompts, tmp_path / "out", tiny_ckpts, "--no_gif") == 0
    assert sorted(p.name for p in root.iterdir()) == ["7", "8", "9", "notes"]
    assert inference_batch.claim_folder(root).name == "10"


def test_missing_prompt_file_or_checkpoint_exits_2(tmp_path, tiny_ckpts, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "missing.txt", tmp_path / "out", tiny_ckpts)
    assert e.value.code == 2 and f"prompt file not found: {tmp_path / 'missing.txt'}" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person walks\n", encoding="utf-8")
    bad = list(tiny_ckpts)
    bad[1] = str(tmp_path / "nope.pth")
    with pytest.raises(SystemExit) as e:
        run(prompts, tmp_path / "out", bad)
    assert e.value.code == 2 and f"--resume_pth: checkpoint not found: {tmp_path / 'nope.pth'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing created on a failed start


# --- issue 10: prompts the model cannot read, bad files and arguments, interrupts -------------------------------

def test_unknown_words_reports_other_scripts_and_digits():
    tok = WordTokenizer.build(["a person walks forward"])
    assert tok.unknown_words("一个人向前走") == ["一个人向前走"]
    assert tok.unknown_words("a person 走 forward, twice!") == ["走", "twice"]
    assert tok.unknown_words("a person walks 2 times") == ["2", "times"]
    assert tok.known_words("一个人向前走") == [] and tok.known_words("a person walks") == ["a", "person", "walks"]


def test_prompt_with_no_known_word_is_skipped_and_listed(tmp_path, tiny_ckpts, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("一个人向前走\na person 走 forward\n", encoding="utf-8")
    assert run(prompts, tmp_path / "out", tiny_ckpts, "--no_gif") == 0
    out = capsys.readouterr().out
    assert "line 1: skipped (no word the text encoder knows in '一个人向前走'" in out.split("Summary:")[1]
    assert "line 2: words the text encoder cannot read (treated as <unk>): 走" in out
    assert "Summary: 1 motion(s) written" in out and "line 2 -> " in out and "could not read: 走" in out
    root = tmp_path / "out" / "exp"
    assert [p.name for p in root.iterdir()] == ["0"]
    assert (root / "0" / "prompt.txt").read_text(encoding="utf-8") == "a person 走 forward\n"


def _refuses(capsys, fn, *needles):
    with pytest.raises(SystemExit) as e:
        fn()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last
    return last


@pytest.fixture()
def no_compute(monkeypatch):
    """Bad input must be refused before any model is loaded."""
    def boom(*a, **k):
        raise AssertionError("models were loaded before the input was checked")
    monkeypatch.setattr(inference_batch, "load_pipeline", boom)


@pytest.mark.parametrize("data, needle", [(b"a person walks\n\xff\xfe jumps\n", "is not UTF-8 (byte 0xff at offset 15)"),
                                          (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary")])
def test_non_utf8_or_binary_prompt_file_exits_2(tmp_path, tiny_ckpts, capsys, no_compute, data, needle):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(data)
    _refuses(capsys, lambda: run(prompts, tmp_path / "out", tiny_ckpts), needle)
    assert not (tmp_path / "out").exists()


def test_utf8_bom_is_stripped(tmp_path, tiny_ckpts):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes("a person walks forward\n".encode("utf-8-sig"))
    assert run(prompts, tmp_path / "out", tiny_ckpts, "--no_gif") == 0
    assert (tmp_path / "out" / "exp" / "0" / "prompt.txt").read_text(encoding="utf-8") == "a person walks forward\n"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_temperature_exits_2(tmp_path, tiny_ckpts, capsys, no_compute, value):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person walks\n", encoding="utf-8")
    _refuses(capsys, lambda: run(prompts, tmp_path / "out", tiny_ckpts, f"--temperature={value}"), "--temperature must be a finite")


@pytest.mark.parametrize("name", ["..", ".", "a/../..", "/tmp"])
def test_exp_name_that_leaves_out_dir_exits_2(tmp_path, tiny_ckpts, capsys, no_compute, name):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person walks\n", encoding="utf-8")
    out = tmp_path / "base" / "out"
    args = ["--infer_batch_prompt", str(prompts), "--out_dir", str(out), "--exp_name", name, *tiny_ckpts]
    _refuses(capsys, lambda: inference_batch.main(args), "--exp_name must be a plain folder name inside --out_dir")
    assert not (tmp_path / "base").exists()


def test_output_folder_under_a_file_or_unwritable_exits_2_before_compute(tmp_path, tiny_ckpts, capsys, no_compute):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person walks\n", encoding="utf-8")
    (tmp_path / "afile").write_text("x")
    _refuses(capsys, lambda: run(prompts, tmp_path / "afile" / "sub", tiny_ckpts), "afile is a file, not a folder")
    _refuses(capsys, lambda: run(prompts, Path("/proc/course_motion_out"), tiny_ckpts), "is not writable")


def test_ctrl_c_leaves_only_complete_folders_and_exits_130(tmp_path, tiny_ckpts, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person walks forward\nsomeone jumps twice\na person walks\n", encoding="utf-8")
    real, calls = inference_batch.save_gif, []

    def interrupted_second_time(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(inference_batch, "save_gif", interrupted_second_time)
    assert run(prompts, tmp_path / "out", tiny_ckpts) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
    root = tmp_path / "out" / "exp"
    assert [p.name for p in root.iterdir()] == ["0"]  # no temp folder, no numbered folder without its GIF
    assert (root / "0" / "motion.gif").is_file()


def test_numbering_skips_a_plain_file_with_the_next_number(tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    (root / "0").write_text("not a folder")
    result = []
    t = threading.Thread(target=lambda: result.append(inference_batch.claim_folder(root)), daemon=True)
    t.start()
    t.join(5)
    assert result and result[0].name == "1"


def test_cli_subprocess_non_utf8_prompt_file(tmp_path, tiny_ckpts):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes("一个人向前走\n".encode("gbk"))
    proc = subprocess.run([sys.executable, "-m", "course_lib.motion.inference_batch", "--infer_batch_prompt", str(prompts),
                           "--out_dir", str(tmp_path / "out"), *tiny_ckpts], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not UTF-8" in proc.stderr.strip().splitlines()[-1] and not (tmp_path / "out").exists()


# ============================== issue 20 (inputs): full disk, read-only folder, symlink loops, Ctrl-C
def _fail_writes(monkeypatch, err):
    """Every atomic write fails as the disk would: os.fdopen(...).write raises OSError(err)."""
    import errno
    import os as _os

    from course_lib.core import files

    real_fdopen = _os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(err, _os.strerror(err))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    return errno


@pytest.mark.parametrize("err, words", [(28, "the disk is full"), (30, "the file system is read-only"), (13, "permission denied")])
def test_full_disk_or_read_only_is_one_line_naming_the_path(tmp_path, tiny_ckpts, capsys, monkeypatch, err, words):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person walks forward\nsomeone jumps twice\n", encoding="utf-8")
    _fail_writes(monkeypatch, err)
    assert run(prompts, tmp_path / "out", tiny_ckpts, "--no_gif") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(tmp_path / "out" / "exp") in lines[0], lines
    assert "Traceback" not in lines[0] and "Errno" not in lines[0]
    assert not list((tmp_path / "out" / "exp").iterdir())  # nothing half-written kept


@pytest.mark.parametrize("flag", ["--infer_batch_prompt", "--out_dir", "--resume_pth", "--exp_name"])
def test_symlink_loop_is_one_line_naming_the_path(tmp_path, tiny_ckpts, capsys, flag):
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person walks forward\n", encoding="utf-8")
    args = {"--infer_batch_prompt": str(prompts), "--out_dir": str(tmp_path / "out"), "--exp_name": "exp"}
    if flag == "--exp_name":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "exp").symlink_to(tmp_path / "l1")
    else:
        args[flag] = str(tmp_path / "l1")
    ckpts = list(tiny_ckpts)
    if flag == "--resume_pth":
        ckpts[1] = str(tmp_path / "l1")
    with pytest.raises(SystemExit) as exc:
        inference_batch.main([x for kv in args.items() for x in kv] + ckpts)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "symlink loop" in err[-1], err  # argparse: usage, then the one error line
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("where", ["load_pipeline", "generate", "write"])
def test_ctrl_c_at_any_stage_is_one_line_exit_130(tmp_path, tiny_ckpts, capsys, monkeypatch, where):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person walks forward\n", encoding="utf-8")

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    if where == "load_pipeline":
        monkeypatch.setattr(inference_batch, "load_pipeline", interrupt)
    elif where == "write":
        monkeypatch.setattr(inference_batch, "save_gif", interrupt)
    else:
        from course_lib.motion.pipeline import MotionPipeline
        monkeypatch.setattr(MotionPipeline, "generate", interrupt)
    assert run(prompts, tmp_path / "out", tiny_ckpts) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
    root = tmp_path / "out" / "exp"
    assert not root.exists() or not list(root.iterdir())
