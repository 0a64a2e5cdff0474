"""Recipe for the speculative-decoding draft: `python -m course_lib.train.draft`.

A 2-layer GPT (`course_lib.text.draft.DraftGPT`) over only the cl100k tokens the training split uses
(plus one "other" row), trained on the same training-split stream as the text model. Two targets
to learn from (`--distill`):

- `logits` (default): the shipped text model's next-token distribution restricted to the subset
  (its hidden state times the subset's rows of its head, softmax). Speculative decoding accepts a
  drafted token when the draft predicts what the *target* predicts, so imitating the target beats
  imitating the data;
- `data`: the corpus's next token (plain language-model training), for comparison.

Measured on the saved (fp16-rounded) weights and recorded in checkpoints/MANIFEST.json:
- held-out-split loss of the draft (data next token) next to the target's on the same stream;
- greedy acceptance: along the target's own greedy continuation (160 new tokens from each brand
  prompt, and 48 from prefixes of held-out-split lines), how often the draft's top token equals
  the target's. Every token speculative greedy decoding accepts is such an agreement, so this is
  the per-token acceptance rate (95% Wilson interval).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib.core.checkpoints import atomic_save, half_state_dict, manifest_key, read_manifest, update_manifest
from course_lib.core.paths import DRAFT_MODEL, TEXT_MODEL, display_path
from course_lib.core.stats import fmt_rate, rate
from course_lib.text.corpus import BRANDS, generate_corpus
from course_lib.text.draft import DraftGPT, load_draft
from course_lib.text.gpt import DEFAULT_H_PARAMS, GPT, load_gpt
from course_lib.text.tokenizer import get_encoding
from course_lib.train.common import add_run_args, setup_run, warmup_cosine_lr
from course_lib.train.text import EVAL_LINES, HELDOUT_SEED, TRAIN_SEED, batches, build_stream

DRAFT_H_PARAMS = {"n_embd": 64, "n_layer": 2, "n_head": 4, "block_size": DEFAULT_H_PARAMS["block_size"],
                  "dropout": 0.0, "rope_theta": DEFAULT_H_PARAMS["rope_theta"]}
BRAND_NEW_TOKENS, HELDOUT_PROMPTS, HELDOUT_NEW_TOKENS = 160, 40, 48


def subset_vocab(stream: torch.Tensor) -> torch.Tensor:
    """The sorted distinct token ids of the training stream (<|endoftext|> included)."""
    return torch.unique(stream)


@torch.no_grad()
def target_subset_logits(target: GPT, x: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """The target's logits (B, T, len(vocab_ids)) at the subset's rows only: softmax of these is its
    next-token distribution conditioned on "the token is in the subset" (the 100k-wide head is skipped)."""
    B, T = x.shape
    h = target.hidden_states(x, torch.arange(T, device=x.device)[None].expand(B, T), None)
    return h @ target.lm_head.weight[vocab_ids].T


def draft_logits(draft: DraftGPT, x: torch.Tensor) -> torch.Tensor:
    """Draft logits (B, T, V + 1) for target ids x; the "other" column is never a proposal."""
    return draft(draft.to_draft(x))


@torch.no_grad()
def data_loss(model: DraftGPT, stream: torch.Tensor, seq_len: int, device: torch.device) -> float:
    """The draft's mean next-token loss over consecutive windows of `stream` (target ids), eval mode."""
    n = (len(stream) - 1) // seq_len
    x = stream[: n * seq_len].view(n, seq_len)
    y = stream[1: n * seq_len + 1].view(n, seq_len)
    total = 0.0
    for i in range(0, n, 8):
        xb, yb = x[i:i + 8].to(device), y[i:i + 8].to(device)
        logits, yb = draft_logits(model, xb), model.to_draft(yb)
        total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").item()
    return total / (n * seq_len)


@torch.no_grad()
def greedy_agreement(draft: DraftGPT, target: GPT, prompts: list[list[int]], new_tokens: int) -> dict:
    """How often the draft's top token equals the target's along the target's greedy continuation."""
    k = n = 0
    for ids in prompts:
        x = torch.tensor([ids], device=target.device)
        out = target.generate(x, new_tokens, temperature=0)
        logits = draft_logits(draft, out[:, :-1])[0, len(ids) - 1:]
        logits[:, draft.other] = float("-inf")
        guess = draft.to_target(logits.argmax(-1))
        k += int((guess == out[0, len(ids):]).sum())
        n += new_tokens
    return rate(k, n)


def evaluate(draft: DraftGPT, target: GPT, seq_len: int, device: torch.device) -> dict:
    """Every number the MANIFEST records, measured on the shipped (fp16-rounded) draft."""
    enc = get_encoding()
    held_lines = generate_corpus(EVAL_LINES, HELDOUT_SEED, split="heldout")
    held, _ = build_stream(held_lines, HELDOUT_SEED)
    rng = random.Random(HELDOUT_SEED)
    held_prompts = []
    for line in held_lines[:HELDOUT_PROMPTS]:  # a held-out line cut after 1 .. n-1 of its tokens
        ids = enc.encode_ordinary(line)
        held_prompts.append(ids[:rng.randint(1, max(1, len(ids) - 1))])
    brand = greedy_agreement(draft, target, [enc.encode_ordinary(b) for b in BRANDS], BRAND_NEW_TOKENS)
    heldp = greedy_agreement(draft, target, held_prompts, HELDOUT_NEW_TOKENS)
    # the target's loss on this same stream is measured by its own recipe (course_lib.train.text)
    target_loss = read_manifest().get(manifest_key(TEXT_MODEL), {}).get("metrics", {}).get("loss", {}).get("heldout_split")
    return {"heldout_split_loss": round(data_loss(draft, held, seq_len, device), 4),
            "target_heldout_split_loss": target_loss,
            "greedy_acceptance_brand_prompts": {**brand, "new_tokens": BRAND_NEW_TOKENS, "prompts": len(BRANDS)},
            "greedy_acceptance_heldout_prefixes": {**heldp, "new_tokens": HELDOUT_NEW_TOKENS, "prompts": HELDOUT_PROMPTS},
            "eval_lines": EVAL_LINES, "heldout_seed": HELDOUT_SEED}


def report(m: dict) -> None:
    print(f"held-out split loss  draft {m['heldout_split_loss']:.4f}  target {m['target_heldout_split_loss']} (its MANIFEST entry)")
    print(f"greedy acceptance, brand prompts      {fmt_rate(m['greedy_acceptance_brand_prompts'])}")
    print(f"greedy acceptance, held-out prefixes  {fmt_rate(m['greedy_acceptance_heldout_prefixes'])}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lines", type=int, default=150000, help="training-split lines (the text model's stream)")
    ap.add_argument("--n-layer", type=int, default=DRAFT_H_PARAMS["n_layer"])
    ap.add_argument("--n-embd", type=int, default=DRAFT_H_PARAMS["n_embd"])
    ap.add_argument("--distill", choices=("logits", "data"), default="logits",
                    help="learn the target's subset distribution (logits) or the corpus's next token (data)")
    add_run_args(ap, seed=TRAIN_SEED)
    ap.add_argument("--target", type=Path, default=TEXT_MODEL, help="the text model the draft serves")
    ap.add_argument("--out", type=Path, default=DRAFT_MODEL)
    ap.add_argument("--no-manifest", action="store_true", help="do not record the result in MANIFEST.json")
    ap.add_argument("--evaluate-only", action="store_true", help="skip training: re-measure the draft at --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.n_layer) < 1 or args.lines < EVAL_LINES or not 1 <= args.seq_len <= DRAFT_H_PARAMS["block_size"]:
        ap.error(f"--steps, --batch and --n-layer must be >= 1, --lines >= {EVAL_LINES}, "
                 f"--seq-len in [1, {DRAFT_H_PARAMS['block_size']}]")
    if args.n_embd < 8 or args.n_embd % 8:
        ap.error("--n-embd must be a multiple of 8 (4 heads of even size)")
    device, gen = setup_run(args)
    target = load_gpt(args.target, device=device)
    for p in target.parameters():
        p.requires_grad_(False)
    if args.evaluate_only:
        metrics = evaluate(load_draft(args.out, device=device), target, args.seq_len, device)
        report(metrics)
        return 0

    stream, starts = build_stream(generate_corpus(args.lines, args.seed, split="train"), args.seed)
    vocab_ids = subset_vocab(stream).to(device)
    hp = {**DRAFT_H_PARAMS, "n_layer": args.n_layer, "n_embd": args.n_embd, "vocab_size": len(vocab_ids) + 1,
          "target_vocab_size": target.h_params["vocab_size"]}
    draft = DraftGPT(hp, vocab_ids.cpu()).to(device)
    print(f"train tokens: {len(stream):,}  subset vocabulary: {len(vocab_ids)} of {hp['target_vocab_size']:,} ids  "
          f"draft parameters: {draft.num_params():,}  distill: {args.distill}")
    opt = torch.optim.AdamW(draft.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    t0 = time.time()
    data = batches(stream, starts, args.batch, args.seq_len, gen)
    draft.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, args.steps, args.lr)
        x, y = (t.to(device) for t in next(data))
        logits = draft_logits(draft, x).flatten(0, 1)
        if args.distill == "logits":  # soft targets: the target's subset distribution, 0 on "other"
            p = target_subset_logits(target, x, vocab_ids).softmax(-1).flatten(0, 1)
            loss = F.cross_entropy(logits, F.pad(p, (0, 1)))
        else:
            loss = F.cross_entropy(logits, draft.to_draft(y).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {warmup_cosine_lr(step, args.steps, args.lr):.2e}  {time.time() - t0:6.0f}s", flush=True)
    train_seconds = time.time() - t0

    atomic_save({"h_params": dict(draft.h_params), "model_state_dict": half_state_dict(draft),
                 "vocab_ids": vocab_ids.cpu()}, args.out, overwrite=True)
    shipped = load_draft(args.out, device=device)  # measure what is shipped: the fp16-rounded weights
    metrics = evaluate(shipped, target, args.seq_len, device)
    report(metrics)
    if not args.no_manifest:
        entry = update_manifest(args.out, {
            "recipe": " ".join(["python -m course_lib.train.draft", *(sys.argv[1:] if argv is None else argv)]),
            "seed": args.seed,
            "format": "{'h_params', 'model_state_dict', 'vocab_ids'} (fp16 weights, load as fp32; vocab_ids: draft index -> cl100k id)",
            "h_params": dict(shipped.h_params), "parameters": shipped.num_params(), "target": display_path(args.target),
            "metrics": {**metrics, "distill": args.distill, "train_steps": args.steps,
                        "train_tokens_per_step": args.batch * args.seq_len, "train_seconds": round(train_seconds),
                        "device": device.type},
        })
        print(f"recorded {entry['path']} in MANIFEST.json ({entry['size_bytes'] / 1e6:.2f} MB)")
    print(f"saved {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
