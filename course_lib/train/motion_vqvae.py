"""Recipe for the motion VQ-VAE: `python -m course_lib.train.motion_vqvae`.

Trains on random 32-frame windows of synthetic clips (features normalised by the training
set's mean/std), then measures the shipped weights on held-out clips: MPJPE of the joints
recovered from the reconstruction vs. from the original features (metres and % of body
height), codebook perplexity and dead codes. Saves {'net': state_dict with 'module.' prefixes,
'config', 'mean', 'std'} — the prefixes imitate a data-parallel run, as in seed 004.

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.core.checkpoints import atomic_save, update_manifest
from course_lib.core.paths import CHECKPOINTS, display_path
from course_lib.motion.data import HELDOUT_SEED, TRAIN_SEED, clip_features, random_windows
from course_lib.motion.features import Normalizer, recover_from_ric
from course_lib.motion.skeleton import body_height
from course_lib.motion.vqvae import COURSE_VQ_CONFIG, VQVAE, load_vqvae
from course_lib.train.common import add_run_args, autocast_dtype, run_record, setup_run, train_autocast

VQ_PATH = CHECKPOINTS / "motion" / "vqvae.pth"


@torch.no_grad()
def evaluate(net: VQVAE, norm: Normalizer, feats: list[np.ndarray], device: torch.device) -> dict:
    """MPJPE (global and root-relative), perplexity and code usage over whole held-out clips."""
    net.eval()
    errs, errs_local, counts = [], [], torch.zeros(net.nb_code)
    for f in feats:
        T = f.shape[0] - f.shape[0] % net.frames_per_code
        x = norm.norm(torch.from_numpy(f[:T])[None].to(device))
        idx = net.encode(x)
        counts += torch.bincount(idx.flatten().cpu(), minlength=net.nb_code).float()
        rec = norm.denorm(net.decode_codes(idx))[0]
        j_true, j_rec = recover_from_ric(f[:T]), recover_from_ric(rec)
        errs.append(np.linalg.norm(j_true - j_rec, axis=-1).mean())
        errs_local.append(np.linalg.norm((j_true - j_true[:, :1]) - (j_rec - j_rec[:, :1]), axis=-1).mean())
    p = counts / counts.sum()
    ppl = float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))
    mpjpe = float(np.mean(errs))
    return {"mpjpe_m": round(mpjpe, 4), "mpjpe_pct_body_height": round(100 * mpjpe / body_height(), 2),
            "mpjpe_root_relative_m": round(float(np.mean(errs_local)), 4),
            "perplexity": round(ppl, 1), "codes_used": int((counts > 0).sum()), "dead_codes": int((counts == 0).sum()),
            "heldout_clips": len(feats)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--commit", type=float, default=0.02, help="weight of the commitment loss")
    ap.add_argument("--vel", type=float, default=0.5, help="weight of the velocity (frame difference) loss")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-heldout", type=int, default=300)
    ap.add_argument("--quantizer", choices=["ema_reset", "fsq"], default="ema_reset")
    add_run_args(ap, seed=1234)
    ap.add_argument("--out", type=Path, default=VQ_PATH)
    ap.add_argument("--no-manifest", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.window % 4 or args.iters < 1:
        ap.error("--window must be a multiple of 4 (one code per 4 frames) and --iters >= 1")
    device, gen = setup_run(args)
    t0 = time.time()
    _, train_np = clip_features(args.n_train, TRAIN_SEED)
    _, held_np = clip_features(args.n_heldout, HELDOUT_SEED)
    norm = Normalizer.fit(train_np)
    train = [norm.norm(torch.from_numpy(f)) for f in train_np]
    print(f"data: {len(train)} train clips, {len(held_np)} held-out clips ({time.time() - t0:.0f}s)", flush=True)

    net = VQVAE({**COURSE_VQ_CONFIG, "quantizer": args.quantizer}).to(device)
    amp = autocast_dtype(args.precision, device)
    print(f"parameters: {sum(p.numel() for p in net.parameters()):,}  training on {run_record(device, amp)}")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-6)
    warmup = max(1, args.iters // 20)

    def lr_at(i: int) -> float:
        return args.lr * min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / args.iters)))

    t0 = time.time()
    net.train()
    for i in range(args.iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        x = random_windows(train, args.batch, args.window, gen).to(device)
        with train_autocast(device, amp):  # forward + loss only; backward and the fp32 weights stay outside
            rec, commit, ppl = net(x)
            loss = F.smooth_l1_loss(rec, x) + args.commit * commit
            loss = loss + args.vel * F.smooth_l1_loss(rec[:, 1:, 4:] - rec[:, :-1, 4:], x[:, 1:, 4:] - x[:, :-1, 4:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == args.iters - 1:
            print(f"iter {i:5d}  loss {loss.item():.4f}  commit {commit.item():.4f}  ppl {ppl.item():6.1f}  {time.time() - t0:5.0f}s", flush=True)
    train_seconds = time.time() - t0

    sd = {f"module.{k}": v.detach().cpu() for k, v in net.state_dict().items()}  # as if wrapped in DataParallel
    atomic_save({"net": sd, "config": dict(net.config), "mean": norm.mean, "std": norm.std, "fps": 20}, args.out, overwrite=True)
    shipped, shipped_norm = load_vqvae(args.out, device)
    metrics = evaluate(shipped, shipped_norm, held_np, device)
    print("held-out:", metrics)
    if not args.no_manifest:
        entry = update_manifest(args.out, {
            "recipe": "python -m course_lib.train.motion_vqvae" + (" " + " ".join(argv) if argv else ""),
            "seed": args.seed, "data_seeds": {"train": TRAIN_SEED, "heldout": HELDOUT_SEED},
            "format": "{'net': state_dict ('module.' prefixes), 'config', 'mean', 'std', 'fps'}",
            "config": dict(net.config),
            "metrics": {**metrics, "final_train_loss": round(loss.item(), 4), "train_iters": args.iters,
                        "train_seconds": round(train_seconds), **run_record(device, amp)},
        })
        print(f"recorded {entry['path']} in MANIFEST.json ({entry['size_bytes'] / 1e6:.1f} MB)")
    print(f"saved {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
