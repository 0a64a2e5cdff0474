"""What a course run leaves for an instructor: summary.csv / summary.md, one HTML page per notebook, index.html.

The summary is rewritten (atomically) after every notebook, so a run stopped half-way still says
what finished. Each row: notebook, status, seconds, the parameters given, the first error line,
and the git commit of the course with a dirty flag (uncommitted changes to tracked files).
HTML pages come from nbconvert's HTML exporter; figures are already `data:image/png` in the
executed notebook, and `embed_images` inlines any image a markdown cell links, so a page is one
self-contained file to hand out.
"""

from __future__ import annotations

import csv
import html
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.core.files import atomic_write_text
from course_lib.core.paths import REPO_ROOT

COLUMNS = ["notebook", "status", "seconds", "parameters", "error", "commit", "dirty"]


@dataclass
class Row:
    """One notebook of a run. status: ok | error (a cell raised) | failed (kernel died, timeout) | interrupted | not run."""

    notebook: str
    status: str = "not run"
    seconds: float | None = None
    parameters: dict = field(default_factory=dict)
    error: str = ""
    html: str = ""


def git_state(repo: Path = REPO_ROOT) -> tuple[str, str]:
    """(commit, dirty) of the course checkout: ('unknown', '') outside git; dirty = tracked files changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown", ""
    return commit, "yes" if dirty else "no"


def write_summary(run_dir: Path, rows: list[Row], commit: str, dirty: str) -> None:
    """summary.csv, summary.md and index.html in run_dir, each replaced atomically."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(COLUMNS)
    for r in rows:
        out.writerow([r.notebook, r.status, _seconds(r), _params(r), r.error, commit, dirty])
    atomic_write_text(run_dir / "summary.csv", buf.getvalue())
    atomic_write_text(run_dir / "summary.md", summary_markdown(rows, commit, dirty))
    atomic_write_text(run_dir / "index.html", index_html(run_dir.name, rows, commit, dirty))


def _seconds(r: Row) -> str:
    return "" if r.seconds is None else f"{r.seconds:.1f}"


def _params(r: Row) -> str:
    return json.dumps(r.parameters, ensure_ascii=False, sort_keys=True) if r.parameters else ""


def counts(rows: list[Row]) -> str:
    """'12 ok, 1 error' in the order statuses first appear."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.status] = seen.get(r.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in seen.items())


def summary_markdown(rows: list[Row], commit: str, dirty: str) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = [f"# Course run: {counts(rows)}", "",
             f"Commit `{commit}`" + (" with uncommitted changes" if dirty == "yes" else "") + ".", "",
             "| notebook | status | seconds | parameters | first error |", "|---|---|---:|---|---|"]
    lines += [f"| {r.notebook} | {r.status} | {_seconds(r)} | {cell(_params(r))} | {cell(r.error)} |" for r in rows]
    return "\n".join(lines) + "\n"


def index_html(title: str, rows: list[Row], commit: str, dirty: str) -> str:
    """A page linking every executed notebook's HTML, with the summary table."""
    e = html.escape
    body = []
    for r in rows:
        name = f'<a href="{e(r.html)}">{e(r.notebook)}</a>' if r.html else e(r.notebook)
        body.append(f"<tr class=\"{e(r.status.replace(' ', '-'))}\"><td>{name}</td><td>{e(r.status)}</td>"
                    f"<td class=\"num\">{e(_seconds(r))}</td><td><code>{e(_params(r))}</code></td><td>{e(r.error)}</td></tr>")
    dirty_note = " (with uncommitted changes)" if dirty == "yes" else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Inside Inference: {e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; }} tr.ok td:nth-child(2) {{ color: #1a7f37; }}
tr.error td:nth-child(2), tr.failed td:nth-child(2), tr.interrupted td:nth-child(2) {{ color: #cf222e; }}
</style></head><body>
<h1>Inside Inference: {e(title)}</h1>
<p>{e(counts(rows))}. Commit <code>{e(commit)}</code>{e(dirty_note)}.
Summary as <a href="summary.csv">CSV</a> and <a href="summary.md">Markdown</a>.</p>
<table><thead><tr><th>notebook</th><th>status</th><th>seconds</th><th>parameters</th><th>first error</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


def export_html(notebook: Path, target: Path, base: Path | None = None) -> Path:
    """One self-contained HTML page for an executed notebook (figures inline), written atomically.

    `base` is the folder relative image links are read from (the course's notebooks/ folder)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb, resources={"metadata": {"path": str(base or notebook.parent)}})
    return atomic_write_text(target, body)
