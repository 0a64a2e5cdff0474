"""Re-run every training recipe in order: `python -m course_lib.train.all` (what `make checkpoints` does).

Each recipe overwrites its checkpoint in checkpoints/ and its MANIFEST.json entry. Commit the
result only when a recipe changed: every retrain adds the checkpoint's size to git history.
--device and --precision are passed to every recipe (default cpu: the shipped fp32 weights);
`--device auto` trains on a GPU, with bf16 autocast on CUDA, and the MANIFEST records it.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time

from course_lib.train.common import DEVICES, PRECISIONS

# Order matters where one model needs another (the motion transformer needs the VQ-VAE).
RECIPES = ["text", "act", "motion_vqvae", "motion_classifier", "motion_trans"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.train.all", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=DEVICES, default="cpu")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = build_parser().parse_args([])  # only non-defaults are passed: the MANIFEST's recipe strings stay as they are
    run_flags = [flag for name in ("device", "precision") if getattr(args, name) != getattr(defaults, name)
                 for flag in (f"--{name}", getattr(args, name))]
    for name in RECIPES:
        module = f"course_lib.train.{name}"
        if importlib.util.find_spec(module) is None:
            print(f"== skipping {module}: not part of this version of the course")
            continue
        print(f"== {module}", flush=True)
        start = time.time()
        result = subprocess.run([sys.executable, "-m", module, *run_flags])
        if result.returncode != 0:
            print(f"{module} failed with exit code {result.returncode}")
            return result.returncode
        print(f"== {module} done in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
