"""The GPU memory fit check: the issue's refusals and acceptances, offline, and the estimate against a real file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.core.challenge import Loading, Track
from llmkit.core.memory import FitError, choose_loading, weight_bytes
from llmkit.core.shapes import KNOWN_SHAPES, model_shape

ROOT = Path(__file__).resolve().parents[2]
LLAMA_13B = "meta-llama/Llama-2-13b-hf"


def test_llama2_13b_in_bf16_is_refused_on_the_4090_with_numbers_and_suggestions():
    with pytest.raises(FitError) as refused:
        choose_loading(LLAMA_13B, KNOWN_SHAPES[LLAMA_13B], Track.rtx4090, Loading.bf16)
    message = str(refused.value)
    assert "13.02B parameters" in message and "23.6 GiB usable" in message
    assert "weights 24.24 + KV cache 1.56" in message  # 13.0e9 params x 2 bytes; 40 layers x 2 x 5120 x 2 bytes x 2048
    assert "it fits in nf4" in message and "--loading nf4" in message
    assert "on the A100 track" in message and "bf16 fits" in message


def test_llama2_13b_defaults_to_4bit_on_the_4090_and_bf16_on_the_a100():
    on_4090 = choose_loading(LLAMA_13B, KNOWN_SHAPES[LLAMA_13B], Track.rtx4090)
    on_a100 = choose_loading(LLAMA_13B, KNOWN_SHAPES[LLAMA_13B], Track.a100)
    assert on_4090.loading is Loading.nf4 and on_4090.fits
    assert on_a100.loading is Loading.bf16 and on_a100.total_gib < 39.4


def test_llama2_70b_fits_nowhere_on_the_4090():
    with pytest.raises(FitError, match="does not fit the 4090 track") as refused:
        choose_loading("meta-llama/Llama-2-70b-hf", KNOWN_SHAPES["meta-llama/Llama-2-70b-hf"], Track.rtx4090)
    assert "(too big)" in str(refused.value) and "fits (" in str(refused.value)  # nf4 on the A100 is suggested


@pytest.mark.parametrize("config", sorted((ROOT / "axolotl_configs").glob("*.yml")), ids=lambda p: p.stem)
def test_every_shipped_config_base_fits_both_tracks_offline(config):
    base = yaml.safe_load(config.read_text())["base_model"]
    for track in Track:
        estimate = choose_loading(base, model_shape(base), track)  # KNOWN_SHAPES: no network
        assert estimate.fits
    # The 7B bases the 2023 teams served on the 4090 fit there in bf16.
    if "7b" in base.lower():
        assert choose_loading(base, model_shape(base), Track.rtx4090).loading is Loading.bf16


def test_bf16_weight_estimate_matches_the_real_checkpoint(default_model_dir):
    # The embedded model is stored in float32: its file is twice its bf16 size, plus a small header.
    on_disk = (default_model_dir / "model.safetensors").stat().st_size
    estimate = weight_bytes(model_shape(str(default_model_dir)), Loading.bf16)
    assert estimate == pytest.approx(on_disk / 2, rel=0.001)


def test_cli_refuses_without_writing_anything():
    before = sorted((ROOT / "submissions").rglob("*"))
    result = CliRunner().invoke(
        app, ["submission", "--track", "4090", "--model", LLAMA_13B, "--revision", "main", "--loading", "bf16"]
    )
    assert result.exit_code == 1
    assert "does not fit the 4090 track" in result.output and "--loading nf4" in result.output
    assert sorted((ROOT / "submissions").rglob("*")) == before
