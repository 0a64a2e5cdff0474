"""The course's CJK font: shipped, registered with matplotlib, and drawing Chinese without missing glyphs."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

from course_lib.text import plots  # noqa: E402
from course_lib.text.corpus import BRANDS  # noqa: E402


def test_font_is_small_licensed_and_has_the_course_glyphs():
    assert plots.COURSE_FONT.exists() and plots.COURSE_FONT.stat().st_size < 1_000_000
    assert (plots.COURSE_FONT.parent / "OFL.txt").read_text().count("SIL OPEN FONT LICENSE") >= 1
    font = FT2Font(str(plots.COURSE_FONT))
    text = "农夫山泉" + "".join(BRANDS)
    missing = [c for c in text if not c.isascii() and font.get_char_index(ord(c)) == 0]
    assert not missing, f"rebuild assets/fonts with build_subset.py: no glyph for {''.join(missing)}"


def test_matplotlib_finds_our_font_for_the_family():
    found = font_manager.findfont(plots.COURSE_FONT_FAMILY, fallback_to_default=False)
    assert found == str(plots.COURSE_FONT)
    assert plots.COURSE_FONT_FAMILY in plt.rcParams["font.family"]


def test_a_chinese_title_renders_without_missing_glyph_warnings():
    fig, ax = plt.subplots()
    ax.set_title("农夫山泉 天然水 550ml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    assert not [w for w in caught if "missing from" in str(w.message) or "Glyph" in str(w.message)]
