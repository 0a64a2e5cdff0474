"""Recipe for the text encoder and the motion GPT: `python -m course_lib.train.motion_trans`.

Needs checkpoints/motion/vqvae.pth (codes) and action_classifier.pt (the judge).
1. Text encoder: learns caption → (action, speed, repetitions, side/direction) from the training
   captions; then frozen (eval, requires_grad False) — the CLIP/T5 stand-in.
2. Motion GPT: every training clip is encoded to codes by the frozen VQ-VAE; the GPT learns
   text features → codes + END with teacher forcing (10% of input codes replaced at random,
   T2M-GPT's `pkeep`, so sampling errors do not snowball).
3. Text-to-motion accuracy (`evaluate_text_to_motion`): held-out clips (seed 70707) whose
   caption string is absent from the training captions — many held-out captions repeat a
   training caption verbatim, the grammar is small — get one sampled motion each, decoded
   and labelled by the action classifier; accuracy with n and a 95% Wilson interval, per
   action, at T = 0.7, 1, 2, 3 (so the high-temperature pitfall is measured).

Re-measure the shipped files without retraining (only the MANIFEST's metrics change):
    python -m course_lib.train.motion_trans --eval-only --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib.core.checkpoints import atomic_save, manifest_key, read_manifest, update_manifest
from course_lib.core.paths import display_path
from course_lib.core.stats import wilson
from course_lib.motion.classifier import load_classifier
from course_lib.motion.data import HELDOUT_SEED, TRAIN_SEED, clip_features
from course_lib.motion.gpt import Config, MotionGPT, save_trans
from course_lib.motion.pipeline import CLS_PATH, TEXT_PATH, TRANS_PATH, VQ_PATH, MotionPipeline, load_pipeline
from course_lib.motion.synth import ACTIONS, make_dataset
from course_lib.motion.text_encoder import TextEncoder, WordTokenizer
from course_lib.motion.vqvae import load_vqvae
from course_lib.train.common import add_run_args, autocast_dtype, run_record, setup_run, train_autocast
from course_lib.train.motion_classifier import per_action_accuracy

TEXT_CONFIG = {"clip_dim": 64, "n_layer": 2, "n_head": 4, "dropout": 0.0}
EVAL_TEMPERATURES = (0.7, 1.0, 2.0, 3.0)


def novel_heldout(n_heldout: int, train_captions: list[str]) -> tuple[list[str], list[str], int]:
    """(captions, actions) of the first n_heldout held-out clips whose caption is not, as an exact string,
    a training caption; plus how many distinct captions they hold."""
    seen = set(train_captions)
    clips = [c for c in make_dataset(n_heldout, HELDOUT_SEED) if c["caption"] not in seen]
    return [c["caption"] for c in clips], [c["action"] for c in clips], len({c["caption"] for c in clips})


def text_to_motion_accuracy(pipe: MotionPipeline, judge, prompts: list[str], true: list[str], temperature: float,
                            seed: int = 0, batch: int = 50) -> dict:
    """One motion per prompt at `temperature`, labelled by the classifier: accuracy, n, Wilson 95%, per action."""
    g = torch.Generator().manual_seed(seed)
    motions = [m for i in range(0, len(prompts), batch) for m in pipe.generate(prompts[i:i + batch], temperature=temperature, generator=g)]
    pred = judge.predict([pipe.norm.norm(torch.from_numpy(m.features)) for m in motions])
    k = sum(p == t for p, t in zip(pred, true, strict=True))
    lo, hi = wilson(k, len(true))
    per = per_action_accuracy(pred, true)
    return {"accuracy": round(k / len(true), 4), "correct": k, "n": len(true), "ci95": [round(lo, 4), round(hi, 4)],
            "per_action": per, "min_per_action": min(per.values()),
            "mean_codes": round(sum(len(m.codes) for m in motions) / len(motions), 2)}


def evaluate_text_to_motion(pipe: MotionPipeline, judge, train_captions: list[str], n_heldout: int = 1000,
                            temperatures: tuple[float, ...] = EVAL_TEMPERATURES, seed: int = 0) -> dict:
    """Text-to-motion accuracy on held-out captions absent from training, at each temperature."""
    prompts, true, distinct = novel_heldout(n_heldout, train_captions)
    out = {"command": "python -m course_lib.train.motion_trans --eval-only",
           "prompts": f"held-out clips (seed {HELDOUT_SEED}) whose caption is not a training caption (exact string); one sample each",
           "heldout_clips": n_heldout, "novel_caption_clips": len(prompts), "novel_distinct_captions": distinct,
           "clips_per_action": {a: true.count(a) for a in ACTIONS}}
    for temp in temperatures:
        r = text_to_motion_accuracy(pipe, judge, prompts, true, temp, seed)
        out[f"T={temp}"] = r
        print(f"text-to-motion @T={temp}: accuracy {r['accuracy']:.3f} ({r['correct']}/{r['n']}, "
              f"95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})  per action {r['per_action']}", flush=True)
    return out


def record_eval_only(args: argparse.Namespace, device: torch.device) -> int:
    """Re-measure the shipped files and replace only the metrics keys of their MANIFEST entry (sha256 unchanged)."""
    pipe = load_pipeline(args.vqvae, args.out, args.text_out, device)
    judge = load_classifier(args.classifier, device)
    train_captions = [c["caption"] for c in make_dataset(args.n_train, TRAIN_SEED)]
    results = evaluate_text_to_motion(pipe, judge, train_captions, args.n_heldout)
    if not args.no_manifest:
        entry = {k: v for k, v in read_manifest()[manifest_key(args.out)].items() if k not in ("path", "sha256", "size_bytes")}
        stale = ("heldout_prompts", "heldout_prompts_seen_in_training", "text_to_motion_eval")  # the old 300-clip evaluation
        metrics = {k: v for k, v in entry["metrics"].items() if k not in stale}
        entry = update_manifest(args.out, {**entry, "metrics": {**metrics, "text_to_motion": results}})
        print(f"updated the metrics of {entry['path']} in MANIFEST.json")
    return 0


def attributes(meta: dict) -> tuple[int, int, int, str]:
    """Targets for the text encoder: action, speed (-1 = not said), reps (-1 = not said), extra key."""
    a = meta["action"]
    speed = -1 if a == "idle" else ["slow", "normal", "fast"].index(meta["speed"])
    reps = meta["reps"] - 1 if a in ("jump", "squat", "kick") else -1
    extra = "|".join(f"{k}={meta[k]}" for k in ("direction", "forward", "angle", "leg") if k in meta) or "none"
    return ACTIONS.index(a), speed, reps, extra


def train_text_encoder(captions: list[str], metas: list[dict], iters: int, gen: torch.Generator, device,
                       amp: torch.dtype | None = None) -> tuple:
    tok = WordTokenizer.build(captions)
    extras = sorted({attributes(m)[3] for m in metas})
    model = TextEncoder({**TEXT_CONFIG, "vocab_size": len(tok.vocab)}).to(device)
    d = TEXT_CONFIG["clip_dim"]
    heads = torch.nn.ModuleList([torch.nn.Linear(d, len(ACTIONS)), torch.nn.Linear(d, 3), torch.nn.Linear(d, 3),
                                 torch.nn.Linear(d, len(extras))]).to(device)
    targets = torch.tensor([[*attributes(m)[:3], extras.index(attributes(m)[3])] for m in metas])
    opt = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=2e-3)
    model.train()
    for i in range(iters):
        idx = torch.randint(len(captions), (64,), generator=gen)
        ids, mask = tok.batch([captions[j] for j in idx.tolist()], device)
        y = targets[idx].to(device)
        with train_autocast(device, amp):  # forward + loss only; backward and the fp32 weights stay outside
            feat = model(ids, mask)
            loss = sum(F.cross_entropy(h(feat), y[:, k], ignore_index=-1) for k, h in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == iters - 1:
            print(f"text iter {i:4d}  loss {loss.item():.4f}", flush=True)
    return tok, model.eval()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="course-small")
    ap.add_argument("--iters", type=int, default=2500)
    ap.add_argument("--text-iters", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pkeep", type=float, default=0.9)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-heldout", type=int, default=1000, help="held-out clips drawn; those with a training caption are dropped")
    ap.add_argument("--eval-only", action="store_true", help="measure the shipped files, record only their metrics (no training)")
    add_run_args(ap, seed=1234)
    ap.add_argument("--vqvae", type=Path, default=VQ_PATH)
    ap.add_argument("--classifier", type=Path, default=CLS_PATH)
    ap.add_argument("--out", type=Path, default=TRANS_PATH)
    ap.add_argument("--text-out", type=Path, default=TEXT_PATH)
    ap.add_argument("--no-manifest", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    device, gen = setup_run(args)
    if args.eval_only:
        return record_eval_only(args, device)
    t_start = time.time()
    amp = autocast_dtype(args.precision, device)
    print(f"training on {run_record(device, amp)}")
    net, norm = load_vqvae(args.vqvae, device)
    clips, feats = clip_features(args.n_train, TRAIN_SEED)
    captions, metas = [c["caption"] for c in clips], [c["meta"] for c in clips]

    # 1. text encoder, then frozen
    t0 = time.time()
    tok, text_model = train_text_encoder(captions, metas, args.text_iters, gen, device, amp)
    for p in text_model.parameters():
        p.requires_grad = False
    text_seconds = time.time() - t0
    atomic_save({"vocab": tok.vocab, "config": dict(text_model.config),
                 "state_dict": {k: v.cpu() for k, v in text_model.state_dict().items()}}, args.text_out, overwrite=True)

    # 2. motion GPT on frozen features
    with torch.no_grad():
        clip_feat = torch.cat([text_model(*tok.batch(captions[i:i + 256], device)) for i in range(0, len(captions), 256)])
    cfg = Config.from_name(args.preset, vocab_size=net.nb_code + 2, clip_dim=TEXT_CONFIG["clip_dim"])
    L = cfg.block_size - 1
    seqs = torch.full((len(feats), L + 1), cfg.pad_id, dtype=torch.long)  # codes + END, padded
    for i, f in enumerate(feats):
        T = f.shape[0] - f.shape[0] % net.frames_per_code
        codes = net.encode(norm.norm(torch.from_numpy(f[:T]))[None].to(device))[0].cpu()[:L]
        seqs[i, : len(codes)] = codes
        seqs[i, len(codes)] = cfg.end_id
    model = MotionGPT(cfg).to(device)
    print(f"GPT {args.preset}: {sum(p.numel() for p in model.parameters()):,} parameters; {len(seqs)} sequences", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, args.iters // 20)
    t0 = time.time()
    model.train()
    for i in range(args.iters):
        lr = args.lr * min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / args.iters)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(seqs), (args.batch,), generator=gen)
        target = seqs[idx]
        inp = target[:, :-1].clone()
        corrupt = (torch.rand(inp.shape, generator=gen) > args.pkeep) & (inp < cfg.nb_code)
        inp[corrupt] = torch.randint(cfg.nb_code, (int(corrupt.sum()),), generator=gen)
        with train_autocast(device, amp):
            loss = model.loss(inp.to(device), clip_feat[idx].to(device), target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i % 100 == 0 or i == args.iters - 1:
            print(f"gpt iter {i:5d}  loss {loss.item():.4f}  {time.time() - t0:5.0f}s", flush=True)
    gpt_seconds = time.time() - t0
    atomic_save(save_trans(model, {"text_encoder": args.text_out.name}), args.out, overwrite=True)

    # 3. text-to-motion accuracy on held-out captions absent from training, through the shipped files
    pipe = load_pipeline(args.vqvae, args.out, args.text_out, device)
    results = evaluate_text_to_motion(pipe, load_classifier(args.classifier, device), captions, args.n_heldout)
    total_seconds = time.time() - t_start
    if not args.no_manifest:
        common = {"seed": args.seed, "data_seeds": {"train": TRAIN_SEED, "heldout": HELDOUT_SEED}}
        update_manifest(args.text_out, {**common,
                        "recipe": "python -m course_lib.train.motion_trans" + (" " + " ".join(argv) if argv else ""),
                        "format": "{'vocab', 'config', 'state_dict'}; frozen at inference; width = clip_dim",
                        "config": dict(text_model.config),
                        "metrics": {"train_iters": args.text_iters, "train_seconds": round(text_seconds), **run_record(device, amp)}})
        entry = update_manifest(args.out, {**common,
            "recipe": "python -m course_lib.train.motion_trans" + (" " + " ".join(argv) if argv else ""),
            "format": "{'trans': state_dict ('module.' prefixes), 'config', 'text_encoder'}",
            "config": {**cfg.__dict__}, "preset": args.preset,
            "metrics": {"text_to_motion": results,
                        "final_train_loss": round(loss.item(), 4), "train_iters": args.iters, "train_seconds": round(gpt_seconds),
                        "recipe_seconds_total": round(total_seconds), **run_record(device, amp)}})
        print(f"recorded {entry['path']} in MANIFEST.json ({entry['size_bytes'] / 1e6:.1f} MB)")
    print(f"saved {display_path(args.out)} and {display_path(args.text_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
