"""The stop-string matcher (issue 19, issue 20): the earliest stop string wins in every function, and the
byte automaton builds in time linear in the stop strings while matching exactly what `bytes.find` finds."""

from __future__ import annotations

import itertools
import random
import time

import pytest
import torch

from course_lib.decoding.stopping import MAX_TABLE_STATES, StopCriteria, _byte_automaton, finished_text, safe_to_emit
from course_lib.text.tokenizer import get_encoding, token_bytes


@pytest.fixture(scope="module")
def enc():
    return get_encoding()


# ------------------------------------------------------------------ the earliest stop string, in any order
@pytest.mark.parametrize("stops", list(itertools.permutations([" 瓶装", " 盒装", "水"])) + [[" 瓶装", " 盒装"]])
def test_safe_to_emit_cuts_at_the_earliest_stop_string_like_finished_text(enc, stops):
    text = "农夫山泉 盒装 天然 瓶装 矿泉水"
    show, hold = safe_to_emit(text, list(stops))
    assert (show, hold) == ("农夫山泉", "")  # " 盒装" comes first in the text, wherever it is in the list
    assert show == finished_text(enc, enc.encode(text), stop=list(stops))


def test_safe_to_emit_agrees_with_finished_text_on_random_texts(enc):
    rng = random.Random(0)
    alphabet = "ab 瓶装盒\n"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        show, hold = safe_to_emit(text, stops)
        if any(s in text for s in stops):
            assert hold == "" and show == finished_text(enc, enc.encode(text), stop=stops), (text, stops)
        else:  # nothing to cut: hold back exactly the longest tail that some stop string starts with
            longest = max((n for n in range(len(text) + 1) for s in stops if n < len(s) and s.startswith(text[len(text) - n:])),
                          default=0)
            assert show + hold == text and len(hold) == longest, (text, stops, hold)


# ------------------------------------------------------------------ the byte automaton
def reference_done(data: bytes, stops: list[bytes]) -> bool:
    return any(data.find(s) >= 0 for s in stops)


def test_byte_automaton_accepts_exactly_when_a_stop_string_occurs():
    rng = random.Random(1)
    alphabet = b"ab\xe5\x86\n"  # few symbols: overlaps, repeats and shared prefixes are common
    for case in range(400):
        stops = sorted({bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))})
        table = _byte_automaton(tuple(stops))
        accept = table.shape[0] - 1
        data, state = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40))), 0
        assert table.shape[0] <= sum(map(len, stops)) + 2  # linear: one state per trie node, plus ACCEPT
        for i, b in enumerate(data):
            state = int(table[state, b])
            assert (state == accept) == reference_done(data[:i + 1], stops), (case, stops, data[:i + 1])


def feed_tokens(sc: StopCriteria, rows: list[list[int]]) -> list[list[bool]]:
    """done after each step, for rows of equal length fed one token per row per step."""
    steps = []
    for t in range(len(rows[0])):
        steps.append(sc.update(torch.tensor([[r[t]] for r in rows])).tolist())
    return steps


def expected_steps(enc, rows: list[list[int]], stops: list[bytes]) -> list[list[bool]]:
    return [[reference_done(b"".join(token_bytes(enc, x) for x in r[:t + 1]), stops) for r in rows]
            for t in range(len(rows[0]))]


def random_rows(enc, rng: random.Random, alphabet: str, n_rows: int, n_chars: int) -> list[list[int]]:
    rows = [enc.encode("".join(rng.choice(alphabet) for _ in range(n_chars))) for _ in range(n_rows)]
    T = min(len(r) for r in rows)
    return [r[:T] for r in rows]


def test_matcher_on_real_tokens_equals_bytes_find(enc):
    """Tokens split characters (瓶 is two byte pieces), so stop strings split across tokens and across the
    bytes of one character occur; several stop strings per case; each row is checked after every token.
    (Half a character as the stop itself is covered on bytes by the automaton test above.)"""
    rng = random.Random(2)
    alphabet = "ab 瓶装盒\n农"
    for case in range(200):
        stops = [bytes("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))), "utf-8")
                 for _ in range(rng.randint(1, 3))]
        rows = random_rows(enc, rng, alphabet, 3, 16)
        sc = StopCriteria(3, stop=[s.decode() for s in stops], enc=enc, per_token_table=False)
        assert feed_tokens(sc, rows) == expected_steps(enc, rows, stops), (case, stops, rows)


def test_per_token_table_and_byte_walk_agree(enc):
    """The two ways a step runs (one gather in a per-token table, or walking the bytes) give the same rows."""
    rng = random.Random(3)
    alphabet = "ab 瓶装盒\n"
    for _ in range(3):  # each per-token table walks the whole vocabulary: a few cases
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(2)]
        rows = random_rows(enc, rng, alphabet, 4, 20)
        want = expected_steps(enc, rows, [s.encode() for s in stops])
        for per_token_table in (True, False):
            sc = StopCriteria(4, stop=stops, enc=enc, per_token_table=per_token_table)
            assert (sc.table is not None) == per_token_table
            assert feed_tokens(sc, rows) == want


def test_a_ten_thousand_character_stop_string_builds_fast_and_matches(enc):
    stop = "农a" * 4999 + "农b"  # 10,000 characters, 20,000 bytes; the text repeats its prefix: failure links
    text = "农a" * 6000 + "农b!"
    _byte_automaton.cache_clear()
    t0 = time.perf_counter()
    sc = StopCriteria(1, stop=stop, enc=enc)
    seconds = time.perf_counter() - t0
    assert seconds < 5, seconds  # a sanity bound only (the brute-force build did not finish in minutes)
    assert sc.table is None and sc.bytes_table.shape[0] == len(stop.encode()) + 2 > MAX_TABLE_STATES
    ids = enc.encode(text)
    ends = list(itertools.accumulate(len(token_bytes(enc, t)) for t in ids))  # byte offset after each token
    data = b"".join(token_bytes(enc, t) for t in ids)
    found = data.find(stop.encode())
    assert found == len("农a".encode()) * 1001
    complete = next(i for i, e in enumerate(ends) if e >= found + len(stop.encode()))  # the token that completes it
    done_at = next(i for i, t in enumerate(ids) if sc.update(torch.tensor([[t]]))[0])
    assert done_at == complete
    near = StopCriteria(1, stop=stop, enc=enc)
    assert not any(near.update(torch.tensor([[t]]))[0] for t in enc.encode("农a" * 6000 + "农c"))  # never completed
    assert finished_text(enc, ids, stop=stop) == "农a" * 1001
