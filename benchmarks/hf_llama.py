"""The course GPT as a Hugging Face `LlamaForCausalLM` holding the same weights.

The course model is a LLaMA (RMSNorm, rotate-half RoPE, SwiGLU, tied embeddings, no biases), so a
weight copy gives a Hugging Face model whose logits equal ours. Benchmarks compare against HF
`generate` on the *shipped* weights with it: speculative and prompt-lookup decoding depend on what
the model predicts, so random weights would measure nothing useful.

    python benchmarks/hf_llama.py     # converts the shipped model and prints the largest logit difference

`transformers` is a benchmark extra (benchmarks/requirements-bench.txt), never a course dependency.
"""

from __future__ import annotations

import sys

import torch

from course_lib.core.layers import swiglu_hidden
from course_lib.text.gpt import GPT, load_gpt


def hf_available() -> str | None:
    """The transformers version, or None when it is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def to_hf_llama(model: GPT, device: str | torch.device | None = None):
    """A `LlamaForCausalLM` (eval mode, fp32 like `model`) with `model`'s weights copied in."""
    from transformers import LlamaConfig, LlamaForCausalLM

    h = model.h_params
    C, H = h["n_embd"], h["n_head"]
    n_kv = h.get("n_kv_head", H)
    cfg = LlamaConfig(vocab_size=h["vocab_size"], hidden_size=C, intermediate_size=swiglu_hidden(C),
                      num_hidden_layers=h["n_layer"], num_attention_heads=H, num_key_value_heads=n_kv,
                      max_position_embeddings=h["block_size"], rms_norm_eps=1e-6, rope_theta=h["rope_theta"],
                      tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    hf = LlamaForCausalLM(cfg)
    src = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    dst: dict[str, torch.Tensor] = {"model.embed_tokens.weight": src["tok_emb.weight"],
                                    "model.norm.weight": src["norm.weight"],
                                    "lm_head.weight": src["tok_emb.weight"]}
    head_dim = C // H
    for i in range(h["n_layer"]):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        # One fused projection: rows are the n_head query heads, then n_kv_head key and value heads.
        qw, kw, vw = src[p + "attn.qkv.weight"].split([C, n_kv * head_dim, n_kv * head_dim])
        dst.update({q + "self_attn.q_proj.weight": qw, q + "self_attn.k_proj.weight": kw,
                    q + "self_attn.v_proj.weight": vw, q + "self_attn.o_proj.weight": src[p + "attn.proj.weight"],
                    q + "mlp.gate_proj.weight": src[p + "ffn.gate.weight"], q + "mlp.up_proj.weight": src[p + "ffn.up.weight"],
                    q + "mlp.down_proj.weight": src[p + "ffn.down.weight"],
                    q + "input_layernorm.weight": src[p + "attn_norm.weight"],
                    q + "post_attention_layernorm.weight": src[p + "ffn_norm.weight"]})
    missing, unexpected = hf.load_state_dict(dst, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"weight copy incomplete: missing {missing}, unexpected {unexpected}")
    hf.generation_config.eos_token_id = None  # decode exactly max_new_tokens, like the course loops
    hf.generation_config.pad_token_id = 0
    return hf.eval().to(device if device is not None else model.device)


@torch.no_grad()
def max_logit_difference(model: GPT, hf, idx: torch.Tensor) -> float:
    """Largest |logit difference| between the course model and its HF copy on `idx` (B, T)."""
    return (model(idx) - hf(idx).logits).abs().max().item()


def main() -> int:
    if hf_available() is None:
        print("transformers is not installed: pip install -c requirements.txt -r benchmarks/requirements-bench.txt",
              file=sys.stderr)
        return 2
    from course_lib.text.tokenizer import get_encoding

    model = load_gpt()
    hf = to_hf_llama(model)
    enc = get_encoding()
    idx = torch.tensor([enc.encode("农夫山泉 东方树叶 茉莉花茶 330ml 瓶装\nCoca-Cola")])
    diff = max_logit_difference(model, hf, idx)
    greedy_ours = model.generate(idx, 40, temperature=0)
    greedy_hf = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=40, do_sample=False)
    print(f"max |logit difference| over {idx.shape[1]} positions: {diff:.2e}")
    print(f"greedy 40 tokens identical: {torch.equal(greedy_ours, greedy_hf)}")
    return 0 if diff < 1e-4 and torch.equal(greedy_ours, greedy_hf) else 1


if __name__ == "__main__":
    sys.exit(main())
