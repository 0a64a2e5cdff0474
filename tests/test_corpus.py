"""The listing corpus: the grammar check accepts what the generator makes and names why a line fails."""

import random

import pytest

from course_lib.corpus import BRANDS, CATALOG, check_listing, generate_corpus, is_well_formed


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
    from course_lib.corpus import generate_listing
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
