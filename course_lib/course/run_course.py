"""Run the course's notebooks headless with papermill, into a folder an instructor can hand out.

    python -m course_lib.course.run_course                          # every notebook (= make course)
    python -m course_lib.course.run_course --only 02 05             # a subset (= make course ONLY="02 05")
    python -m course_lib.course.run_course --params params.yaml     # parameters per notebook (= make course PARAMS=...)
    python -m course_lib.course.run_course --only 02 -p temperature 1.3   # one parameter for the notebooks run
    python -m course_lib.course.run_course --list                   # notebooks and the parameters each declares

Each run gets a new numbered folder under --out (build/run-001, run-002, ...; never overwritten):
the executed notebooks, one self-contained HTML page per notebook (figures inline), index.html
linking them, and summary.csv / summary.md (notebook, status, seconds, parameters, first error,
git commit and dirty flag), rewritten after every notebook. A params file maps notebooks (name or
number) to parameters:

    02_autoregressive_sampling:
      temperature: 1.3
      device: cpu
    04:            # a notebook's number works too
      seed: 3

Parameters are data (course_lib/course/params.py): the file is UTF-8 YAML of at most 64 KiB with
plain values only (text, numbers, true/false, null, lists, mappings; no tags, anchors, aliases or
dates), and every value reaches the notebook as a Python literal. Unknown notebooks, parameters a
notebook does not declare (with "did you mean"), a notebook named twice and an unusable --out are
all reported at once before any kernel starts (exit code 2). A parameter the notebook itself
refuses ("'temperature' must be >= 0, got -1") is one line in the summary. Ctrl-C ends with one
line and exit code 130: notebooks finished so far stay, the one that was running leaves nothing.
Exit code 1 if any notebook failed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

from course_lib.core.files import check_output_folder, claim_numbered_folder
from course_lib.core.paths import NOTEBOOKS, REPO_ROOT, display_path
from course_lib.course.params import (  # noqa: F401 - read_text_file is part of this module's API
    ParamsError,
    check_values,
    did_you_mean,
    load_yaml,
    read_text_file,
    read_yaml,
)


def notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """NN_title.ipynb and NNx_title.ipynb (a chapter split in two, e.g. 02 and 02b), in course order."""
    found = [*folder.glob("[0-9][0-9]_*.ipynb"), *folder.glob("[0-9][0-9][a-z]_*.ipynb")]
    return sorted(found, key=lambda p: p.stem.split("_")[0])


def declared_parameters(nb_path: Path) -> dict[str, object]:
    """Names and default values assigned in the cell tagged `parameters`."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            out = {}
            for node in tree.body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[node.targets[0].id] = None
            return out
    raise ValueError(f"{display_path(nb_path)} has no cell tagged 'parameters'")


def _keys(books: list[Path]) -> dict[str, Path]:
    """Every name a notebook answers to: its stem and its number ('02', '02b')."""
    by_key = {}
    for p in books:
        by_key[p.stem] = p
        by_key[p.stem.split("_")[0]] = p
    return by_key


def _key(key: object) -> str:
    """YAML reads `04:` as the int 4 and `2` as 2: both mean notebook '04' / '02'."""
    return f"{key:02d}" if isinstance(key, int) and not isinstance(key, bool) else str(key)


def resolve_params(spec: dict, books: list[Path]) -> dict[Path, dict]:
    """Map a params spec onto notebook paths; ParamsError (a ValueError) listing every problem at once."""
    by_key = _keys(books)
    resolved: dict[Path, dict] = {}
    given: dict[Path, str] = {}
    problems: list[str] = []
    for raw_key, params in (spec or {}).items():
        key = _key(raw_key)
        if key not in by_key:
            problems.append(f"unknown notebook {key!r} in the parameters file{did_you_mean(key, list(by_key))}; "
                            f"known: {', '.join(p.stem for p in books)}")
            continue
        nb = by_key[key]
        if not isinstance(params, dict):
            problems.append(f"parameters for {key!r} must be a mapping name: value, got {params!r}")
            continue
        if nb in given:
            problems.append(f"the parameters file names {nb.stem} twice ({given[nb]!r} and {key!r}); merge them under one key")
            continue
        given[nb] = key
        allowed = declared_parameters(nb)
        unknown = sorted((k for k in params if k not in allowed), key=str)
        if unknown:
            hints = "".join(did_you_mean(k, list(allowed)) for k in unknown)
            problems.append(f"{nb.stem} has no parameter(s) {unknown}{hints}; it declares: {', '.join(allowed)}")
        problems += check_values({k: v for k, v in params.items() if k in allowed}, nb.stem)
        resolved[nb] = dict(params)
    if problems:
        raise ParamsError(problems)
    return resolved


def select(only: list[str] | None, books: list[Path]) -> list[Path]:
    """The notebooks named by --only (numbers or names), in course order; ParamsError listing every unknown name."""
    if not only:
        return books
    by_key = _keys(books)
    problems, wanted = [], set()
    for name in only:
        key = _key(int(name)) if name.isdigit() and len(name) < 3 else name.removesuffix(".ipynb")
        if key in by_key:
            wanted.add(by_key[key])
        else:
            problems.append(f"--only {name!r} names no notebook{did_you_mean(key, list(by_key))}; "
                            f"known: {' '.join(p.stem.split('_')[0] for p in books)}")
    if problems:
        raise ParamsError(problems)
    return [b for b in books if b in wanted]


def command_line_params(pairs: list[list[str]] | None, books: list[Path]) -> dict[Path, dict]:
    """-p NAME VALUE (VALUE read as one YAML scalar or flow list) for every selected notebook that declares NAME."""
    if not pairs:
        return {}
    given = {}
    problems = []
    for name, text in pairs:
        try:
            given[name] = load_yaml(text, f"-p {name}")
        except ValueError as exc:
            problems.append(str(exc))
    declared = {nb: declared_parameters(nb) for nb in books}
    everywhere = sorted({k for d in declared.values() for k in d})
    for name in given:
        if not any(name in d for d in declared.values()):
            problems.append(f"-p {name}: no notebook run here declares {name!r}{did_you_mean(name, everywhere)}")
    problems += check_values(given, "-p")
    if problems:
        raise ParamsError(problems)
    return {nb: {k: v for k, v in given.items() if k in declared[nb]} for nb in books}


def new_run_dir(out: Path) -> Path:
    """out/run-NNN with the next free number, created atomically (two runs never share one)."""
    return claim_numbered_folder(out, prefix="run-", width=3, first=1)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.course.run_course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "build", help="folder for run folders (default: build/)")
    ap.add_argument("--params", type=Path, help="YAML file of parameters per notebook")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOKS, metavar="DIR",
                    help="folder of NN_*.ipynb notebooks to run (default: notebooks/; e.g. build/student for a release)")
    ap.add_argument("--only", nargs="*", default=None, metavar="NB",
                    help="notebook numbers or names to run, e.g. --only 02 05 (default: all)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                    help="a parameter for every notebook run that declares it (repeatable); the params file wins")
    ap.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds a single cell may run (default: no limit)")
    ap.add_argument("--no-html", action="store_true", help="skip the HTML pages (index.html still lists the notebooks)")
    ap.add_argument("--progress", choices=["bar", "none"], default=None,
                    help="bar: a progress bar of the running notebook's cells (default on a terminal); none: one line per notebook")
    ap.add_argument("--list", action="store_true", help="list the notebooks and the parameters each declares, then exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    books = notebooks(args.notebooks)
    if not books:
        ap.error(f"no notebooks (NN_name.ipynb) found in {display_path(args.notebooks)}")
    if args.list:
        for nb in books:
            print(f"{nb.stem}\n    " + ", ".join(f"{k}={v!r}" for k, v in declared_parameters(nb).items()))
        return 0
    if args.timeout is not None and not (args.timeout > 0 and args.timeout != float("inf")):
        ap.error(f"--timeout must be a positive number of seconds, got {args.timeout}")

    problems: list[str] = []
    spec: object = {}
    if args.params is not None:
        if not args.params.is_file():
            problems.append(f"parameters file not found: {display_path(args.params)}")
        else:
            try:
                spec, found = read_yaml(read_text_file(args.params), display_path(args.params))
                problems += found
                spec = spec or {}
            except ValueError as exc:
                problems += str(exc).splitlines()
            if not isinstance(spec, dict):
                problems.append(f"{display_path(args.params)} must map notebook names to parameter mappings")
                spec = {}
    params: dict[Path, dict] = {}
    try:
        params = resolve_params(spec, books)
    except ValueError as exc:
        problems += str(exc).splitlines()
    try:
        books = select(args.only, books)
    except ValueError as exc:
        problems += str(exc).splitlines()
    try:
        for nb, given in command_line_params(args.parameter, books).items():
            params[nb] = {**given, **params.get(nb, {})}
    except ValueError as exc:
        problems += str(exc).splitlines()
    try:
        check_output_folder(args.out, "--out")
    except ValueError as exc:
        problems.append(str(exc))
    if problems:  # all of them, then exit 2 before any kernel starts
        ap.print_usage(sys.stderr)
        for line in problems:
            print(f"{ap.prog}: error: {line}", file=sys.stderr)
        ap.exit(2)  # SystemExit(2), as argparse's own errors

    run_dir = new_run_dir(args.out)
    progress = args.progress or ("bar" if sys.stderr.isatty() else "none")
    print(f"executing {len(books)} notebook{'s' * (len(books) != 1)} into {display_path(run_dir)}", flush=True)
    return _run(books, params, run_dir, timeout=args.timeout, html=not args.no_html, progress=progress == "bar")


def _run(books: list[Path], params: dict[Path, dict], run_dir: Path, *, timeout: float | None, html: bool,
         progress: bool) -> int:
    """Execute each notebook, export it, keep the summary current; 0 all ok, 1 some failed, 130 Ctrl-C."""
    from course_lib.course.report import Row, git_state, write_summary

    commit, dirty = git_state()
    rows = [Row(nb.stem, parameters=params.get(nb, {})) for nb in books]
    try:
        for nb, row in zip(books, rows, strict=True):
            _execute_one(nb, row, run_dir, timeout=timeout, html=html, progress=progress)
            write_summary(run_dir, rows, commit, dirty)
    except KeyboardInterrupt:
        for tmp in run_dir.glob(".*.partial.*"):
            tmp.unlink()
        running = next((r for r in rows if r.status == "running"), None)
        if running is not None:
            running.status, running.seconds = "interrupted", None
        if any(r.status not in ("not run", "interrupted") for r in rows):
            write_summary(run_dir, rows, commit, dirty)
        else:
            for f in run_dir.iterdir():
                f.unlink()
            run_dir.rmdir()
        print("interrupted (Ctrl-C): the notebooks finished so far are kept; the one that was running was removed",
              file=sys.stderr)
        return 130
    from course_lib.course.report import counts
    print(f"{counts(rows)}; summary: {display_path(run_dir / 'index.html')}")
    return 0 if all(r.status == "ok" for r in rows) else 1


def _execute_one(nb: Path, row, run_dir: Path, *, timeout: float | None, html: bool, progress: bool) -> None:
    """Run one notebook via a hidden .partial file (renamed when done), fill in its row, export its HTML."""
    import papermill as pm

    from course_lib.course.kernels import QuietKernelManager
    from course_lib.course.report import export_html

    target = run_dir / nb.name
    tmp = run_dir / f".{nb.stem}.partial.ipynb"
    bar = {"desc": f"  {nb.stem}", "leave": False, "file": sys.stderr} if progress else False
    row.status = "running"
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(tmp), parameters=row.parameters, cwd=str(nb.parent), kernel_name="python3",
                            progress_bar=bar, execution_timeout=timeout, kernel_manager_class=QuietKernelManager)
        row.status = "ok"
    except pm.PapermillExecutionError as exc:  # a cell raised: the notebook's own message, one line
        row.status = "error"
        row.error = f"cell {exc.exec_count}: {exc.ename}: {first_line(exc.evalue)}"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # kernel died, timeout, unreadable notebook: keep going with the others
        row.status = "failed"
        row.error = f"{type(exc).__name__}: {first_line(str(exc))}"
    row.seconds = time.perf_counter() - start
    if tmp.exists():
        final = target if row.status == "ok" else run_dir / f"{nb.stem}.FAILED.ipynb"
        os.replace(tmp, final)
        if html:
            try:
                page = export_html(final, final.with_suffix(".html"), base=nb.parent)
                row.html = page.name
            except Exception as exc:  # the executed notebook is still there; say why there is no page
                row.error = row.error or f"HTML export failed: {type(exc).__name__}: {first_line(str(exc))}"
    mark = {"ok": "ok  "}.get(row.status, "FAIL")
    given = f"  {json.dumps(row.parameters, ensure_ascii=False)}" if row.parameters else ""
    print(f"  {mark}  {nb.stem:<36} {row.seconds:6.1f} s{given}" + (f"  {row.error}" if row.error else ""), flush=True)


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of a message, shortened; ANSI colours removed."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
