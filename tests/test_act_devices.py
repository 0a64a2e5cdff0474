"""Chapter 04 on a device other than the CPU: tensors the code creates follow the tensors it is given.

No GPU here, so the stand-in is the `meta` device: a tensor created on the CPU next to meta inputs
shows up as a CPU tensor, where on a GPU it would be the "same device" crash.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from course_lib.act.analysis import halting_steps, rule_steps, trace_steps
from course_lib.act.model import ACTReasoner
from course_lib.core.paths import REPO_ROOT


@pytest.fixture(scope="module")
def meta_trace():
    model = ACTReasoner({"hidden_size": 32, "num_heads": 4, "halt_max_steps": 3}).to("meta")
    x = torch.zeros(5, 25, dtype=torch.long, device="meta")
    return trace_steps(model, x, x)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_replay_rule_steps_follow_the_trace_device(meta_trace, threshold):
    sub, steps = rule_steps(meta_trace, threshold)
    assert meta_trace.correct.device.type == "meta"
    assert steps.device == meta_trace.correct.device, "halting steps must be created on the trace's device"
    assert sub.correct.gather(0, (steps - 1)[None]).device.type == "meta"
    assert halting_steps(meta_trace, 0.5).device.type == "meta"


def test_notebook_04_creates_its_tensors_on_the_device():
    nb = json.loads((REPO_ROOT / "notebooks" / "04_act_halting_loops.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    calls = re.findall(r"torch\.(?:zeros|ones|full|empty)\((?:[^()]|\([^()]*\))*\)", code)
    bad = [c for c in calls if "device=" not in c]
    assert not bad, f"created on the CPU next to device tensors (add device=dev): {bad}"
