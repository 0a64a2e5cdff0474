"""Recipe for the shipped text model: `python -m course_lib.train.text`.

Trains the GPT of `course_lib.text.gpt` on training-split product listings (`corpus.split_of`)
tokenized with cl100k_base, then measures what it learned on the saved (fp16-rounded) weights:

- loss on held-out-split lines (never in any training stream, by construction) next to the
  loss on lines of the training stream, both in eval mode;
- from 20 samples per brand (280 in all) at temperature 0.7, the first generated line's
  well-formed rate, novel rate (well-formed and not a line of the training stream) and the
  share that are held-out-split lines, against that split's share of the corpus (~10%): a
  model that memorised its training lines scores ~0 there, one that learned the rules ~10%.

Rates come with 95% Wilson intervals. Results go to checkpoints/MANIFEST.json.
`--evaluate-only` re-measures the shipped weights without training.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from course_lib.core.checkpoints import atomic_save, half_state_dict, manifest_key, read_manifest, update_manifest
from course_lib.core.paths import TEXT_MODEL, display_path
from course_lib.core.stats import fmt_rate, rate
from course_lib.text.corpus import BRANDS, HELDOUT_PERCENT, generate_corpus, grammar_size, is_well_formed, split_of
from course_lib.text.gpt import DEFAULT_H_PARAMS, GPT, load_gpt
from course_lib.text.tokenizer import get_encoding
from course_lib.train.common import add_run_args, autocast_dtype, run_record, setup_run, train_autocast, warmup_cosine_lr

TRAIN_SEED, HELDOUT_SEED, SAMPLE_SEED = 1234, 98765, 0
EVAL_LINES = 2000
TRAIN_RUN_KEYS = ("final_train_batch_loss", "train_steps", "train_tokens_per_step", "train_seconds", "train_seconds_note", "device", "autocast")


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


def _decode(enc, ids: list[int]) -> str:
    """Decode, showing ids that are no token (an untrained model can sample them) as U+FFFD."""
    parts = []
    for t in ids:
        try:
            parts.append(enc.decode_single_token_bytes(t))
        except KeyError:
            parts.append("\ufffd".encode())
    return b"".join(parts).decode("utf-8", errors="replace")


@torch.no_grad()
def sample_quality(model: GPT, train_lines: set[str], samples_per_brand: int = 20, temperature: float = 0.7,
                   seed: int = SAMPLE_SEED, max_new_tokens: int = 48) -> dict:
    """First generated line from each brand prompt: well-formed? novel? from the held-out split?"""
    enc = get_encoding()
    gen = torch.Generator(device=model.device).manual_seed(seed)
    lines, per_brand, examples = [], {}, {}
    for brand in BRANDS:
        x = torch.tensor([enc.encode(brand)] * samples_per_brand, device=model.device)
        out = model.generate(x, max_new_tokens, temperature=temperature, generator=gen)
        got = [_decode(enc, row.tolist()).split("\n")[0] for row in out]
        per_brand[brand] = round(sum(map(is_well_formed, got)) / len(got), 3)
        examples[brand] = got[0]
        lines += got
    good = [line for line in lines if is_well_formed(line)]
    novel = [line for line in good if line not in train_lines]
    held = [line for line in good if split_of(line) == "heldout"]
    return {"samples": len(lines), "samples_per_brand": samples_per_brand, "temperature": temperature, "seed": seed,
            "well_formed": rate(len(good), len(lines)),
            "novel_among_well_formed": rate(len(novel), len(good)),
            "heldout_split_among_well_formed": rate(len(held), len(good)),
            "heldout_share_of_corpus": HELDOUT_PERCENT / 100,
            "distinct_lines": len(set(lines)),
            "well_formed_per_brand": per_brand, "examples": examples}


def evaluate(model: GPT, train_lines: list[str], seq_len: int, seed: int, device: torch.device) -> dict:
    """Every number the MANIFEST records, measured on `model` (the shipped weights)."""
    seen, _ = build_stream(train_lines[:EVAL_LINES], seed)
    held, _ = build_stream(generate_corpus(EVAL_LINES, HELDOUT_SEED, split="heldout"), HELDOUT_SEED)
    fresh, _ = build_stream(generate_corpus(EVAL_LINES, HELDOUT_SEED, split="train"), HELDOUT_SEED)
    loss = {"train_stream": heldout_loss(model, seen, seq_len, device),
            "heldout_split": heldout_loss(model, held, seq_len, device),
            "train_split_fresh_draws": heldout_loss(model, fresh, seq_len, device)}
    quality = sample_quality(model, set(train_lines))
    return {"loss": {k: round(v, 4) for k, v in loss.items()},
            "heldout_over_train_loss": round(loss["heldout_split"] / loss["train_stream"], 4),
            "eval_lines": EVAL_LINES, "heldout_seed": HELDOUT_SEED, "grammar_size": grammar_size(),
            "train_lines": len(train_lines), "distinct_train_lines": len(set(train_lines)), **quality}


def report(m: dict) -> None:
    ls = m["loss"]
    print(f"loss  train stream {ls['train_stream']:.4f}  held-out split {ls['heldout_split']:.4f}  "
          f"(ratio {m['heldout_over_train_loss']:.3f})  fresh train-split draws {ls['train_split_fresh_draws']:.4f}")
    for key in ("well_formed", "novel_among_well_formed", "heldout_split_among_well_formed"):
        r = m[key]
        print(f"{key:32s} {fmt_rate(r)}")
    for brand, r in m["well_formed_per_brand"].items():
        print(f"  {brand}: {r:.2f}  e.g. {m['examples'][brand]}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lines", type=int, default=150000, help="training-split lines in the stream (< one epoch by default)")
    add_run_args(ap, seed=TRAIN_SEED)
    ap.add_argument("--out", type=Path, default=TEXT_MODEL)
    ap.add_argument("--probe-every", type=int, default=400, help="print a 42-sample well-formed rate every N steps (0 = off)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="skip training: re-measure the weights at --out (with the recorded --lines/--seed) and update the MANIFEST")
    ap.add_argument("--no-manifest", action="store_true", help="do not record the result in MANIFEST.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.lines < EVAL_LINES or not 1 <= args.seq_len <= DEFAULT_H_PARAMS["block_size"]:
        ap.error(f"--steps and --batch must be >= 1, --lines >= {EVAL_LINES} and --seq-len in [1, {DEFAULT_H_PARAMS['block_size']}]")

    device, gen = setup_run(args)
    train_lines = generate_corpus(args.lines, args.seed, split="train")
    stream, starts = build_stream(train_lines, args.seed)
    print(f"train lines: {len(train_lines):,} ({len(set(train_lines)):,} distinct of {grammar_size():,} in the grammar)  "
          f"train tokens: {len(stream):,}")

    if args.evaluate_only:
        metrics = evaluate(load_gpt(args.out, device=device), train_lines, args.seq_len, args.seed, device)
        report(metrics)
        if not args.no_manifest:
            old = read_manifest().get(manifest_key(args.out), {})
            run = {k: v for k, v in old.get("metrics", {}).items() if k in TRAIN_RUN_KEYS}  # how it was trained stays
            update_manifest(args.out, {**old, "metrics": {**metrics, **run}})
            print("updated the metrics in MANIFEST.json")
        return 0

    model = GPT(dict(DEFAULT_H_PARAMS)).to(device)
    amp = autocast_dtype(args.precision, device)
    print(f"parameters: {model.num_params():,}  training on {run_record(device, amp)}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    t0 = time.time()
    data = batches(stream, starts, args.batch, args.seq_len, gen)
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, args.steps, args.lr)
        x, y = next(data)
        with train_autocast(device, amp):  # forward + loss only; backward and the fp32 weights stay outside
            loss = model.loss(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last_loss = loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {last_loss:.4f}  lr {warmup_cosine_lr(step, args.steps, args.lr):.2e}  {time.time() - t0:6.0f}s", flush=True)
        if args.probe_every and step % args.probe_every == 0 and step:  # a cheap look at sample quality on the way
            q = sample_quality(model.eval(), set(), samples_per_brand=3)
            model.train()
            print(f"step {step:5d}  probe: well-formed {q['well_formed']['rate']:.2f} of {q['samples']}", flush=True)
    train_seconds = time.time() - t0

    atomic_save({"h_params": dict(model.h_params), "model_state_dict": half_state_dict(model)}, args.out, overwrite=True)
    shipped = load_gpt(args.out, device=device)  # measure what is shipped: the fp16-rounded weights
    metrics = evaluate(shipped, train_lines, args.seq_len, args.seed, device)
    report(metrics)
    if not args.no_manifest:
        entry = update_manifest(args.out, {
            "recipe": " ".join(["python -m course_lib.train.text", *(sys.argv[1:] if argv is None else argv)]),
            "seed": args.seed, "format": "{'h_params', 'model_state_dict'} (fp16 weights, load as fp32)",
            "h_params": dict(model.h_params), "parameters": model.num_params(),
            "metrics": {**metrics, "final_train_batch_loss": round(last_loss, 4), "train_steps": args.steps,
                        "train_tokens_per_step": args.batch * args.seq_len, "train_seconds": round(train_seconds),
                        **run_record(device, amp)},
        })
        print(f"recorded {entry['path']} in MANIFEST.json ({entry['size_bytes'] / 1e6:.1f} MB)")
    print(f"saved {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
