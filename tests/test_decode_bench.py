"""benchmarks/decode.py: real brand prompts of the asked length, the variants checked before timing, and the
extension point (a variant added to VARIANTS is checked and timed like the rest). No timing is asserted."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decode as bench  # noqa: E402

from course_lib.text.corpus import BRANDS  # noqa: E402
from course_lib.text.tokenizer import get_encoding  # noqa: E402


def test_brand_prompts_have_the_length_asked_and_end_with_a_brand():
    enc = get_encoding()
    x = bench.brand_prompts(enc, 3, 96)
    assert x.shape == (3, 96)
    for b in range(3):
        assert enc.decode(x[b].tolist()).endswith("\n" + BRANDS[b])


def test_a_variant_that_changes_tokens_is_reported_and_not_timed(make_gpt, monkeypatch):
    model = make_gpt(block_size=32, dropout=0.0)
    monkeypatch.setattr(bench, "VARIANTS", dict(bench.VARIANTS))
    bench.VARIANTS["wrong"] = lambda s: lambda: s.model.generate(s.x, s.new, temperature=0) + 1
    x = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    rows = bench.run_group([bench.Setup(model, None, x, 4, compile=False)], 1, torch.device("cpu"),
                           {"batch": 2, "context": 12})
    by = {r["method"]: r for r in rows}
    assert set(by) == {"course cached loop", "wrong"}  # HF absent, compile off, prompt lookup batch 1 only
    assert "tokens_per_s" in by["course cached loop"] and by["course cached loop"]["vs_course_loop"] == 1.0
    assert "tokens_per_s" not in by["wrong"] and "differ" in by["wrong"]["note"]


@pytest.mark.parametrize("argv", [["--contexts", "16"], ["--batch-sizes", "1,x"], ["--threads", "0"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--no-hf", "--no-compile", "--goal-prompts", "0"])
    assert e.value.code == 2
