"""Streaming: text comes out as soon as it is complete, never half a UTF-8 character."""

from __future__ import annotations

import torch

from course_lib.decoding.decode import generate_ids
from course_lib.decoding.streaming import TextStreamer, generate_stream
from course_lib.text.tokenizer import get_encoding

TEXTS = ["农夫山泉 东方树叶 茉莉花茶 500ml 瓶装 24瓶/箱", "鲜虾鱼板面 🙂😀👍🏽 family: 👨‍👩‍👧", "mixed 中文 and English, 威 ✓"]


def test_streamed_pieces_concatenate_to_decode():
    enc = get_encoding()
    for text in TEXTS:
        ids = enc.encode(text)
        got: list[str] = []
        s = TextStreamer(enc, on_text=got.append)
        for t in ids:
            s.put(t)
        s.end()
        assert "".join(got) == enc.decode(ids) == text
        assert all("\ufffd" not in piece for piece in got)  # never half a character
        assert len(got) < len(ids)  # some tokens were held back until their character completed


def test_streamer_holds_bytes_until_they_decode():
    enc = get_encoding()
    ids = enc.encode("鲜")  # three tokens, one byte each
    assert len(ids) == 3
    s = TextStreamer(enc, on_text=lambda t: None)
    assert s.put(ids[0]) == "" and s.pending == "鲜".encode()[:1]
    assert s.put(ids[1]) == ""
    assert s.put(ids[2]) == "鲜" and s.pending == b""


def test_streamer_truncated_end_matches_decode():
    enc = get_encoding()
    ids = enc.encode("水鲜")[:-1]  # stops in the middle of a character
    s = TextStreamer(enc, on_text=lambda t: None)
    s.put(ids)
    s.end()
    assert s.text == enc.decode(ids)  # the dangling bytes become U+FFFD exactly like decode()


def test_random_token_streams_match_decode():
    enc = get_encoding()
    g = torch.Generator().manual_seed(0)
    pool = sorted({t for text in TEXTS for t in enc.encode(text)})
    for _ in range(50):
        ids = [pool[i] for i in torch.randint(0, len(pool), (20,), generator=g).tolist()]
        s = TextStreamer(enc, on_text=lambda t: None)
        for t in ids:
            s.put(t)
        s.end()
        assert s.text == enc.decode(ids)


def test_generate_stream_equals_generated_tokens(make_gpt):
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=32, dropout=0.0)
    pieces: list[str] = []
    text = generate_stream(model, enc, "你好", 25, temperature=1.0, generator=torch.Generator().manual_seed(2),
                           on_text=pieces.append)
    x = torch.tensor([enc.encode("你好")])
    ref = generate_ids(model, x, 25, 1.0, generator=torch.Generator().manual_seed(2))
    assert text == "".join(pieces) == enc.decode(ref[0, x.shape[1]:].tolist())
