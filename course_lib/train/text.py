"""Recipe for the shipped text model: `python -m course_lib.train.text`.

Trains the GPT of `course_lib.gpt` on generated product listings tokenized with cl100k_base,
then measures what it learned on the saved (fp16-rounded) weights: held-out loss on listings
drawn with a seed never used in training, and the well-formed rate of the first line
generated from each brand at temperature 0.7. Results go to checkpoints/MANIFEST.json.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

from ..checkpoints import atomic_save, half_state_dict, update_manifest
from ..corpus import BRANDS, generate_corpus, is_well_formed
from ..gpt import DEFAULT_H_PARAMS, GPT, load_gpt
from ..paths import TEXT_MODEL, display_path
from ..tokenizer import get_encoding
from .common import add_run_args, setup_run

TRAIN_SEED, HELDOUT_SEED = 1234, 98765


def build_stream(lines: list[str], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token stream of documents "<|endoftext|>line\\nline\\n..." and the offsets where windows may start.

    Windows start at a document start (with <|endoftext|>) or at a line start, so the model sees
    both an empty-prompt start and a brand as the very first token, as it will at inference.
    """
    enc = get_encoding()
    rng = random.Random(seed)
    ids: list[int] = []
    starts: list[int] = []
    i = 0
    while i < len(lines):
        starts.append(len(ids))
        ids.append(enc.eot_token)
        for line in lines[i:i + rng.randint(10, 40)]:
            starts.append(len(ids))
            ids.extend(enc.encode_ordinary(line + "\n"))
        i += 40
    return torch.tensor(ids, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def batches(stream: torch.Tensor, starts: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    """Random (x, y) windows of seq_len tokens, each starting at an allowed offset."""
    ok = starts[starts + seq_len + 1 <= len(stream)]
    while True:
        s = ok[torch.randint(len(ok), (batch,), generator=gen)]
        window = torch.stack([stream[i:i + seq_len + 1] for i in s.tolist()])
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def heldout_loss(model: GPT, stream: torch.Tensor, seq_len: int, device: torch.device) -> float:
    """Mean next-token loss over consecutive held-out windows (eval mode)."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    x = stream[: n * seq_len].view(n, seq_len)
    y = stream[1: n * seq_len + 1].view(n, seq_len)
    losses = [model.loss(x[i:i + 8].to(device), y[i:i + 8].to(device)).item() * len(x[i:i + 8]) for i in range(0, n, 8)]
    return sum(losses) / n


@torch.no_grad()
def well_formed_rate(model: GPT, samples_per_brand: int = 20, temperature: float = 0.7, seed: int = 0,
                     max_new_tokens: int = 40) -> dict:
    """First generated line from each brand prompt, checked by the grammar."""
    enc = get_encoding()
    gen = torch.Generator().manual_seed(seed)
    per_brand, examples = {}, {}
    for brand in BRANDS:
        x = torch.tensor([enc.encode(brand)] * samples_per_brand, device=model.device)
        out = model.generate(x, max_new_tokens, temperature=temperature, generator=gen)
        lines = [enc.decode(row.tolist()).split("\n")[0] for row in out]
        per_brand[brand] = sum(map(is_well_formed, lines)) / len(lines)
        examples[brand] = lines[0]
    rate = sum(per_brand.values()) / len(per_brand)
    return {"well_formed_rate": rate, "per_brand": per_brand, "examples": examples,
            "samples_per_brand": samples_per_brand, "temperature": temperature}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lines", type=int, default=60000)
    add_run_args(ap, seed=TRAIN_SEED)
    ap.add_argument("--out", type=Path, default=TEXT_MODEL)
    ap.add_argument("--no-manifest", action="store_true", help="do not record the result in MANIFEST.json")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not 1 <= args.seq_len <= DEFAULT_H_PARAMS["block_size"]:
        ap.error(f"--steps and --batch must be >= 1 and --seq-len in [1, {DEFAULT_H_PARAMS['block_size']}]")

    device, gen = setup_run(args)
    stream, starts = build_stream(generate_corpus(args.lines, args.seed), args.seed)
    held, _ = build_stream(generate_corpus(2000, HELDOUT_SEED), HELDOUT_SEED)
    print(f"train tokens: {len(stream):,}  held-out tokens: {len(held):,}")

    model = GPT(dict(DEFAULT_H_PARAMS)).to(device)
    print(f"parameters: {model.num_params():,}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    t0 = time.time()
    data = batches(stream, starts, args.batch, args.seq_len, gen)
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = next(data)
        loss = model.loss(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_loss = loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {last_loss:.4f}  lr {lr_at(step):.2e}  {time.time() - t0:6.0f}s", flush=True)
    train_seconds = time.time() - t0

    atomic_save({"h_params": dict(model.h_params), "model_state_dict": half_state_dict(model)}, args.out, overwrite=True)
    shipped = load_gpt(args.out, device=device)  # measure what is shipped: the fp16-rounded weights
    held_loss = heldout_loss(shipped, held, args.seq_len, device)
    quality = well_formed_rate(shipped)
    print(f"held-out loss: {held_loss:.4f}  well-formed rate @T=0.7: {quality['well_formed_rate']:.3f}")
    for brand, rate in quality["per_brand"].items():
        print(f"  {brand}: {rate:.2f}  e.g. {quality['examples'][brand]}")
    if not args.no_manifest:
        entry = update_manifest(args.out, {
            "recipe": " ".join(["python -m course_lib.train.text", *(sys.argv[1:] if argv is None else argv)]),
            "seed": args.seed, "format": "{'h_params', 'model_state_dict'} (fp16 weights, load as fp32)",
            "h_params": dict(model.h_params), "parameters": model.num_params(),
            "metrics": {"heldout_loss": round(held_loss, 4), "heldout_seed": HELDOUT_SEED,
                        "well_formed_rate": round(quality["well_formed_rate"], 4),
                        "well_formed_per_brand": {b: round(r, 3) for b, r in quality["per_brand"].items()},
                        "samples_per_brand": quality["samples_per_brand"], "temperature": quality["temperature"],
                        "final_train_loss": round(last_loss, 4),
                        "train_steps": args.steps, "train_seconds": round(train_seconds), "device": device.type},
        })
        print(f"recorded {entry['path']} in MANIFEST.json ({entry['size_bytes'] / 1e6:.1f} MB)")
    print(f"saved {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
