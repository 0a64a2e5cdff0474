"""The offline cl100k_base tokenizer: pinned ids, round trips, partial characters shown as bytes."""

from course_lib.text.tokenizer import CL100K_VOCAB, get_encoding, show_token


def test_real_cl100k_offline():
    enc = get_encoding()
    assert enc.n_vocab == CL100K_VOCAB == 100277
    assert enc.eot_token == 100257
    # Pinned ids, computed once from the real cl100k_base ranks.
    assert enc.encode("hello world") == [15339, 1917]
    assert enc.encode("农夫山泉 天然水") == [13828, 250, 8192, 104, 58911, 14888, 231, 41766, 102, 61994, 53610]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [100257]


def test_round_trips():
    enc = get_encoding()
    for text in ["农夫山泉 天然水 550ml 瓶装", "Alpine Spring Natural Mineral Water 1.5L Bottle, Pack of 6",
                 "混合 mixed 文本 🙂🚀 and emoji 👩‍👩‍👧", "", "\n\n  tabs\tand spaces  "]:
        assert enc.decode(enc.encode(text)) == text


def test_partial_characters_shown_as_bytes():
    enc = get_encoding()
    ids = enc.encode("农")  # one character, several tokens: each token is a fragment of its UTF-8 bytes
    assert len(ids) > 1
    shown = [show_token(enc, i) for i in ids]
    assert all(s.startswith("<") and s.endswith(">") for s in shown)
    assert b"".join(bytes.fromhex(s[1:-1].replace(" ", "")) for s in shown) == "农".encode()
    assert show_token(enc, enc.encode("hello")[0]) == "hello"
