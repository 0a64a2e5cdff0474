"""Procedural retail product listings in Chinese and English, and a grammar that checks them.

In the spirit of seed 001's training data ("农夫山泉 天然水 550ml 瓶装"): every line is

    brand  product-line  [variant]  [modifier]  size+unit  packaging  [multipack]  [promo]  [label]  [shipping]

and the fields constrain each other: a brand sells only its own product lines, a variant must
belong to its line, the modifier (无糖, Low Fat, ...) and the size must suit the category (no
"550g" of water), the packaging suits category and language, and the multipack counter must
match the packaging ("24瓶/箱" only for 瓶装). Chinese lines separate the optional tail fields
with spaces ("... 瓶装 12瓶/箱 新品 有机 包邮"), English lines with commas ("..., Pack of 6, New, Organic").

Size of the language. `grammar_size()` counts the distinct well-formed lines exactly (1,089,960;
a test enumerates them). A model trained on ~150k lines cannot have memorised the language,
so its samples show whether it learned the *rules*.

Held-out split by construction. `split_of(line)` hashes the whole line (blake2b, so it is the
same on every machine and Python run) and puts ~10% of the grammar in "heldout". Training
draws only "train" lines; held-out loss and "is this sample new?" are measured on lines the
model cannot have seen. `check_listing` parses a line and says why it is not a listing, so
"did the model learn the grammar?" is measurable.

Seed 001 is one of the course's source documents: notebooks/SOURCES.md#seed-001.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

# Sizes per category, as written. Units decide what a category may use.
SIZES = {
    "water": ["350ml", "380ml", "550ml", "1L", "1.5L", "4L", "5L"],
    "drink": ["250ml", "330ml", "450ml", "500ml", "900ml", "1L"],
    "milk": ["200ml", "250ml", "500ml", "950ml", "1L"],
    "yogurt": ["100g", "135g", "200g", "230g", "450g"],
    "biscuit": ["97g", "116g", "194g", "291g", "388g"],
    "nuts": ["26g", "75g", "160g", "250g", "500g", "1kg"],
    "noodles": ["85g", "105g", "120g", "5x105g"],
}
# Packaging per category and language.
PACKAGING = {
    "zh": {"water": ["瓶装", "桶装"], "drink": ["瓶装", "罐装"], "milk": ["盒装", "袋装"], "yogurt": ["盒装", "瓶装"],
           "biscuit": ["盒装", "袋装"], "nuts": ["袋装", "罐装"], "noodles": ["袋装", "桶装"]},
    "en": {"water": ["Bottle", "Jug"], "drink": ["Bottle", "Can"], "milk": ["Carton", "Pouch"], "yogurt": ["Cup", "Bottle"],
           "biscuit": ["Box", "Bag"], "nuts": ["Bag", "Tin"], "noodles": ["Bag", "Cup"]},
}
# Optional modifier after the variant, per category and language (one at most).
MODIFIERS = {
    "zh": {"water": ["弱碱性", "低钠"], "drink": ["无糖", "低糖"], "milk": ["全脂", "低脂", "脱脂"], "yogurt": ["低脂", "零蔗糖"],
           "biscuit": ["低糖", "全麦"], "nuts": ["特级", "小包"], "noodles": ["非油炸", "加量"]},
    "en": {"water": ["Alkaline", "Low Sodium"], "drink": ["Zero Sugar", "Light"], "milk": ["Low Fat", "Skim"],
           "yogurt": ["Low Fat", "No Added Sugar"], "biscuit": ["Reduced Sugar", "Whole Grain"],
           "nuts": ["Premium", "Snack Size"], "noodles": ["Non-Fried", "Extra Large"]},
}
# Multipack: Chinese writes "<n><counter>/<outer>", English ", Pack of <n>"; allowed counts per packaging.
MULTIPACK_ZH = {"瓶装": ("瓶/箱", [6, 12, 24]), "桶装": ("桶/箱", [2, 4, 12]), "罐装": ("罐/箱", [6, 12, 24]),
                "盒装": ("盒/提", [4, 6, 12]), "袋装": ("袋/包", [5, 10, 20])}
MULTIPACK_EN = {"Bottle": [6, 12, 24], "Jug": [2, 4], "Can": [6, 12, 24], "Carton": [4, 6, 12], "Pouch": [5, 10],
                "Cup": [4, 6, 12], "Box": [2, 3], "Bag": [5, 10, 20], "Tin": [2, 3]}
# Optional tail tags, in this order: a promotion, a label, a shipping note. No word is in two lists.
PROMOS = {"zh": ["新品", "限定", "特惠", "热卖", "爆款"], "en": ["New", "Limited Edition", "Value Deal", "Best Seller", "Hot Pick"]}
LABELS = {"zh": ["有机", "进口", "非转基因", "无添加"], "en": ["Organic", "Imported", "Non-GMO", "No Additives"]}
SHIPPING = {"zh": ["包邮", "次日达", "产地直发"], "en": ["Free Shipping", "Next Day", "Ships Direct"]}

# How often each optional field appears when generating (the grammar allows every combination).
P_MODIFIER, P_MULTIPACK, P_PROMO, P_LABEL, P_SHIPPING = 0.3, 0.4, 0.25, 0.2, 0.2
HELDOUT_PERCENT = 10


@dataclass(frozen=True)
class ProductLine:
    name: str
    category: str
    variants: tuple[str, ...] = ()  # empty: the line is sold without a variant


# brand -> (language, product lines)
CATALOG: dict[str, tuple[str, tuple[ProductLine, ...]]] = {
    "农夫山泉": ("zh", (ProductLine("天然水", "water"), ProductLine("东方树叶", "drink", ("茉莉花茶", "乌龙茶", "红茶", "绿茶")),
                      ProductLine("维他命水", "drink", ("柠檬味", "西柚味", "蓝莓味")))),
    "怡宝": ("zh", (ProductLine("纯净水", "water"), ProductLine("蜜水", "drink", ("柠檬味", "百香果味", "青柠味")))),
    "康师傅": ("zh", (ProductLine("冰红茶", "drink", ("柠檬味", "蜜桃味")), ProductLine("红烧牛肉面", "noodles", ("经典", "加辣")),
                   ProductLine("鲜虾鱼板面", "noodles"))),
    "奥利奥": ("zh", (ProductLine("夹心饼干", "biscuit", ("原味", "巧克力味", "草莓味", "抹茶味")),
                   ProductLine("薄脆", "biscuit", ("香草味", "提拉米苏味")))),
    "蒙牛": ("zh", (ProductLine("纯牛奶", "milk"), ProductLine("酸奶", "yogurt", ("原味", "草莓味", "黄桃味")),
                  ProductLine("特仑苏", "milk", ("经典", "有机奶")))),
    "伊利": ("zh", (ProductLine("安慕希", "yogurt", ("原味", "蓝莓味", "芒果味")), ProductLine("金典", "milk", ("经典", "娟姗")))),
    "三只松鼠": ("zh", (ProductLine("每日坚果", "nuts"), ProductLine("夏威夷果", "nuts", ("奶油味", "盐焗味")),
                    ProductLine("碧根果", "nuts", ("奶油味", "原味")))),
    "元气森林": ("zh", (ProductLine("气泡水", "drink", ("白桃味", "青瓜味", "卡曼橘味")),
                    ProductLine("乳茶", "drink", ("浓香原味", "咖啡拿铁味", "茉香奶绿味")))),
    "Alpine Spring": ("en", (ProductLine("Natural Mineral Water", "water"),
                             ProductLine("Sparkling Water", "drink", ("Lime", "Lemon", "Wild Berry")))),
    "Crunchwell": ("en", (ProductLine("Sandwich Cookies", "biscuit", ("Original", "Chocolate", "Strawberry")),
                          ProductLine("Oat Crackers", "biscuit", ("Sea Salt", "Honey")))),
    "Meadow Farm": ("en", (ProductLine("Whole Milk", "milk"), ProductLine("Greek Yogurt", "yogurt", ("Plain", "Honey", "Blueberry")))),
    "Golden Leaf": ("en", (ProductLine("Iced Tea", "drink", ("Lemon", "Peach")), ProductLine("Green Tea", "drink", ("Jasmine", "Mint")))),
    "Nutty Grove": ("en", (ProductLine("Roasted Almonds", "nuts", ("Salted", "Smoked")), ProductLine("Mixed Nuts", "nuts"))),
    "Sunbeam": ("en", (ProductLine("Instant Ramen", "noodles", ("Chicken", "Beef", "Spicy Miso", "Shrimp")),)),
}
BRANDS: list[str] = list(CATALOG)


@dataclass(frozen=True)
class Listing:
    """One point of the grammar: every slot chosen (None = the optional field is absent)."""
    brand: str
    line: str
    variant: str | None
    modifier: str | None
    size: str
    pack: str
    multipack: int | None
    promo: str | None
    label: str | None
    shipping: str | None

    def text(self) -> str:
        lang = CATALOG[self.brand][0]
        head = " ".join(f for f in (self.brand, self.line, self.variant, self.modifier, self.size, self.pack) if f)
        if lang == "zh":
            tail = [f"{self.multipack}{MULTIPACK_ZH[self.pack][0]}" if self.multipack else None, self.promo, self.label,
                    self.shipping]
            return " ".join([head, *(t for t in tail if t)])
        tail = [f"Pack of {self.multipack}" if self.multipack else None, self.promo, self.label, self.shipping]
        return ", ".join([head, *(t for t in tail if t)])


def _multipack_counts(lang: str, pack: str) -> list[int]:
    return MULTIPACK_ZH[pack][1] if lang == "zh" else MULTIPACK_EN[pack]


def _product(brand: str, name: str) -> ProductLine:
    return next(p for p in CATALOG[brand][1] if p.name == name)


def draw_listing(rng: random.Random, brand: str | None = None) -> Listing:
    """One grammar point, drawn field by field (the "natural" distribution of the corpus)."""
    brand = brand if brand is not None else rng.choice(BRANDS)
    lang, lines = CATALOG[brand]
    pl = rng.choice(lines)
    variant = rng.choice(pl.variants) if pl.variants else None
    modifier = rng.choice(MODIFIERS[lang][pl.category]) if rng.random() < P_MODIFIER else None
    size = rng.choice(SIZES[pl.category])
    pack = rng.choice(PACKAGING[lang][pl.category])
    multipack = rng.choice(_multipack_counts(lang, pack)) if rng.random() < P_MULTIPACK else None
    promo = rng.choice(PROMOS[lang]) if rng.random() < P_PROMO else None
    label = rng.choice(LABELS[lang]) if rng.random() < P_LABEL else None
    shipping = rng.choice(SHIPPING[lang]) if rng.random() < P_SHIPPING else None
    return Listing(brand, pl.name, variant, modifier, size, pack, multipack, promo, label, shipping)


def generate_listing(rng: random.Random, brand: str | None = None) -> str:
    """One listing line (any split), drawn field by field."""
    return draw_listing(rng, brand).text()


def split_of(line: str) -> str:
    """"train" or "heldout": a fixed hash of the line, so the split is the same everywhere, forever."""
    bucket = int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest(), "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def generate_corpus(n: int, seed: int, split: str | None = "train", brand: str | None = None) -> list[str]:
    """n listing lines, deterministic for a given seed.

    split="train" keeps only training-split lines (what the model is trained on), "heldout"
    only held-out ones, None the natural mix. Lines are drawn from the natural distribution and
    the other split is rejected, so both splits keep the corpus's field frequencies.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if split not in ("train", "heldout", None):
        raise ValueError(f"split must be 'train', 'heldout' or None, got {split!r}")
    if brand is not None and brand not in CATALOG:
        raise ValueError(f"unknown brand {brand!r}; choose one of {BRANDS}")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        line = generate_listing(rng, brand)
        if split is None or split_of(line) == split:
            out.append(line)
    return out


def enumerate_listings(brand: str) -> Iterator[str]:
    """Every well-formed line of one brand, in a fixed order (used to check grammar_size)."""
    lang, lines = CATALOG[brand]
    for pl in lines:
        for variant in pl.variants or (None,):
            for modifier in (None, *MODIFIERS[lang][pl.category]):
                for size in SIZES[pl.category]:
                    for pack in PACKAGING[lang][pl.category]:
                        for multipack in (None, *_multipack_counts(lang, pack)):
                            for promo in (None, *PROMOS[lang]):
                                for label in (None, *LABELS[lang]):
                                    for ship in (None, *SHIPPING[lang]):
                                        yield Listing(brand, pl.name, variant, modifier, size, pack, multipack, promo,
                                                      label, ship).text()


def grammar_size(brand: str | None = None) -> int:
    """The exact number of distinct well-formed lines (of one brand, or of all), by counting slots.

    Every slot combination writes a different string (the parser reads each one back
    unambiguously), so the count of combinations is the count of lines; a test enumerates
    brands to confirm it.
    """
    brands = BRANDS if brand is None else [brand]
    total = 0
    for b in brands:
        lang, lines = CATALOG[b]
        tail = (1 + len(PROMOS[lang])) * (1 + len(LABELS[lang])) * (1 + len(SHIPPING[lang]))
        for pl in lines:
            packs = sum(1 + len(_multipack_counts(lang, p)) for p in PACKAGING[lang][pl.category])
            total += max(1, len(pl.variants)) * (1 + len(MODIFIERS[lang][pl.category])) * len(SIZES[pl.category]) * packs * tail
    return total


# ---------------------------------------------------------------------------------------- parser

_SIZE = re.compile(r"(\d+x)?\d+(\.\d+)?(ml|L|g|kg)")


class _Reject(Exception):
    pass


def _take(rest: str, options, what: str, sep: str = " ") -> tuple[str, str]:
    """Consume one of `options` (longest first) followed by `sep`, a comma or the end of the line."""
    for opt in sorted(options, key=len, reverse=True):
        if rest == opt or rest.startswith(opt + sep) or rest.startswith(opt + ","):
            return opt, rest[len(opt):].lstrip(" ")
    raise _Reject(f"expected {what} (one of: {', '.join(options)}) at {rest[:20]!r}")


def _maybe(rest: str, options) -> tuple[str | None, str]:
    """Consume one of `options` if the line continues with it, else consume nothing."""
    for opt in sorted(options, key=len, reverse=True):
        if rest == opt or rest.startswith(opt + " ") or rest.startswith(opt + ","):
            return opt, rest[len(opt):].lstrip(" ")
    return None, rest


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
    pl = _product(brand, name)
    if pl.variants:
        _, rest = _take(rest, pl.variants, f"a {name} variant")
    _, rest = _maybe(rest, MODIFIERS[lang][pl.category])
    size = rest.split(" ", 1)[0].rstrip(",")
    if not _SIZE.fullmatch(size):
        raise _Reject(f"expected a size with a unit at {rest[:20]!r}")
    if size not in SIZES[pl.category]:
        raise _Reject(f"size {size} is not sold for {pl.category} (allowed: {', '.join(SIZES[pl.category])})")
    rest = rest[len(size):].lstrip(" ")
    pack, rest = _take(rest, PACKAGING[lang][pl.category], f"{pl.category} packaging")
    if lang == "zh":
        _parse_tail_zh(pack, rest)
    else:
        _parse_tail_en(pack, rest)


def _parse_tail_zh(pack: str, rest: str) -> None:
    """[<n><counter>] [promo] [label], separated by single spaces."""
    fields = rest.split(" ") if rest else []
    counter, counts = MULTIPACK_ZH[pack]
    if fields and fields[0][:1].isdigit():
        if fields[0] not in [f"{n}{counter}" for n in counts]:
            raise _Reject(f"bad multipack {fields[0]!r} for {pack} (allowed: {', '.join(f'{n}{counter}' for n in counts)})")
        fields = fields[1:]
    _parse_tags(fields, "zh")


def _parse_tail_en(pack: str, rest: str) -> None:
    """[, Pack of <n>] [, promo] [, label]: every tail field starts with ", "."""
    if not rest:
        return
    if not rest.startswith(", ") or ",," in rest or rest.endswith(","):
        raise _Reject(f"bad multipack or tag {rest[:20]!r}: tail fields are written ', Pack of N', ', <tag>'")
    fields = rest[2:].split(", ")
    if fields[0].startswith("Pack"):
        allowed = [f"Pack of {n}" for n in MULTIPACK_EN[pack]]
        if fields[0] not in allowed:
            raise _Reject(f"bad multipack {fields[0]!r} for {pack} (allowed: {', '.join(allowed)})")
        fields = fields[1:]
    _parse_tags(fields, "en")


def _parse_tags(fields: list[str], lang: str) -> None:
    """At most one promotion, then at most one label, then at most one shipping note, in that order."""
    for tags in (PROMOS[lang], LABELS[lang], SHIPPING[lang]):
        if fields and fields[0] in tags:
            fields = fields[1:]
    if fields:
        raise _Reject(f"unexpected {fields[0][:20]!r} after the packaging (allowed tags, in this order: "
                      f"{', '.join(PROMOS[lang])}; then {', '.join(LABELS[lang])}; then {', '.join(SHIPPING[lang])})")


def is_well_formed(line: str) -> bool:
    """True when the line parses as a listing (see check_listing for the reason when it does not)."""
    return check_listing(line)[0]
