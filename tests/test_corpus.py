"""The listing grammar: its size, its held-out split, and a parser that names what is wrong."""

import random

import pytest

from course_lib.text.corpus import (
    BRANDS,
    CATALOG,
    check_listing,
    enumerate_listings,
    generate_corpus,
    grammar_size,
    is_well_formed,
    split_of,
)
from course_lib.train.text import TRAIN_SEED, build_parser


def test_deterministic_and_varied():
    a, b = generate_corpus(500, seed=3), generate_corpus(500, seed=3)
    assert a == b
    assert a != generate_corpus(500, seed=4)
    assert len(set(a)) > 300
    assert {line.split(" ")[0] for line in a} & {"农夫山泉", "蒙牛"}
    assert any(line.startswith("Alpine Spring") for line in a)


def test_every_generated_line_is_well_formed():
    assert all(is_well_formed(line) for line in generate_corpus(5000, seed=11))


def test_every_brand_generates():
    from course_lib.text.corpus import generate_listing
    rng = random.Random(0)
    for brand in BRANDS:
        line = generate_listing(rng, brand)
        assert line.startswith(brand) and is_well_formed(line)
    assert set(BRANDS) == set(CATALOG)


@pytest.mark.parametrize("line,reason", [
    ("农夫山泉 550ml 天然水 瓶装", "product line"),           # shuffled fields
    ("农夫山泉 天然水 瓶装 550ml", "size"),                    # shuffled size/packaging
    ("农夫山泉 天然水 550g 瓶装", "not sold for water"),        # wrong unit
    ("农夫山泉 天然水 550ml 盒装", "packaging"),                # packaging not used for water
    ("农夫山泉 天然水 550ml 瓶装 24盒/提", "multipack"),        # counter does not match packaging
    ("怡宝 东方树叶 绿茶 500ml 瓶装", "product line"),          # another brand's product
    ("奥利奥 夹心饼干 97g 盒装", "variant"),                    # missing variant
    ("Sunbeam Instant Ramen Beef 105g Bag, Pack of 7", "multipack"),
    ("Sunbeam Instant Ramen Beef 105g Bag Pack of 5", "multipack"),
    ("Sunbeam Instant Ramen Beef 105g Bag, Pack of 5 extra", "multipack"),
    ("asdf qwer", "brand"),
    ("", "empty"),
    (" 农夫山泉 天然水 550ml 瓶装", "whitespace"),
    ("农夫山泉 天然水 550ml 瓶装\x00", "packaging"),
    ("农夫山泉 天然水 550ml 瓶装 有机 新品", "unexpected"),              # tags out of order
    ("农夫山泉 天然水 550ml 瓶装 新品 新品", "unexpected"),              # a tag twice
    ("Sunbeam Instant Ramen Beef 105g Bag, Organic, New", "unexpected"),
    ("Sunbeam Instant Ramen Beef 105g Bag New", "multipack or tag"),   # missing comma
    ("Sunbeam Instant Ramen Beef 105g Bag, Pack of 5, 新品", "unexpected"),  # a Chinese tag on an English line
    ("蒙牛 纯牛奶 Low Fat 250ml 盒装", "size"),                        # an English modifier on a Chinese line
])
def test_corrupted_lines_rejected_with_reason(line, reason):
    ok, why = check_listing(line)
    assert not ok and reason in why


def test_random_corruptions_rejected():
    rng = random.Random(5)
    lines = generate_corpus(300, seed=9)
    rejected = 0
    for line in lines:
        fields = line.split(" ")
        shuffled = fields[:]
        while shuffled == fields and len(fields) > 2:
            rng.shuffle(shuffled)
        if shuffled != fields:
            rejected += not is_well_formed(" ".join(shuffled))
    # a shuffle can only survive if it happens to produce the same string
    assert rejected >= 295


def test_grammar_has_over_a_million_lines_and_the_count_is_exact():
    assert grammar_size() >= 1_000_000
    assert grammar_size() == sum(grammar_size(b) for b in BRANDS)
    for brand in ("Sunbeam", "怡宝"):  # enumerate two brands: the formula counts distinct, well-formed lines
        lines = list(enumerate_listings(brand))
        assert len(lines) == len(set(lines)) == grammar_size(brand)
        assert all(is_well_formed(line) and line.startswith(brand) for line in lines[::53])


def test_split_is_fixed_and_about_ten_percent():
    lines = list(enumerate_listings("康师傅"))
    held = [line for line in lines if split_of(line) == "heldout"]
    assert 0.08 < len(held) / len(lines) < 0.12
    assert split_of("农夫山泉 天然水 550ml 瓶装") == split_of("农夫山泉 天然水 550ml 瓶装")  # no per-process hash salt
    assert {split_of(line) for line in lines} == {"train", "heldout"}


def test_generate_corpus_respects_the_split():
    assert all(split_of(line) == "heldout" for line in generate_corpus(300, seed=1, split="heldout"))
    assert all(split_of(line) == "train" for line in generate_corpus(300, seed=1, split="train"))
    mixed = generate_corpus(3000, seed=1, split=None)
    assert 0.05 < sum(split_of(line) == "heldout" for line in mixed) / len(mixed) < 0.15
    with pytest.raises(ValueError, match="split"):
        generate_corpus(3, seed=1, split="test")


def test_the_real_training_stream_never_contains_a_heldout_line():
    """The stream the shipped model was trained on (the recipe's defaults) is disjoint from the held-out split."""
    args = build_parser().parse_args([])
    stream = generate_corpus(args.lines, args.seed, split="train")
    assert args.seed == TRAIN_SEED and len(stream) == args.lines
    assert not [line for line in stream if split_of(line) == "heldout"]
    # and the held-out lines the recipe measures on are absent from it
    from course_lib.train.text import EVAL_LINES, HELDOUT_SEED
    held = generate_corpus(EVAL_LINES, HELDOUT_SEED, split="heldout")
    assert not set(held) & set(stream)
