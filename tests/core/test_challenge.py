"""The challenge's facts as the README states them."""

from __future__ import annotations

from pathlib import Path

from llmkit.core.challenge import track_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_track_table_is_the_generated_one():
    table = track_table()
    assert "| 4090 | RTX 4090, sm_89 | 23.6 GiB | `nvidia/cuda:" in table
    assert table in (ROOT / "README.md").read_text(), (
        "README's track table is stale: paste `python -c 'from llmkit.core.challenge import track_table; "
        "print(track_table())'`"
    )
