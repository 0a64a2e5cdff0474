"""course_lib.decoding.speed: the step parts run, do the work they claim, and create tensors on the model's device."""

from __future__ import annotations

import pytest
import torch

from course_lib.decoding.speed import batch_curve, random_context, step_costs, zero_layer_twin


def test_zero_layer_twin_shares_head_and_is_embedding_norm_head(make_gpt):
    model = make_gpt(dropout=0.0)
    twin = zero_layer_twin(model)
    assert len(twin.blocks) == 0 and twin.lm_head.weight is model.lm_head.weight
    x = torch.randint(0, 300, (2, 5))
    with torch.no_grad():
        assert torch.allclose(twin(x), model.lm_head(model.norm(model.tok_emb(x))), atol=1e-6)


def test_step_costs_and_batch_curve_shapes(make_gpt):
    model = make_gpt(dropout=0.0)
    costs = step_costs(model, 10, batch=2, repeats=1)
    assert set(costs) == {"full head", "last head", "cached", "head matvec", "0-layer step"}
    assert all(v > 0 for v in costs.values())  # values are never compared: timing is not a test
    rows = batch_curve(model, [1, 4], 8, repeats=1)
    assert [r["batch"] for r in rows] == [1, 4] and all(r["tokens_per_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="length"):
        step_costs(model, 1)
    with pytest.raises(ValueError, match="unknown part"):
        step_costs(model, 4, parts=("nope",))


def test_random_context_on_requested_device():
    assert random_context(2, 3, 10, device="meta").device.type == "meta"
    assert torch.equal(random_context(2, 3, 10, seed=4), random_context(2, 3, 10, seed=4))
