"""Decoding on an accelerator: sampling stays on the device, and the loop never waits on the host.

Without a GPU the device path is exercised on the `meta` device (shapes only, no data) and the
inverse-CDF sampler is checked on the CPU, where it runs the same code. `COURSE_TEST_DEVICE=cuda`
(set by `make test-gpu`) also runs the device checks on a real GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from course_lib.sampling import filter_logits, inverse_cdf_sample, sample_next

DEVICES = ["meta"] + ([os.environ["COURSE_TEST_DEVICE"]] if os.environ.get("COURSE_TEST_DEVICE") else [])
PROBS = torch.tensor([0.5, 0.0, 0.2, 0.15, 0.0, 0.1, 0.05])  # zeros must never be drawn


def test_inverse_cdf_matches_multinomial_in_distribution():
    n = 40_000
    probs = PROBS.expand(n, -1)
    ours = inverse_cdf_sample(probs, torch.Generator().manual_seed(0))[:, 0]
    ref = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0))[:, 0]
    f_ours = torch.bincount(ours, minlength=len(PROBS)).double() / n
    f_ref = torch.bincount(ref, minlength=len(PROBS)).double() / n
    se = (PROBS.double() * (1 - PROBS.double()) / n).sqrt()
    assert f_ours[PROBS == 0].sum() == 0  # a zero-probability token is never drawn
    assert ((f_ours - PROBS).abs() <= 5 * se + 1e-12).all(), (f_ours, PROBS)  # within 5 standard errors
    assert ((f_ours - f_ref).abs() <= 5 * (2 ** 0.5) * se + 1e-12).all()
    expected = PROBS.double()[PROBS > 0] * n  # Pearson chi-square, 4 degrees of freedom
    observed = torch.bincount(ours, minlength=len(PROBS)).double()[PROBS > 0]
    assert ((observed - expected) ** 2 / expected).sum() < 18.47  # chi2(4) 99.9% quantile


def test_inverse_cdf_is_deterministic_under_a_seed_and_handles_one_hot():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(-1)
    a = inverse_cdf_sample(probs, torch.Generator().manual_seed(5))
    b = inverse_cdf_sample(probs, torch.Generator().manual_seed(5))
    assert a.shape == (4, 1) and a.dtype == torch.long and torch.equal(a, b)
    one_hot = torch.zeros(3, 50)
    one_hot[:, 49] = 1.0  # the last token, where a rounded-up target would fall off the end
    assert inverse_cdf_sample(one_hot, torch.Generator().manual_seed(0)).flatten().tolist() == [49, 49, 49]


def test_cpu_logits_keep_todays_multinomial_draws():
    # No committed notebook output may change: CPU logits + CPU generator still use torch.multinomial.
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(2))
    ours = sample_next(logits, 0.8, top_k=50, generator=torch.Generator().manual_seed(9))
    ref = torch.multinomial(filter_logits(logits, 0.8, 50).softmax(-1), 1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_device_logits_with_a_cpu_generator_sample_on_the_device(device):
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)).to(device)
    a = sample_next(logits, 0.9, top_p=0.9, generator=torch.Generator().manual_seed(4))
    assert a.device.type == torch.device(device).type and a.shape == (4, 1)
    if device != "meta":  # real data: the same seed gives the same tokens, on the device path
        b = sample_next(logits, 0.9, top_p=0.9, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        ref = inverse_cdf_sample(filter_logits(logits, 0.9, top_p=0.9).softmax(-1), torch.Generator().manual_seed(4))
        assert torch.equal(a, ref)

