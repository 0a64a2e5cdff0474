"""The shipped motion checkpoints: format, size budget, recorded quality, and an end-to-end prompt."""

import torch

from course_lib.core.checkpoints import load_checkpoint, read_manifest
from course_lib.motion.classifier import load_classifier
from course_lib.motion.pipeline import CLS_PATH, TEXT_PATH, TRANS_PATH, VQ_PATH, load_pipeline
from course_lib.motion.synth import ACTIONS


def test_checkpoint_format_and_budget():
    vq, trans = load_checkpoint(VQ_PATH), load_checkpoint(TRANS_PATH)  # weights_only=True inside
    assert all(k.startswith("module.") for k in vq["net"]) and all(k.startswith("module.") for k in trans["trans"])
    assert trans["config"]["vocab_size"] == vq["config"]["nb_code"] + 2
    assert vq["mean"].shape == vq["std"].shape == (67,)
    assert VQ_PATH.stat().st_size + TRANS_PATH.stat().st_size <= 15e6


def test_manifest_records_the_measured_quality():
    m = read_manifest()
    vq = m["motion/vqvae.pth"]["metrics"]
    assert vq["mpjpe_pct_body_height"] < 10 and vq["dead_codes"] == 0
    t2m = m["motion/trans.pth"]["metrics"]["text_to_motion"]
    measured = {a for a, n in t2m["clips_per_action"].items() if n}
    assert set(t2m["clips_per_action"]) == set(ACTIONS) and t2m["novel_caption_clips"] >= 280
    for T in ("T=1.0", "T=2.0", "T=3.0"):
        r = t2m[T]
        assert r["n"] == t2m["novel_caption_clips"] and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert set(r["per_action"]) == measured
    assert t2m["T=1.0"]["ci95"][0] >= 0.9


def test_prompt_to_motion_end_to_end():
    pipe = load_pipeline(VQ_PATH, TRANS_PATH, TEXT_PATH)
    assert not pipe.text.model.training and not any(p.requires_grad for p in pipe.text.model.parameters())
    judge = load_classifier(CLS_PATH)
    prompts = ["a person waves with the left hand", "someone squats twice", "a man runs quickly"]
    motions = pipe.generate(prompts, temperature=0.0)
    for m in motions:
        assert 1 <= len(m.codes) <= 20 and m.joints.shape == (4 * len(m.codes), 22, 3)
        assert int(m.codes.max()) < pipe.net.nb_code  # END/PAD never reach the decoder
    labels = judge.predict([pipe.norm.norm(torch.from_numpy(m.features)) for m in motions])
    assert labels == ["wave_left", "squat", "run"]
