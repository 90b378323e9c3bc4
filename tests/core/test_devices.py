"""The one device, dtype and bitsandbytes rule (llmkit.core.devices), and that config, training and serving use it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llmkit.config.schema import load_config
from llmkit.core import devices
from llmkit.core.assets import DEFAULT_CONFIG

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA gets")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch report one CUDA GPU of the given compute capability (nothing is run on it)."""

    def install(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    return install


@no_cuda
def test_auto_is_the_cpu_in_float32_without_cuda():
    assert devices.resolve_device() == "cpu" and devices.resolve_device("auto") == "cpu"
    assert devices.resolve_dtype("auto", "cpu") is torch.float32
    assert devices.cuda_capability() == (0, 0) and not devices.ampere_or_newer()
    assert devices.device_name() == "cpu"


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_asked_for_without_cuda_is_a_clear_error(device):
    with pytest.raises(RuntimeError, match=f"device {device} was asked for, but torch sees no CUDA device"):
        devices.resolve_device(device)


# Hopper, Ampere, Ada have bfloat16 tensor cores; Turing (T4) and Volta (V100) do not.
@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((8, 9), "bfloat16"), ((7, 5), "float16"), ((7, 0), "float16")],
)
def test_auto_dtype_on_a_gpu_follows_the_compute_capability(capability, expected):
    assert devices.auto_dtype("cuda", capability) == expected
    assert devices.auto_dtype("cpu", capability) == "float32"  # the CPU ignores the GPU it does not use


def test_auto_dtype_respects_a_half_type_ruled_out():
    assert devices.auto_dtype("cuda", (8, 0), bf16=False) == "float16"
    assert devices.auto_dtype("cuda", (7, 5), fp16=False) == "float32"
    assert devices.auto_dtype("cuda", (8, 0), fp16=False) == "bfloat16"


def test_dtype_names_outside_the_three_are_refused():
    assert devices.torch_dtype("bfloat16") is torch.bfloat16
    assert devices.resolve_dtype("float16", "cpu") is torch.float16  # an explicit dtype is kept on any device
    with pytest.raises(ValueError, match="dtype 'float64': expected bfloat16, float16 or float32"):
        devices.torch_dtype("float64")


def test_nf4_config_is_4bit_double_quantized_in_the_compute_dtype():
    config = devices.bnb_config("nf4", torch.bfloat16)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype is torch.bfloat16
    single = devices.bnb_config("fp4", torch.float16, double_quant=False)
    assert single.bnb_4bit_quant_type == "fp4" and not single.bnb_4bit_use_double_quant


def test_int8_none_and_unknown_quantization():
    int8 = devices.bnb_config("int8", torch.float16)
    assert int8.load_in_8bit and not int8.load_in_4bit and not int8.llm_int8_has_fp16_weight
    assert devices.bnb_config("int8", torch.float16, int8_has_fp16_weight=True).llm_int8_has_fp16_weight
    assert devices.bnb_config("none", torch.float32) is None
    with pytest.raises(ValueError, match="quantization 'int4': expected one of none, nf4, fp4, int8"):
        devices.bnb_config("int4", torch.float32)


@pytest.mark.parametrize(("capability", "dtype", "tf32"), [((8, 6), "bfloat16", True), ((7, 5), "float16", False)])
def test_config_and_server_resolve_auto_the_same_way(fake_gpu, capability, dtype, tf32):
    fake_gpu(capability)
    cfg = load_config(DEFAULT_CONFIG).model_copy(update={"tf32": "auto"})  # and bf16: auto, fp16: auto
    assert devices.resolve_device() == "cuda"
    assert cfg.compute_dtype() == dtype == str(devices.resolve_dtype("auto", "cuda")).removeprefix("torch.")
    assert cfg.tf32_enabled() is tf32


def test_training_quantizes_as_the_server_loads_nf4():
    from llmkit.train.modeling import compute_torch_dtype, quantization_config

    cfg = load_config(DEFAULT_CONFIG)  # load_in_4bit: true, bnb_config_kwargs unset (NF4, double quantization)
    trained = quantization_config(cfg).to_dict()
    assert trained == devices.bnb_config("nf4", compute_torch_dtype(cfg)).to_dict()


def test_devices_is_light_enough_for_the_submission_image():
    """Importing it loads neither torch (lazy) nor peft, datasets or a pipeline stage of llmkit."""
    code = (
        "import sys, llmkit.core.devices; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', 'datasets') "
        "or m.startswith(('llmkit.config', 'llmkit.data', 'llmkit.train', 'llmkit.merge', 'llmkit.submit'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_commands_do_not_open_with_bitsandbytes_optional_kernel_notice():
    # On a CPU with AVX512-BF16, importing peft made bitsandbytes ask to `pip install kernels` at the top of every
    # command's output. The script logs the same record itself, so the check holds on any CPU.
    script = (
        "import logging, sys\n"
        "from llmkit.cli import app\n"
        "import peft, bitsandbytes\n"  # what every stage imports, after the CLI set up its logging
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('pip install kernels (the notice)')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernels" not in result.stderr, result.stderr
