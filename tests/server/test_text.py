"""Where a completion ends (server/text.py), without a model: HELM's newline rule and stop sequences that start
inside a token."""

from __future__ import annotations

import pytest

from llmkit.server.text import cut_pieces, stop_index


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
