"""server/text.py without a model: where a completion ends (HELM's newline rule, stop sequences that start inside a
token), an echoed prompt's text pieces under a Llama-2-style tokenizer, and how many candidates top-k asks for."""

from __future__ import annotations

import threading

import pytest

from llmkit.server.text import (
    IncrementalDecoder,
    TokenBytes,
    TokenizerPool,
    TopCandidates,
    cut_pieces,
    prompt_pieces,
    stop_index,
    token_key,
)


@pytest.mark.parametrize(
    ("text", "stops", "newline_rule", "kept"),
    [
        (" B\n\nQuestion: next", [], True, " B"),
        ("\n B\n\nQuestion: next", [], True, "\n B"),  # HELM's answer after a leading newline: not cut to nothing
        (" \n\t\n", [], True, None),  # blank so far: go on
        (" B\nC", [], False, None),  # the rule off
        (" B\nC. D", ["."], True, " B\nC"),  # stop sequences named: no newline rule
        ("one two three", ["three", "two"], True, "one "),  # the earliest of several
        ("abc", ["", "zz"], True, None),  # an empty stop sequence stops nothing
        (" Red\n2. Blue", [""], True, None),  # but it is one: the newline rule is off, as for any named stop
    ],
)
def test_stop_index(text, stops, newline_rule, kept):
    end = stop_index(text, stops, newline_rule)
    assert (text[:end] if end is not None else None) == kept


def test_cut_pieces_trims_the_piece_a_stop_starts_in():
    pieces = [" Red", ".\n", "2", "."]
    text = "".join(pieces)
    assert cut_pieces(pieces, text.index("ed")) == [" R"]
    assert cut_pieces(pieces, text.index("\n")) == [" Red", "."]
    assert cut_pieces(pieces, len(text)) == pieces and cut_pieces(pieces, 0) == []


@pytest.mark.parametrize("prompt", ["Hello world", "The capital\nof France", " Paris", "日本 is far"])
def test_an_echoed_prompt_is_the_prompt_after_a_bos(llama2_style_tokenizer, prompt):
    """Decoded after "<s>", the first word gained a space: echo answered " Hello world" (Llama-2, Mistral)."""
    ids = llama2_style_tokenizer(prompt).input_ids
    assert ids[0] == llama2_style_tokenizer.bos_token_id  # the BOS is the server's `added` token: not echoed
    pieces = prompt_pieces(llama2_style_tokenizer, ids[1:])
    assert len(pieces) == len(ids) - 1 and "".join(pieces) == prompt
    after_bos = IncrementalDecoder(llama2_style_tokenizer, ids[:1])
    assert "".join(after_bos.push(t) for t in ids[1:]) + after_bos.flush() == " " + prompt  # what echo answered


def test_an_invalid_byte_after_a_character_leaves_the_character_whole(llama2_style_tokenizer):
    """A byte-fallback decoder reads a run of byte tokens as one: "😀" then an invalid byte <0xF2> came back as
    four extra U+FFFD ("😀" regrouped with the byte) where decoding the completion alone gives one."""
    tokenizer = llama2_style_tokenizer
    emoji = tokenizer("😀", add_special_tokens=False).input_ids
    assert all(tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in emoji[-4:])  # the emoji as 4 bytes
    completion = [tokenizer.convert_tokens_to_ids("<0xF2>"), *tokenizer("z is", add_special_tokens=False).input_ids]
    decoder = IncrementalDecoder(tokenizer, emoji)
    pieces = [decoder.push(token) for token in completion]
    assert "".join(pieces) + decoder.flush() == "\ufffd z is"
    held = IncrementalDecoder(tokenizer, emoji)  # the invalid byte last: flushed as one U+FFFD
    assert held.push(completion[0]) == "" and held.flush() == "\ufffd"


def test_top_candidates_are_the_fewest_ids_that_always_hold_k_texts(tokenizer, llama2_style_tokenizer):
    """The engines asked for 2k ids whatever the tokenizer: twice the work for one whose texts are all its own
    (SmolLM2's byte-level BPE), too few where more than two ids share a text. Now the fewest that hold k texts
    however the model ranks the ids, checked against the worst ranking: the largest groups of a text first."""
    assert [TopCandidates(tokenizer)(k) for k in (0, 1, 40, 100)] == [0, 1, 40, 100]
    names = TokenBytes(llama2_style_tokenizer)
    groups: dict[str, int] = {}
    for token_id in range(len(llama2_style_tokenizer)):
        text = token_key(names(llama2_style_tokenizer, token_id))
        groups[text] = groups.get(text, 0) + 1
    worst = [text for text, size in sorted(groups.items(), key=lambda group: -group[1]) for _ in range(size)]
    candidates = TopCandidates(llama2_style_tokenizer)
    assert max(groups.values()) == 2 and candidates(40) < 80  # "a" and <0x61>; the old rule's 2k were one more
    for k in range(len(groups) + 2):
        fewest = next((n for n in range(len(worst) + 1) if len(set(worst[:n])) >= k), len(worst))
        assert candidates(k) == fewest, k


def test_the_tokenizer_pool_makes_a_copy_only_when_every_copy_is_lent(llama2_style_tokenizer):
    """The server made all 4 copies of its tokenizer as it started (a few tenths of a second of CPU each for
    SmolLM2's 49,152 tokens), where requests that never overlap use one; the pool still lends each copy to one
    thread at a time, never the tokenizer it copies, and makes no more than its size."""
    pool = TokenizerPool(llama2_style_tokenizer, 2)
    lent = []
    for _ in range(3):
        with pool.borrow() as tokenizer:
            lent.append(tokenizer)
    assert lent[0] is lent[1] is lent[2] and lent[0] is not llama2_style_tokenizer
    assert lent[0].encode("Hello world") == llama2_style_tokenizer.encode("Hello world")
    got = []

    def borrow_a_third():
        with pool.borrow() as tokenizer:
            got.append(tokenizer)

    with pool.borrow() as first, pool.borrow() as second:
        assert first is lent[0] and second not in (first, llama2_style_tokenizer)
        third = threading.Thread(target=borrow_a_third)
        third.start()
        third.join(0.5)
        assert third.is_alive() and not got  # both copies lent: it waits for one
    third.join(10)
    assert got and got[0] in (first, second)
