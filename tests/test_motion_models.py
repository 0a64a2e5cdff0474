"""Quantizers, VQ-VAE shapes and checkpoint format, and the motion GPT's END/PAD handling."""

import itertools

import pytest
import torch

from course_lib.core.checkpoints import CheckpointError, atomic_save, load_checkpoint, load_weights
from course_lib.core.layers import Block
from course_lib.motion.gpt import PRESETS, Config, load_trans, save_trans
from course_lib.motion.quantizers import FSQ, QuantizeEMAReset, perplexity
from course_lib.motion.text_encoder import TextEncoder, WordTokenizer
from course_lib.motion.vqvae import VQVAE, load_vqvae

SMALL_VQ = dict(nb_code=32, code_dim=16, output_emb_width=16, width=32, depth=2)


# ------------------------------------------------------------------------------ quantizers
def test_ema_quantizer_picks_the_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    q = QuantizeEMAReset(nb_code=8, code_dim=4).eval()
    q.codebook.copy_(torch.randn(8, 4))
    x = torch.randn(2, 4, 5, requires_grad=True)
    out, commit, _ = q(x)
    flat = x.detach().permute(0, 2, 1).reshape(-1, 4)
    brute = torch.cdist(flat, q.codebook).argmin(-1)
    assert torch.equal(q.quantize(flat), brute)
    torch.testing.assert_close(out.detach().permute(0, 2, 1).reshape(-1, 4), q.codebook[brute])
    torch.testing.assert_close(commit, ((flat - q.codebook[brute]) ** 2).mean())
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # the snap is skipped in the backward pass


def test_ema_quantizer_resets_dead_codes_to_encoder_outputs():
    torch.manual_seed(0)
    q = QuantizeEMAReset(nb_code=4, code_dim=2, mu=0.5).train()
    x = torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.0, 0.1, 0.2, 0.3]])[None]  # 4 vectors near the origin
    q(x)  # initialises the codebook from x
    q.codebook[3] = torch.tensor([100.0, 100.0])  # a code nobody will pick
    q.code_sum[3], q.code_count[3] = q.codebook[3], 0.5  # ... and whose usage is already below 1
    q(x)
    assert q.codebook[3].abs().max() < 1.0  # re-seeded near the data


def test_fsq_codes_round_trip_and_lie_on_the_grid():
    f = FSQ([8, 8, 4], code_dim=6)
    assert f.nb_code == 256
    idx = torch.arange(256)[None]
    assert torch.equal(f.codes_to_index(f.index_to_codes(idx)), idx)
    q = f._round(torch.randn(3, 3, 7) * 3)
    assert torch.equal(q, q.round())
    for d, L in enumerate([8, 8, 4]):
        assert q[:, d].min() >= -(L // 2) and q[:, d].max() <= (L - 1) // 2
    assert set(f.quantize(torch.randn(2, 6, 9)).flatten().tolist()) <= set(range(256))


def test_perplexity_counts_effective_codes():
    assert perplexity(torch.arange(16), 16).item() == pytest.approx(16.0, rel=1e-4)
    assert perplexity(torch.zeros(10, dtype=torch.long), 16).item() == pytest.approx(1.0, rel=1e-4)


# ---------------------------------------------------------------------------------- VQ-VAE
@pytest.mark.parametrize("quantizer", ["ema_reset", "fsq"])
def test_vqvae_shapes_and_encode_decode_agree(quantizer):
    torch.manual_seed(0)
    net = VQVAE({**SMALL_VQ, "quantizer": quantizer, "fsq_levels": [4, 4, 2]}).train()
    x = torch.randn(3, 32, 67)
    rec, commit, ppl = net(x)  # a training step initialises the EMA codebook
    assert rec.shape == x.shape and commit.dim() == 0 and net.frames_per_code == 4
    net.eval()
    idx = net.encode(x)
    assert idx.shape == (3, 8) and idx.dtype == torch.long and int(idx.max()) < net.nb_code
    torch.testing.assert_close(net.decode_codes(idx), net(x)[0])


def test_vqvae_checkpoint_needs_the_module_prefix_stripped(tmp_path):
    net = VQVAE(SMALL_VQ).eval()
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = atomic_save({"net": sd, "config": dict(net.config), "mean": torch.zeros(67), "std": torch.ones(67)}, tmp_path / "vq.pth")
    with pytest.raises(CheckpointError, match="module."):
        load_weights(VQVAE(SMALL_VQ), load_checkpoint(path)["net"], strict=True)
    loaded, norm = load_vqvae(path)
    x = torch.randn(1, 16, 67)
    assert torch.equal(loaded.encode(x), net.encode(x)) and norm.std.shape == (67,)


# ------------------------------------------------------------------------------- motion GPT
# make_motion_gpt (conftest): a seeded course-tiny MotionGPT, nb_code=16, clip_dim=8, block_size=9.


def test_vocab_layout_end_and_pad(make_motion_gpt):
    m = make_motion_gpt()
    c = m.config
    assert (c.nb_code, c.end_id, c.pad_id) == (16, 16, 17)
    assert m.tok_emb.num_embeddings == 18 and m.head.out_features == 17  # PAD can be read, never predicted
    assert all(isinstance(b, Block) and b.attn.causal for b in m.blocks)
    assert set(PRESETS) >= {"course-tiny", "course-small", "44M", "7B"} and Config.from_name("7B").n_embd == 4096
    with pytest.raises(ValueError, match="unknown preset"):
        Config.from_name("8B")


def test_end_is_masked_at_the_first_step_and_stops_later(make_motion_gpt):
    m = make_motion_gpt()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.weight[m.config.end_id] = 0.0
        m.norm.weight.fill_(1.0)
        # bias END massively through a fake direction: every position prefers END
        m.head.weight[m.config.end_id, 0] = 1e4
        m.norm.weight[0] = 1.0
    clip = torch.randn(4, 8)
    trace = []
    out = m.sample(clip, temperature=0.0, trace=trace)
    logits = m(torch.empty(4, 0, dtype=torch.long), clip)[:, -1]
    prefers_end = logits.argmax(-1) == m.config.end_id
    for row, pref in zip(out, prefers_end, strict=True):
        assert len(row) >= 1  # never an empty motion
        assert row.max() < m.config.end_id  # END and PAD are not in the returned codes
        if pref:
            assert len(row) == 1  # END came right after the first (forced) code
    assert trace[0]["p_end"] == 0.0


def test_pad_targets_are_ignored_by_the_loss(make_motion_gpt):
    m = make_motion_gpt()
    c = m.config
    clip = torch.randn(2, 8)
    codes = torch.tensor([[3, 5, 7], [1, 2, 4]])
    target = torch.cat([codes, torch.full((2, 1), c.end_id)], 1)
    padded_target = torch.cat([target, torch.full((2, 2), c.pad_id)], 1)
    padded_inp = torch.cat([codes, torch.full((2, 1), c.end_id), torch.full((2, 1), c.pad_id)], 1)
    torch.testing.assert_close(m.loss(codes, clip, target), m.loss(padded_inp, clip, padded_target))  # causal: pads change nothing before them


def test_cached_sampling_equals_uncached_and_rows_stop_independently(make_motion_gpt):
    m = make_motion_gpt(1)
    clip = torch.randn(5, 8)
    for temp, k in itertools.product([0.0, 1.0], [None, 3]):
        a = m.sample(clip, temperature=temp, top_k=k, generator=torch.Generator().manual_seed(7), use_cache=True)
        b = m.sample(clip, temperature=temp, top_k=k, generator=torch.Generator().manual_seed(7), use_cache=False)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert all(1 <= len(x) <= m.config.block_size - 1 for x in a)
    with pytest.raises(ValueError, match="temperature"):
        m.sample(clip, temperature=-1.0)


def test_trans_checkpoint_round_trip(tmp_path, make_motion_gpt):
    m = make_motion_gpt(2)
    ckpt = save_trans(m, {})
    assert all(k.startswith("module.") for k in ckpt["trans"])
    path = atomic_save(ckpt, tmp_path / "trans.pth")
    loaded = load_trans(path)
    idx, clip = torch.tensor([[1, 2, 3]]), torch.randn(1, 8)
    torch.testing.assert_close(loaded(idx, clip), m(idx, clip))
    assert not loaded.training


def test_text_encoder_is_order_aware_and_pads_safely():
    tok = WordTokenizer.build(["a person walks forward", "someone waves the left hand"])
    assert tok.encode("A person WALKS, forward!") == tok.encode("a person walks forward")
    assert tok.unknown_words("a person moonwalks") == ["moonwalks"]
    torch.manual_seed(0)
    enc = TextEncoder({"vocab_size": len(tok.vocab), "clip_dim": 16, "n_layer": 1, "n_head": 2}).eval()
    ids, mask = tok.batch(["a person walks forward", "someone waves"])
    both = enc(ids, mask)
    alone = enc(*tok.batch(["someone waves"]))
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)  # padding does not leak into the features


def test_wilson_interval_and_novel_heldout_captions_are_absent_from_training():
    from course_lib.core.stats import wilson as wilson_interval
    from course_lib.motion.data import TRAIN_SEED
    from course_lib.motion.synth import make_dataset
    from course_lib.train.motion_trans import novel_heldout

    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    train = [c["caption"] for c in make_dataset(6000, TRAIN_SEED)]  # the recipe's training captions
    prompts, true, distinct = novel_heldout(300, train)
    assert not set(prompts) & set(train) and len(prompts) == len(true) == 116 and distinct <= 116
