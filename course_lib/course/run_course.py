"""Run every notebook headless with papermill: `python -m course_lib.course.run_course [--params FILE]`.

For instructors. Executed copies go to a new numbered folder under --out (build/ by default),
so a run never overwrites an earlier one. A YAML file may give parameters per notebook:

    02_autoregressive_sampling:
      temperature: 1.3
      device: cpu
    04:            # a notebook's number works too
      seed: 3

Unknown notebook names or parameters that a notebook does not declare, a notebook named twice
(`04:` and `04_act_halting_loops:`), a parameters file that is not UTF-8 text (a BOM is fine) and
an --out that cannot be created are rejected before anything runs (exit code 2), so a typo cannot
silently run with the defaults. Ctrl-C ends with one line and exit code 130: notebooks finished
so far stay, the one that was running leaves nothing behind.
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


def resolve_params(spec: dict, books: list[Path]) -> dict[Path, dict]:
    """Map a YAML spec onto notebook paths; raise ValueError on unknown notebooks or parameters."""
    by_key = {}
    for p in books:
        by_key[p.stem] = p
        by_key[p.stem.split("_")[0]] = p
    resolved: dict[Path, dict] = {}
    given: dict[Path, str] = {}
    for key, params in (spec or {}).items():
        key = f"{key:02d}" if isinstance(key, int) and not isinstance(key, bool) else str(key)
        if key not in by_key:
            raise ValueError(f"unknown notebook {key!r} in the parameters file; known: {', '.join(p.stem for p in books)}")
        if not isinstance(params, dict):
            raise ValueError(f"parameters for {key!r} must be a mapping name: value, got {params!r}")
        nb = by_key[key]
        if nb in given:
            raise ValueError(f"the parameters file names {nb.stem} twice ({given[nb]!r} and {key!r}); "
                             "merge them under one key")
        given[nb] = key
        allowed = declared_parameters(nb)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{nb.stem} has no parameter(s) {unknown}; it declares: {', '.join(allowed)}")
        resolved[nb] = dict(params)
    return resolved


def new_run_dir(out: Path) -> Path:
    """out/run-NNN with the next free number, created atomically (two runs never share one)."""
    return claim_numbered_folder(out, prefix="run-", width=3, first=1)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.course.run_course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "build", help="folder for executed copies (default: build/)")
    ap.add_argument("--params", type=Path, help="YAML file of parameters per notebook")
    ap.add_argument("--only", nargs="*", default=None, help="notebook numbers or names to run (default: all)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    books = notebooks()
    if not books:
        ap.error(f"no notebooks found in {display_path(NOTEBOOKS)}")
    spec = {}
    if args.params is not None:
        import yaml
        if not args.params.is_file():
            ap.error(f"parameters file not found: {display_path(args.params)}")
        try:
            spec = yaml.safe_load(read_text_file(args.params)) or {}
        except ValueError as exc:
            ap.error(str(exc))
        except yaml.YAMLError as exc:
            ap.error(f"{display_path(args.params)} is not valid YAML: {' '.join(str(exc).split())}")
        if not isinstance(spec, dict):
            ap.error(f"{args.params} must map notebook names to parameter mappings")
    try:
        params = resolve_params(spec, books)
    except ValueError as exc:
        ap.error(str(exc))
    if args.only:
        wanted = {str(k) for k in args.only}
        books = [b for b in books if b.stem in wanted or b.stem.split("_")[0] in wanted]
        if not books:
            ap.error(f"--only {args.only} matched no notebook")

    try:
        check_output_folder(args.out, "--out")
    except ValueError as exc:
        ap.error(str(exc))

    import papermill as pm

    run_dir = new_run_dir(args.out)
    print(f"executing {len(books)} notebooks into {display_path(run_dir)}")
    try:
        failed = _execute(pm, books, params, run_dir)
    except KeyboardInterrupt:
        for tmp in run_dir.glob(".*.partial.ipynb"):
            tmp.unlink()
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        print("interrupted (Ctrl-C): the notebooks finished so far are kept; the one that was running was removed",
              file=sys.stderr)
        return 130
    print(f"{len(books) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (BOM stripped); ValueError naming the fix for binary or non-UTF-8 bytes."""
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{display_path(path)} looks binary (it contains NUL bytes); pass a UTF-8 YAML text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{display_path(path)} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8 and run again") from None


def _execute(pm, books: list[Path], params: dict[Path, dict], run_dir: Path) -> list[str]:
    """Run each notebook into run_dir (via a hidden .partial file, renamed when done); return the failed names."""
    failed = []
    for nb in books:
        start = time.time()
        target = run_dir / nb.name
        tmp = run_dir / f".{nb.stem}.partial.ipynb"
        try:
            pm.execute_notebook(str(nb), str(tmp), parameters=params.get(nb, {}), cwd=str(NOTEBOOKS),
                                kernel_name="python3", progress_bar=False)
            os.replace(tmp, target)
            print(f"  ok    {nb.name}  {time.time() - start:5.1f} s  {params.get(nb, {}) or ''}")
        except Exception as exc:  # keep going: one broken notebook should not hide the others
            failed.append(nb.name)
            if tmp.exists():
                os.replace(tmp, run_dir / f"{nb.stem}.FAILED.ipynb")
            print(f"  FAIL  {nb.name}  {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
