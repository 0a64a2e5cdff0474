"""The benchmarks' Hugging Face copy of the course GPT computes the same logits (skipped without transformers)."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from hf_llama import max_logit_difference, to_hf_llama  # noqa: E402

from course_lib.text.gpt import GPT  # noqa: E402


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_hf_copy_of_a_tiny_gpt_has_identical_logits_and_greedy_tokens(n_kv_head):
    torch.manual_seed(0)
    model = GPT({"vocab_size": 97, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_kv_head": n_kv_head, "block_size": 64}).eval()
    hf = to_hf_llama(model)
    idx = torch.randint(0, 97, (2, 20))
    assert max_logit_difference(model, hf, idx) < 1e-5
    ours = model.generate(idx[:1], 12, temperature=0)
    theirs = hf.generate(idx[:1], attention_mask=torch.ones_like(idx[:1]), max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, theirs)
