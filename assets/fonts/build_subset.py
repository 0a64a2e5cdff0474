"""Rebuild the course's CJK font: Noto Sans CJK SC cut down to the characters the course uses.

    apt-get install -y fonts-noto-cjk && pip install fonttools    # build-time only, not runtime
    python assets/fonts/build_subset.py [--extra FILE ...]

Why: matplotlib's default font has no Chinese glyphs, so 农夫山泉 in a plot title came out as
boxes. The full Noto Sans CJK is ~20 MB; the course uses a few hundred characters, so this keeps
every character found in course_lib/**/*.py, assets/*.txt and notebooks/*.ipynb (plus --extra
files), all printable ASCII, Latin-1 and common CJK punctuation, and converts the outlines to
TrueType (quadratic) so matplotlib can also embed it in PDF/PS. Rerun it when the corpus grows.
License: SIL Open Font License 1.1 (OFL.txt beside the font).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "NotoSansCJKsc-CourseSubset.ttf"
SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
FAMILY = "Noto Sans CJK SC"
COURSE_FAMILY = "Noto Sans CJK SC Course Subset"  # a modified font gets its own name (no 'Source': OFL reserved name)
PUNCTUATION = "、。〈〉《》「」『』【】〔〕〖〗〜・…—–·×÷‧“”‘’％＋－／：；！？，．（）［］｛｝～￥·°±→←↑↓"


def course_characters(extra: list[Path]) -> set[str]:
    files = [*ROOT.glob("course_lib/**/*.py"), *ROOT.glob("assets/*.txt"), *ROOT.glob("notebooks/*.ipynb"), *extra]
    chars = {chr(c) for c in range(0x20, 0x7F)} | {chr(c) for c in range(0xA0, 0x100)} | set(PUNCTUATION)
    for f in files:
        chars |= {c for c in f.read_text(encoding="utf-8") if ord(c) >= 0x80 and c.isprintable()}
    return chars


def to_truetype(font) -> None:
    """CFF (cubic) outlines -> glyf (quadratic), the fontTools otf2ttf recipe."""
    from fontTools.pens.cu2quPen import Cu2QuPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import newTable

    order = font.getGlyphOrder()
    glyphset = font.getGlyphSet()
    quads = {}
    for name in order:
        pen = TTGlyphPen(glyphset)
        glyphset[name].draw(Cu2QuPen(pen, max_err=1.0, reverse_direction=True))
        quads[name] = pen.glyph()
    font["loca"] = newTable("loca")
    font["glyf"] = glyf = newTable("glyf")
    glyf.glyphOrder, glyf.glyphs = order, quads
    for tag in ("CFF ", "VORG"):
        if tag in font:
            del font[tag]
    glyf.compile(font)
    font["maxp"] = maxp = newTable("maxp")
    maxp.tableVersion = 0x00010000
    for field in ("maxZones", "maxTwilightPoints", "maxStorage", "maxFunctionDefs", "maxInstructionDefs",
                  "maxStackElements", "maxSizeOfInstructions", "maxComponentElements"):
        setattr(maxp, field, 1 if field == "maxZones" else 0)
    maxp.compile(font)
    post = font["post"]
    post.formatType, post.extraNames, post.mapping, post.glyphOrder = 2.0, [], {}, order
    font.sfntVersion = "\x00\x01\x00\x00"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra", type=Path, action="append", default=[], help="more text files whose characters to keep")
    ap.add_argument("--source", type=Path, default=SOURCE, help=f"the Noto Sans CJK collection (default {SOURCE})")
    args = ap.parse_args(argv)
    if not args.source.exists():
        ap.error(f"{args.source} not found; install it with `apt-get install -y fonts-noto-cjk`")
    try:
        from fontTools import subset
        from fontTools.ttLib import TTCollection
    except ImportError:
        ap.error("fontTools is missing; `pip install fonttools` (needed to build the font, not to use it)")
    fonts = TTCollection(str(args.source)).fonts
    font = next((f for f in fonts if f["name"].getDebugName(1) == FAMILY), None)
    if font is None:
        ap.error(f"{args.source} holds no {FAMILY!r}")
    chars = course_characters(args.extra)
    sub = subset.Subsetter(subset.Options(layout_features=[], name_IDs=["*"], notdef_outline=True, hinting=False))
    sub.populate(unicodes=[ord(c) for c in chars])
    sub.subset(font)
    to_truetype(font)
    names = font["name"]
    for rec in list(names.names):
        if rec.nameID in (1, 3, 4, 16):
            names.setName(COURSE_FAMILY, rec.nameID, rec.platformID, rec.platEncID, rec.langID)
        elif rec.nameID == 6:
            names.setName(COURSE_FAMILY.replace(" ", ""), rec.nameID, rec.platformID, rec.platEncID, rec.langID)
    font.recalcTimestamp = False  # same input, same bytes
    font.save(OUT)
    cmap = font.getBestCmap()
    missing = sorted(c for c in chars if ord(c) not in cmap)
    print(f"{len(cmap)} characters, {OUT.stat().st_size / 1024:.0f} KB -> {OUT.relative_to(ROOT)}")
    if missing:
        print(f"not in the source font ({len(missing)}): {''.join(missing)[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
