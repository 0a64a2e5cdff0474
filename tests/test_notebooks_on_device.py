"""Every notebook run with device="auto" (papermill), compared loosely with its committed CPU run.

Runs only when COURSE_TEST_DEVICE is set (`make test-gpu` sets it to cuda on a CUDA machine;
COURSE_TEST_DEVICE=cpu checks the test itself on a laptop). Text cannot match a GPU run (timings,
sampled tokens, float rounding differ), so the check is structural: the run finishes without an
error, every code cell that printed or drew something on the CPU does so again, and every figure is
still a figure.
"""

from __future__ import annotations

import json
import os

import pytest

from course_lib.core.paths import NOTEBOOKS
from course_lib.course.run_course import notebooks

DEVICE = os.environ.get("COURSE_TEST_DEVICE")
pytestmark = pytest.mark.skipif(not DEVICE, reason="set COURSE_TEST_DEVICE (make test-gpu does) to run notebooks on a device")


def output_kinds(cell: dict) -> set[str]:
    """What a code cell showed: 'text' (stream or text/plain), 'image' (png/svg), 'html', 'error'."""
    kinds = set()
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "error":
            kinds.add("error")
        elif kind == "stream":
            kinds.add("text")
        else:
            data = out.get("data", {})
            kinds |= {"image" for k in data if k.startswith("image/")}
            kinds |= {"html" for k in data if k == "text/html"}
            kinds |= {"text" for k in data if k == "text/plain" and not any(m.startswith("image/") for m in data)}
    return kinds


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_on_the_device(nb, tmp_path):
    pm = pytest.importorskip("papermill")
    out = tmp_path / nb.name
    pm.execute_notebook(str(nb), str(out), parameters={"device": "auto"}, cwd=str(NOTEBOOKS),
                        kernel_name="python3", progress_bar=False)  # an error in any cell raises here
    committed = [c for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    ran = [c for c in json.loads(out.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"
           and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    assert len(ran) == len(committed)
    for i, (cpu, dev) in enumerate(zip(committed, ran, strict=True)):
        missing = output_kinds(cpu) - {"error"} - output_kinds(dev)
        assert not missing, f"{nb.name} code cell {i}: showed {sorted(missing)} on the CPU, nothing of that kind with device='auto'"
        assert "error" not in output_kinds(dev), f"{nb.name} code cell {i} shows an error with device='auto'"
