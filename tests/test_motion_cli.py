"""The batch CLI (seed 004): numbered folders, bad lines skipped, clear exit code 2 on missing files."""

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.checkpoints import atomic_save
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
