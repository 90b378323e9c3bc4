"""The challenge's facts as the README states them."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.core.challenge import TRACKS, Projection, Track, project_training, track_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_track_table_is_the_generated_one():
    table = track_table()
    assert "| 4090 | RTX 4090, sm_89 | 23.6 GiB | `nvidia/cuda:" in table
    assert table in (ROOT / "README.md").read_text(), (
        "README's track table is stale: paste `python -c 'from llmkit.core.challenge import track_table; "
        "print(track_table())'`"
    )


def test_training_projection_scales_by_parameters_gpu_and_method():
    def tokens_per_s(track=Track.rtx4090, params=7e9, method="lora"):
        return project_training(track, tokens=10**9, tokens_basis="t", params=params, method=method).tokens_per_s

    assert tokens_per_s(params=14e9) == pytest.approx(tokens_per_s() / 2)  # FLOPs per token follow the parameters
    assert tokens_per_s(params=70e9, method="qlora") == pytest.approx(tokens_per_s(method="qlora") / 10)
    peaks = TRACKS[Track.a100].bf16_tflops / TRACKS[Track.rtx4090].bf16_tflops
    assert peaks == pytest.approx(312 / 165.2)
    assert tokens_per_s(Track.a100) == pytest.approx(tokens_per_s() * peaks)
    assert tokens_per_s(method="full") == pytest.approx(tokens_per_s() * 2 / 3)  # weight gradients too
    full = project_training(Track.rtx4090, tokens=10**9, tokens_basis="t", params=7e9, method="full")
    assert full.projected_s == pytest.approx(10**9 / full.tokens_per_s) and "x 2/3 for a full" in full.sentence()


@pytest.mark.parametrize(("given", "track"), [("a100", Track.a100), ("A100", Track.a100), ("4090", Track.rtx4090)])
def test_a_track_is_read_in_any_case_and_kept_under_its_canonical_name(given, track):
    assert Track(given) is track and Track(given).value in ("A100", "4090")
    with pytest.raises(ValueError, match="'a10' is not a valid Track"):
        Track("a10")


@pytest.mark.parametrize(
    ("ratio", "said"),
    [(0.5, "within the"), (1.02, "over the"), (1.96, "over the"), (2.5, "2.5× over the")],
)
def test_a_projection_over_its_limit_is_a_multiple_only_from_twice_the_limit(ratio, said):
    """A run at 102% of the limit read "1.0× over ... (102% of it)"."""
    evaluation = Projection(open_requests=1, seconds_per_request=1, projected_s=7200 * ratio, basis="b", caveat="c")
    pace = project_training(Track.a100, tokens=1, tokens_basis="t", params=7e9, method="qlora").tokens_per_s
    training = project_training(
        Track.a100, tokens=round(pace * 24 * 3600 * ratio), tokens_basis="t", params=7e9, method="qlora"
    )
    for verdict in (evaluation.verdict(), training.verdict()):
        assert f", {said} " in verdict and f"({ratio:.0%}" in verdict, verdict
