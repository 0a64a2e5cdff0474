"""`make test-gpu`: the course on a CUDA GPU, with the interpreter's own torch, and a short report.

    make wheelhouse                                   # on a machine with network: every requirement but torch
    make test-gpu PYTHON=/path/to/python-with-cuda-torch

Run by `make test-gpu` inside a venv made with --system-site-packages from that interpreter (so its
CUDA torch is used) and filled from wheelhouse/ only. Steps: the unit tests with
COURSE_TEST_DEVICE=cuda (device-specific cases also run on the GPU), every notebook with
device="auto" (tests/test_notebooks_on_device.py), and benchmarks/decode.py at batch 1 and 16.
The report goes to benchmarks/gpu_report.md (written atomically; the previous one is replaced, it
is the latest GPU run). Without CUDA it prints one line and exits 0. Exit 1 if a test failed.

torch: any 2.x release with the features the course uses, checked here before anything runs:
`torch._dynamo.config.recompile_limit` (caches/static_cache.py, caches/compile_watch.py; torch 2.6
and older only have `cache_size_limit`), `torch.compiler.cudagraph_mark_step_begin` (the CUDA-graph
decode step) and `torch.export.Dim` (chapter 06). The course is developed and its notebooks stored
with torch 2.13.0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "gpu_report.md"
FEATURES = {
    "torch._dynamo.config.recompile_limit": lambda t: hasattr(t._dynamo.config, "recompile_limit"),
    "torch.compiler.cudagraph_mark_step_begin": lambda t: hasattr(t.compiler, "cudagraph_mark_step_begin"),
    "torch.export.Dim": lambda t: hasattr(t.export, "Dim"),
}
DECODE_METHODS = {"course cached loop": "03", "static, compiled decode": "06", "static, compiled decode + prefill": "06",
                  "speculative k=4 (course)": "08"}


def missing_features(torch) -> list[str]:
    """Names of the torch features the course needs that this torch lacks."""
    import torch._dynamo  # noqa: F401 - make the submodules importable for the checks
    import torch.export  # noqa: F401
    return [name for name, has in FEATURES.items() if not has(torch)]


def junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / skipped from a pytest --junitxml file (errors count as failed)."""
    if not path.exists():
        return {"passed": 0, "failed": 1, "skipped": 0}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def pytest_run(args: list[str], junit: Path, env: dict) -> dict[str, int]:
    subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", *args], cwd=REPO, env=env, check=False)
    return junit_counts(junit)


def decode_rows(out: Path, env: dict, batches: str) -> list[dict]:
    """benchmarks/decode.py on cuda: context 128, 32 new tokens, no Hugging Face; its JSON rows."""
    cmd = [sys.executable, "benchmarks/decode.py", "--device", "cuda", "--batch-sizes", batches, "--contexts", "128",
           "--goal-prompts", "0", "--repeats", "3", "--no-hf", "--curve-batches", "1,16", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    if r.returncode != 0 or not out.exists():
        return []
    return json.loads(out.read_text(encoding="utf-8"))["rows"]


def render(info: dict, units: dict, books: dict, rows: list[dict]) -> str:
    """The report: device, torch, tests and notebooks passed, decode tokens/s at batch 1 and 16."""
    lines = ["# GPU run (`make test-gpu`)", "",
             f"Run {info['when']} on **{info['device']}** (CUDA {info['cuda']}), torch {info['torch']}, "
             f"Python {info['python']}, commit `{info['commit']}`.", "",
             "| check | passed | failed | skipped |", "|---|---:|---:|---:|",
             f"| unit tests, COURSE_TEST_DEVICE=cuda | {units['passed']} | {units['failed']} | {units['skipped']} |",
             f"| notebooks, device=\"auto\" | {books['passed']} | {books['failed']} | {books['skipped']} |", "",
             "Greedy decoding with the shipped text model (`benchmarks/decode.py --device cuda --batch-sizes 1,16 "
             "--contexts 128 --goal-prompts 0 --repeats 3 --no-hf`): new tokens per second, median of 3 interleaved "
             "rounds, one run on this machine.", "",
             "| method (chapter) | batch | tokens/s | ms per step |", "|---|---:|---:|---:|"]
    for r in rows:
        if r.get("method") in DECODE_METHODS and "tokens_per_s" in r:
            lines.append(f"| {r['method']} ({DECODE_METHODS[r['method']]}) | {r['batch']} | {r['tokens_per_s']:.1f} | "
                         f"{r['ms_per_token_step']:.2f} |")
    if not rows:
        lines.append("| benchmarks/decode.py failed: see the console output | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tests/gpu_run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", type=Path, default=REPORT, help="where to write the report (default benchmarks/gpu_report.md)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print(f"no torch in {sys.executable}: make test-gpu skipped (pass PYTHON=/path/to/python-with-cuda-torch)")
        return 0
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}): make test-gpu skipped")
        return 0
    missing = missing_features(torch)
    if missing:
        print(f"torch {torch.__version__} lacks {', '.join(missing)}, which the course uses; install torch 2.7 or newer "
              "(the course is developed on 2.13.0)", file=sys.stderr)
        return 2
    from course_lib.course.report import git_state

    commit, dirty = git_state(REPO)
    info = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda, "torch": torch.__version__, "python": platform.python_version(),
            "commit": commit[:12] + (" (with uncommitted changes)" if dirty == "yes" else "")}
    env = {**os.environ, "COURSE_TEST_DEVICE": "cuda", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        units = pytest_run(["tests", "--ignore=tests/test_notebooks_on_device.py"], tmp / "units.xml", env)
        books = pytest_run(["tests/test_notebooks_on_device.py"], tmp / "notebooks.xml", env)
        rows = decode_rows(tmp / "decode.json", env, "1,16")
    from course_lib.core.files import atomic_write_text

    text = render(info, units, books, rows)
    atomic_write_text(args.report, text)
    print(text)
    print(f"report written to {args.report.relative_to(REPO) if args.report.is_relative_to(REPO) else args.report}")
    return 0 if units["failed"] == 0 and books["failed"] == 0 and rows else 1


if __name__ == "__main__":
    sys.exit(main())
