"""Procedural retail product listings in Chinese and English, and a grammar that checks them.

In the spirit of seed 001's training data ("农夫山泉 天然水 550ml 瓶装"): every line is

    brand  product-line  [variant]  size+unit  packaging  [multipack]

and the fields constrain each other: a brand sells only its own product lines, a variant must
belong to its line, the size and unit must suit the category (no "550g" of water), and the
multipack counter must match the packaging ("24瓶/箱" only for 瓶装). `check_listing` parses a
line and says why it is not a listing, so "did the model learn the grammar?" is measurable.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# Sizes per category: (value as written, unit). Units decide what a category may use.
SIZES = {
    "water": ["380ml", "550ml", "1.5L", "4L", "5L"],
    "drink": ["330ml", "500ml", "900ml", "1L"],
    "milk": ["200ml", "250ml", "1L"],
    "yogurt": ["100g", "200g", "230g"],
    "biscuit": ["97g", "194g", "388g"],
    "nuts": ["26g", "160g", "500g", "1kg"],
    "noodles": ["105g", "120g", "5x105g"],
}
# Packaging per category and language.
PACKAGING = {
    "zh": {"water": ["瓶装", "桶装"], "drink": ["瓶装", "罐装"], "milk": ["盒装", "袋装"], "yogurt": ["盒装", "瓶装"],
           "biscuit": ["盒装", "袋装"], "nuts": ["袋装", "罐装"], "noodles": ["袋装", "桶装"]},
    "en": {"water": ["Bottle", "Jug"], "drink": ["Bottle", "Can"], "milk": ["Carton", "Pouch"], "yogurt": ["Cup", "Bottle"],
           "biscuit": ["Box", "Bag"], "nuts": ["Bag", "Tin"], "noodles": ["Bag", "Cup"]},
}
# Multipack: Chinese writes "<n><counter>/<outer>", English ", Pack of <n>"; allowed counts per packaging.
MULTIPACK_ZH = {"瓶装": ("瓶/箱", [6, 12, 24]), "桶装": ("桶/箱", [2, 4, 12]), "罐装": ("罐/箱", [6, 12, 24]),
                "盒装": ("盒/提", [4, 6, 12]), "袋装": ("袋/包", [5, 10, 20])}
MULTIPACK_EN = {"Bottle": [6, 12, 24], "Jug": [2, 4], "Can": [6, 12, 24], "Carton": [4, 6, 12], "Pouch": [5, 10],
                "Cup": [4, 6, 12], "Box": [2, 3], "Bag": [5, 10, 20], "Tin": [2, 3]}


@dataclass(frozen=True)
class ProductLine:
    name: str
    category: str
    variants: tuple[str, ...] = ()  # empty: the line is sold without a variant


# brand -> (language, product lines)
CATALOG: dict[str, tuple[str, tuple[ProductLine, ...]]] = {
    "农夫山泉": ("zh", (ProductLine("天然水", "water"), ProductLine("东方树叶", "drink", ("茉莉花茶", "乌龙茶", "红茶", "绿茶")),
                      ProductLine("维他命水", "drink", ("柠檬味", "西柚味", "蓝莓味")))),
    "怡宝": ("zh", (ProductLine("纯净水", "water"), ProductLine("蜜水", "drink", ("柠檬味", "百香果味")))),
    "康师傅": ("zh", (ProductLine("冰红茶", "drink", ("柠檬味", "无糖")), ProductLine("红烧牛肉面", "noodles", ("经典", "加辣")),
                   ProductLine("鲜虾鱼板面", "noodles"))),
    "奥利奥": ("zh", (ProductLine("夹心饼干", "biscuit", ("原味", "巧克力味", "草莓味", "抹茶味")),
                   ProductLine("薄脆", "biscuit", ("香草味", "提拉米苏味")))),
    "蒙牛": ("zh", (ProductLine("纯牛奶", "milk"), ProductLine("酸奶", "yogurt", ("原味", "草莓味", "黄桃味")),
                  ProductLine("特仑苏", "milk", ("全脂", "低脂")))),
    "伊利": ("zh", (ProductLine("安慕希", "yogurt", ("原味", "蓝莓味", "芒果味")), ProductLine("金典", "milk", ("有机", "低脂")))),
    "三只松鼠": ("zh", (ProductLine("每日坚果", "nuts"), ProductLine("夏威夷果", "nuts", ("奶油味",)),
                    ProductLine("碧根果", "nuts", ("奶油味", "原味")))),
    "元气森林": ("zh", (ProductLine("气泡水", "drink", ("白桃味", "青瓜味", "卡曼橘味")),
                    ProductLine("乳茶", "drink", ("浓香原味", "咖啡拿铁味")))),
    "Alpine Spring": ("en", (ProductLine("Natural Mineral Water", "water"),
                             ProductLine("Sparkling Water", "drink", ("Lime", "Lemon", "Wild Berry")))),
    "Crunchwell": ("en", (ProductLine("Sandwich Cookies", "biscuit", ("Original", "Chocolate", "Strawberry")),
                          ProductLine("Oat Crackers", "biscuit", ("Sea Salt", "Honey")))),
    "Meadow Farm": ("en", (ProductLine("Whole Milk", "milk"), ProductLine("Greek Yogurt", "yogurt", ("Plain", "Honey", "Blueberry")))),
    "Golden Leaf": ("en", (ProductLine("Iced Tea", "drink", ("Lemon", "Peach")), ProductLine("Green Tea", "drink", ("Jasmine", "Unsweetened")))),
    "Nutty Grove": ("en", (ProductLine("Roasted Almonds", "nuts", ("Salted", "Smoked")), ProductLine("Mixed Nuts", "nuts"))),
    "Sunbeam": ("en", (ProductLine("Instant Ramen", "noodles", ("Chicken", "Beef", "Spicy Miso")),)),
}
BRANDS: list[str] = list(CATALOG)
MULTIPACK_PROB = 0.4


def generate_listing(rng: random.Random, brand: str | None = None) -> str:
    """One listing line, drawn uniformly field by field."""
    brand = brand if brand is not None else rng.choice(BRANDS)
    lang, lines = CATALOG[brand]
    line = rng.choice(lines)
    fields = [brand, line.name]
    if line.variants:
        fields.append(rng.choice(line.variants))
    fields.append(rng.choice(SIZES[line.category]))
    pack = rng.choice(PACKAGING[lang][line.category])
    fields.append(pack)
    text = " ".join(fields)
    if rng.random() < MULTIPACK_PROB:
        if lang == "zh":
            counter, counts = MULTIPACK_ZH[pack]
            text += f" {rng.choice(counts)}{counter}"
        else:
            text += f", Pack of {rng.choice(MULTIPACK_EN[pack])}"
    return text


def generate_corpus(n: int, seed: int) -> list[str]:
    """n listing lines, deterministic for a given seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [generate_listing(rng) for _ in range(n)]


_SIZE = re.compile(r"(\d+x)?\d+(\.\d+)?(ml|L|g|kg)")


def _take(rest: str, options, what: str) -> tuple[str, str]:
    """Consume one of `options` (longest first) followed by a space or the end of the line."""
    for opt in sorted(options, key=len, reverse=True):
        if rest == opt or rest.startswith(opt + " ") or rest.startswith(opt + ","):
            return opt, rest[len(opt):].lstrip(" ")
    raise _Reject(f"expected {what} (one of: {', '.join(options)}) at {rest[:20]!r}")


class _Reject(Exception):
    pass


def check_listing(line: str) -> tuple[bool, str]:
    """Parse one line against the grammar; return (ok, reason). The reason says what is wrong."""
    try:
        _parse(line)
        return True, "well-formed"
    except _Reject as why:
        return False, str(why)


def _parse(line: str) -> None:
    if not isinstance(line, str) or not line.strip():
        raise _Reject("empty line")
    if line != line.strip() or "  " in line:
        raise _Reject("stray whitespace")
    brand, rest = _take(line, BRANDS, "a brand")
    lang, lines = CATALOG[brand]
    name, rest = _take(rest, [pl.name for pl in lines], f"a {brand} product line")
    pl = next(p for p in lines if p.name == name)
    if pl.variants:
        _, rest = _take(rest, pl.variants, f"a {name} variant")
    size = rest.split(" ", 1)[0]
    if not _SIZE.fullmatch(size):
        raise _Reject(f"expected a size with a unit at {rest[:20]!r}")
    if size not in SIZES[pl.category]:
        raise _Reject(f"size {size} is not sold for {pl.category} (allowed: {', '.join(SIZES[pl.category])})")
    rest = rest[len(size):].lstrip(" ")
    pack, rest = _take(rest, PACKAGING[lang][pl.category], f"{pl.category} packaging")
    if not rest:
        return
    if lang == "zh":
        counter, counts = MULTIPACK_ZH[pack]
        allowed = [f"{n}{counter}" for n in counts]
    else:
        allowed = [f", Pack of {n}" for n in MULTIPACK_EN[pack]]
    if rest not in allowed:
        raise _Reject(f"bad multipack {rest[:20]!r} for {pack} (allowed: {', '.join(a.strip(', ') for a in allowed)})")


def is_well_formed(line: str) -> bool:
    """True when the line parses as a listing (see check_listing for the reason when it does not)."""
    return check_listing(line)[0]
