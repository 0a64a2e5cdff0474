"""Batch text-to-motion (seed 004's inference_batch.py, repaired).

    python -m course_lib.motion.inference_batch --infer_batch_prompt assets/motion_prompts.txt \\
        --out_dir runs/motion_batch --exp_name demo

One prompt per line. Each prompt gets a new numbered folder under OUT_DIR/EXP_NAME/ (largest
existing number + 1, claimed with os.mkdir so two runs never share one) holding
features.npy (T, 67), joints.npy (T, 22, 3), prompt.txt and motion.gif. Empty and over-long
lines are reported and skipped; the run goes on and ends with a summary.

Fixes over the seed: no hard-coded CUDA (--device auto), folders created even when missing,
numbering that cannot collide, GIF through Pillow (no ffmpeg), a clear message and exit
code 2 for a missing prompt file or checkpoint, END never sampled first (no empty motion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoints import CheckpointError
from ..device import pick_device
from ..files import atomic_write, atomic_write_text, claim_numbered_folder
from ..paths import RUNS, display_path
from .pipeline import DEFAULT_TEMPERATURE, TEXT_PATH, TRANS_PATH, VQ_PATH, load_pipeline
from .render import save_gif

MAX_CHARS = 200


def claim_folder(root: Path) -> Path:
    """Create and return root/<largest number + 1>, claimed atomically (see files.claim_numbered_folder)."""
    return claim_numbered_folder(root)


def check_line(line: str, max_chars: int = MAX_CHARS) -> str | None:
    """Why a prompt line must be skipped, or None when it is fine."""
    text = line.strip()
    if not text:
        return "empty line"
    if len(text) > max_chars:
        return f"{len(text)} characters (limit {max_chars}; use a shorter prompt or --max_chars)"
    return None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.motion.inference_batch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infer_batch_prompt", type=Path, required=True, help="text file, one prompt per line")
    ap.add_argument("--out_dir", type=Path, default=RUNS / "motion_batch", help="base output folder (default runs/motion_batch)")
    ap.add_argument("--exp_name", default="exp_debug", help="sub-folder of out_dir for this experiment")
    ap.add_argument("--resume_pth", type=Path, default=VQ_PATH, help="VQ-VAE checkpoint {'net': ...}")
    ap.add_argument("--resume_trans", type=Path, default=TRANS_PATH, help="transformer checkpoint {'trans': ...}")
    ap.add_argument("--text_encoder", type=Path, default=TEXT_PATH, help="text encoder checkpoint (local file)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    ap.add_argument("--top_k", type=int, default=None)
    ap.add_argument("--max_chars", type=int, default=MAX_CHARS, help="longer lines are skipped")
    ap.add_argument("--no_gif", action="store_true", help="skip the animation (faster)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.infer_batch_prompt.is_file():
        ap.error(f"prompt file not found: {display_path(args.infer_batch_prompt)} "
                 "(pass --infer_batch_prompt with a text file holding one prompt per line)")
    for flag, p in (("--resume_pth", args.resume_pth), ("--resume_trans", args.resume_trans), ("--text_encoder", args.text_encoder)):
        if not p.is_file():
            ap.error(f"{flag}: checkpoint not found: {display_path(p)} "
                     "(pass the right file, or rebuild the shipped ones with `make checkpoints`)")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or args.max_chars < 1:
        ap.error("--temperature must be >= 0, --top_k >= 1 and --max_chars >= 1")
    if not args.exp_name or Path(args.exp_name).name != args.exp_name:
        ap.error(f"--exp_name must be a plain folder name, got {args.exp_name!r}")
    try:
        device = pick_device(args.device)
        pipe = load_pipeline(args.resume_pth, args.resume_trans, args.text_encoder, device)
    except (CheckpointError, RuntimeError, ValueError) as exc:
        ap.error(str(exc))  # the one exit-2 path: usage line, "error: ...", exit code 2
    print(f"Loaded VQ-VAE {display_path(args.resume_pth)}, transformer {display_path(args.resume_trans)}, "
          f"text encoder {display_path(args.text_encoder)}")

    root = args.out_dir / args.exp_name
    lines = args.infer_batch_prompt.read_text(encoding="utf-8").splitlines()
    gen = torch.Generator().manual_seed(args.seed)
    written, skipped = [], []
    for n, line in enumerate(tqdm(lines, desc="prompts", unit="prompt", disable=args.quiet), start=1):
        why = check_line(line, args.max_chars)
        if why:
            skipped.append((n, why))
            tqdm.write(f"line {n}: skipped ({why})")
            continue
        prompt = line.strip()
        unknown = pipe.text.tokenizer.unknown_words(prompt)
        if unknown:
            tqdm.write(f"line {n}: words the text encoder never saw (treated as <unk>): {', '.join(unknown[:8])}")
        motion = pipe.generate([prompt], temperature=args.temperature, top_k=args.top_k, generator=gen)[0]
        folder = claim_folder(root)
        atomic_write(folder / "features.npy", lambda f, m=motion: np.save(f, m.features))
        atomic_write(folder / "joints.npy", lambda f, m=motion: np.save(f, m.joints))
        atomic_write_text(folder / "prompt.txt", prompt + "\n")
        if not args.no_gif:
            save_gif(motion.joints, folder / "motion.gif", title=prompt[:40])
        written.append((n, folder, len(motion.codes)))
    print(f"Summary: {len(written)} motion(s) written under {display_path(root)}, {len(skipped)} line(s) skipped.")
    for n, folder, n_codes in written:
        print(f"  line {n} -> {display_path(root)}/{folder.name} ({n_codes} codes, {4 * n_codes} frames)")
    for n, why in skipped:
        print(f"  line {n}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
