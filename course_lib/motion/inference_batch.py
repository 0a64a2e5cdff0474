"""Batch text-to-motion (seed 004's inference_batch.py, repaired).

    python -m course_lib.motion.inference_batch --infer_batch_prompt assets/motion_prompts.txt \\
        --out_dir runs/motion_batch --exp_name demo

One prompt per line (UTF-8; a BOM is stripped). Each prompt gets a new numbered folder under
OUT_DIR/EXP_NAME/ (largest existing number + 1) holding features.npy (T, 67), joints.npy
(T, 22, 3), prompt.txt and motion.gif. The folder is written under a hidden temporary name and
renamed to its number only when complete, so a Ctrl-C (exit 130) or a crash never leaves a
numbered folder without its GIF, and two runs never share one. Empty and over-long lines, and
prompts with no word the text encoder knows (it reads English [a-z] words only, so
"一个人向前走" would become a lone <unk> and an arbitrary motion), are reported and skipped;
the run goes on and ends with a summary. Every bad argument (non-UTF-8 prompt file, NaN
temperature, an --exp_name that leaves --out_dir, an output folder that cannot be created)
is one message and exit code 2 before any model is loaded.

Fixes over the seed: no hard-coded CUDA (--device auto), folders created even when missing,
numbering that cannot collide, GIF through Pillow (no ffmpeg), a clear message and exit
code 2 for a missing prompt file or checkpoint, END never sampled first (no empty motion).

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from course_lib.core.checkpoints import CheckpointError
from course_lib.core.checks import check_float, is_valid
from course_lib.core.device import pick_device
from course_lib.core.files import atomic_write, check_output_folder, claim_numbered_folder, write_error
from course_lib.core.paths import RUNS, display_path, link_problem
from course_lib.motion.pipeline import DEFAULT_TEMPERATURE, TEXT_PATH, TRANS_PATH, VQ_PATH, load_pipeline
from course_lib.motion.render import save_gif

MAX_CHARS = 200


def _next_number(root: Path) -> int:
    """Largest numbered entry + 1; files count too, so a stray file named "3" is skipped, not looped on."""
    return max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=-1) + 1


def claim_folder(root: Path) -> Path:
    """Create and return root/<largest number + 1>, claimed atomically (see files.claim_numbered_folder)."""
    return claim_numbered_folder(root)


def publish_folder(tmp: Path, root: Path) -> Path:
    """Rename a finished temp folder to root/<largest number + 1>; the number appears only with all its files.

    rename(2) onto an existing non-empty folder or a file fails, so a concurrent run that took
    the number first just moves us on to the next one.
    """
    while True:
        candidate = root / str(_next_number(root))
        try:
            os.rename(tmp, candidate)
            return candidate
        except OSError:
            if not candidate.exists():
                raise
            continue


def write_motion(motion, prompt: str, root: Path, gif: bool = True) -> Path:
    """Write one motion's files into a hidden temporary folder, then publish it under the next number."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # hidden until complete
    os.mkdir(tmp)
    try:
        atomic_write(tmp / "features.npy", lambda f: np.save(f, motion.features))
        atomic_write(tmp / "joints.npy", lambda f: np.save(f, motion.joints))
        atomic_write(tmp / "prompt.txt", lambda f: f.write((prompt + "\n").encode("utf-8")))
        if gif:
            save_gif(motion.joints, tmp / "motion.gif", title=prompt[:40])
        return publish_folder(tmp, root)
    except BaseException:  # Ctrl-C or a full disk: no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_prompts(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM stripped); ValueError naming the fix for binary or non-UTF-8 files."""
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"prompt file {display_path(path)} looks binary (it contains NUL bytes); "
                         "pass a UTF-8 text file with one prompt per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {display_path(path)} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8 and run again") from None
    return text.splitlines()


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
    """Run the CLI; a Ctrl-C ends with one line and exit code 130 (finished folders stay, the unfinished one is removed)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): every numbered folder written so far is complete; the unfinished one was removed",
              file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    for flag, p in (("--infer_batch_prompt", args.infer_batch_prompt), ("--out_dir", args.out_dir), ("--resume_pth", args.resume_pth),
                    ("--resume_trans", args.resume_trans), ("--text_encoder", args.text_encoder)):
        problem = link_problem(p) if p.is_symlink() or not p.exists() else None
        if problem == "a symlink loop" or (problem and flag != "--out_dir"):
            ap.error(f"{flag} {display_path(p)}: the path goes through {problem}; fix the link or pass another path")
    if not args.infer_batch_prompt.is_file():
        ap.error(f"prompt file not found: {display_path(args.infer_batch_prompt)} "
                 "(pass --infer_batch_prompt with a text file holding one prompt per line)")
    for flag, p in (("--resume_pth", args.resume_pth), ("--resume_trans", args.resume_trans), ("--text_encoder", args.text_encoder)):
        if not p.is_file():
            ap.error(f"{flag}: checkpoint not found: {display_path(p)} "
                     "(pass the right file, or rebuild the shipped ones with `make checkpoints`)")
    if not is_valid(check_float, args.temperature, low=0.0):
        ap.error(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if (args.top_k is not None and args.top_k < 1) or args.max_chars < 1:
        ap.error("--top_k must be >= 1 and --max_chars >= 1")
    root = args.out_dir / args.exp_name
    if (problem := link_problem(root)) == "a symlink loop":
        ap.error(f"--exp_name {display_path(root)}: the path goes through {problem}; pick another --exp_name")
    if (args.exp_name in ("", ".", "..") or Path(args.exp_name).name != args.exp_name
            or not root.resolve().is_relative_to(args.out_dir.resolve()) or root.resolve() == args.out_dir.resolve()):
        ap.error(f"--exp_name must be a plain folder name inside --out_dir (like 'demo'), got {args.exp_name!r}")
    try:
        lines = read_prompts(args.infer_batch_prompt)
        check_output_folder(root, "--out_dir")
    except (OSError, ValueError) as exc:
        ap.error(str(exc))
    try:
        device = pick_device(args.device)
        pipe = load_pipeline(args.resume_pth, args.resume_trans, args.text_encoder, device)
    except (CheckpointError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Loaded VQ-VAE {display_path(args.resume_pth)}, transformer {display_path(args.resume_trans)}, "
          f"text encoder {display_path(args.text_encoder)}")

    gen = torch.Generator().manual_seed(args.seed)
    written, skipped = [], []
    for n, line in enumerate(tqdm(lines, desc="prompts", unit="prompt", disable=args.quiet), start=1):
        prompt = line.strip()
        why = check_line(line, args.max_chars)
        if why is None and not pipe.text.tokenizer.known_words(prompt):
            why = (f"no word the text encoder knows in {prompt[:40]!r}; it reads English words only, "
                   "e.g. 'a person walks forward'")
        if why:
            skipped.append((n, why))
            tqdm.write(f"line {n}: skipped ({why})")
            continue
        unknown = pipe.text.tokenizer.unknown_words(prompt)
        if unknown:
            tqdm.write(f"line {n}: words the text encoder cannot read (treated as <unk>): {', '.join(unknown[:8])}")
        motion = pipe.generate([prompt], temperature=args.temperature, top_k=args.top_k, generator=gen)[0]
        try:
            folder = write_motion(motion, prompt, root, gif=not args.no_gif)
        except OSError as exc:  # a full disk, a read-only folder: one line; the folders finished before stay complete
            print(f"error: {write_error(exc, root, name_file=False)}; line {n} was not saved, {len(written)} motion(s) written before it "
                  "are complete. Free some space or pick another --out_dir.", file=sys.stderr)
            return 1
        written.append((n, folder, len(motion.codes), unknown))
    print(f"Summary: {len(written)} motion(s) written under {display_path(root)}, {len(skipped)} line(s) skipped.")
    for n, folder, n_codes, unknown in written:
        note = f"; could not read: {', '.join(unknown[:8])}" if unknown else ""
        print(f"  line {n} -> {display_path(root)}/{folder.name} ({n_codes} codes, {4 * n_codes} frames{note})")
    for n, why in skipped:
        print(f"  line {n}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
