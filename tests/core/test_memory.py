"""The memory model: the fit check's refusals and acceptances, offline, and both estimates against the real model
loaded on this CPU (weight bytes per loading; QLoRA's frozen base, trainable count and saved activations). Model
shapes for every family: the meta-device shape, the modules an adapter wraps and the trainable count agree with
the real model and with peft, and the NF4 weight bytes with what bitsandbytes loads."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from tiny_families import TINY_FAMILIES
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.plan import plan
from llmkit.config.schema import AxolotlConfig, ConfigWarning, load_config
from llmkit.core.challenge import TRACKS, Loading, Track
from llmkit.core.memory import (
    GIB,
    FitError,
    MemoryEstimate,
    TrainingMemory,
    choose_loading,
    estimate_memory,
    weight_bytes,
)
from llmkit.core.models import load_for_inference
from llmkit.core.shapes import ModelShape, model_shape

ROOT = Path(__file__).resolve().parents[2]
LLAMA_13B = "meta-llama/Llama-2-13b-hf"


def test_llama2_13b_in_bf16_is_refused_on_the_4090_with_numbers_and_suggestions():
    with pytest.raises(FitError) as refused:
        choose_loading(LLAMA_13B, model_shape(LLAMA_13B), Track.rtx4090, Loading.bf16)
    message = str(refused.value)
    assert "13.02B parameters" in message and "23.6 GiB usable" in message
    assert "weights 24.24 + KV cache 1.56" in message  # 13.0e9 params x 2 bytes; 40 layers x 2 x 5120 x 2 bytes x 2048
    assert "it fits in nf4" in message and "--loading nf4" in message
    assert "on the A100 track" in message and "bf16 fits" in message


def test_llama2_13b_defaults_to_4bit_on_the_4090_and_bf16_on_the_a100():
    on_4090 = choose_loading(LLAMA_13B, model_shape(LLAMA_13B), Track.rtx4090)
    on_a100 = choose_loading(LLAMA_13B, model_shape(LLAMA_13B), Track.a100)
    assert on_4090.loading is Loading.nf4 and on_4090.fits
    assert on_a100.loading is Loading.bf16 and on_a100.total_gib < 39.4


def test_llama2_70b_fits_nowhere_on_the_4090():
    with pytest.raises(FitError, match="does not fit the 4090 track") as refused:
        choose_loading("meta-llama/Llama-2-70b-hf", model_shape("meta-llama/Llama-2-70b-hf"), Track.rtx4090)
    assert "(too big)" in str(refused.value) and "fits (" in str(refused.value)  # nf4 on the A100 is suggested


def test_readme_memory_figures_are_the_estimates():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        cfg = load_config(ROOT / "axolotl_configs" / "Llama-2-7b-03.yml")
    for estimate in plan(cfg).memory:  # the README's `llmkit validate` excerpt: 11.6 GiB, overhead 1.5
        assert estimate.total / GIB == pytest.approx(11.6, abs=0.05) and estimate.overhead / GIB == pytest.approx(
            1.5, abs=0.05
        )
        parts = estimate.weights + estimate.trainable + estimate.activations
        assert estimate.overhead == pytest.approx(GIB + 0.05 * parts, abs=1)  # the CUDA context + 5% allocator slack
    shape = model_shape(LLAMA_13B)  # "Llama-2-13b in bf16 needs ~29.2 GiB ... it fits in nf4 (10.75 GiB)"
    assert estimate_memory(shape, Loading.bf16, Track.rtx4090).total_gib == pytest.approx(29.2, abs=0.05)
    assert choose_loading(LLAMA_13B, shape, Track.rtx4090).total_gib == 10.75


def test_a_total_over_the_gpu_by_a_little_does_not_fit():
    def serving(total_gib):
        parts = {"weights_gib": total_gib - 1.0, "kv_cache_gib": 0.0, "activations_gib": 0.0, "overhead_gib": 1.0}
        return MemoryEstimate(loading=Loading.bf16, available_gib=23.6, **parts)

    assert serving(23.6).fits and not serving(23.61).fits and not serving(25.0).fits
    spec = TRACKS[Track.rtx4090]

    def training(total):
        return TrainingMemory(spec, weights=total, trainable=0, activations=0, overhead=0)

    assert training(spec.memory_bytes).fits and not training(spec.memory_bytes + 1).fits


@pytest.mark.parametrize("config", sorted((ROOT / "axolotl_configs").glob("*.yml")), ids=lambda p: p.stem)
def test_every_shipped_config_base_fits_both_tracks_offline(config):
    base = yaml.safe_load(config.read_text())["base_model"]
    for track in Track:
        estimate = choose_loading(base, model_shape(base), track)  # a shipped config.json: no network
        assert estimate.fits
    # The 7B bases the 2023 teams served on the 4090 fit there in bf16.
    if "7b" in base.lower():
        assert choose_loading(base, model_shape(base), Track.rtx4090).loading is Loading.bf16


def test_bf16_weight_estimate_matches_the_real_checkpoint(default_model_dir):
    # The embedded model is stored in float32: its file is twice its bf16 size, plus a small header.
    on_disk = (default_model_dir / "model.safetensors").stat().st_size
    estimate = weight_bytes(model_shape(str(default_model_dir)), Loading.bf16)
    assert estimate == pytest.approx(on_disk / 2, rel=0.001)


def loaded_bytes(model, *, frozen_only: bool = False) -> int:
    """Bytes of a loaded model's tensors (each storage once), with bitsandbytes' NF4 block scales and int8 row
    scales, which sit beside the weight rather than in parameters(); `frozen_only`: without the trainable ones."""
    tensors = [t for t in model.parameters() if not (frozen_only and t.requires_grad)]
    tensors += list(model.buffers())
    for weight in (getattr(m, "weight", None) for m in model.modules()):
        state = getattr(weight, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code, state.offset]
            tensors += [state.state2.absmax, state.state2.code] if state.state2 is not None else []
        tensors.append(getattr(weight, "SCB", None))
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(storages.values())


@pytest.mark.parametrize("loading", list(Loading), ids=lambda each: each.value)
def test_weight_estimate_matches_the_model_loaded_on_the_cpu(default_model_dir, loading):
    # bitsandbytes quantizes on the CPU as on a GPU; nf4 misses only its code tables (1.1 KiB per layer, 0.2% here).
    loaded = load_for_inference(
        str(default_model_dir), dtype="bfloat16", quantization=loading.quantization, device="cpu"
    )
    estimate = weight_bytes(model_shape(str(default_model_dir)), loading)
    assert estimate == pytest.approx(loaded_bytes(loaded.model), rel=0.003)


def saved_for_backward(model, tokens: int) -> int:
    """Bytes autograd keeps for backward in one bf16-autocast forward with the loss, parameters not counted."""
    import torch

    parameters = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(100, 40000, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


@pytest.mark.slow
def test_qlora_training_estimate_matches_the_model_built_on_the_cpu():
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.train.modeling import build_peft_model, load_base_model

    cfg = load_config(ROOT / "axolotl_configs" / "smollm2-135m-qlora.yml", {"bf16": True, "fp16": False})
    p = plan(cfg, world_size=1)
    estimate, shape, vocab = p.memory[0], p.shape, p.shape.vocab_size
    model = build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))
    model.train()
    assert model.get_nb_trainable_parameters()[0] == p.trainable_params
    # prepare_model_for_kbit_training upcast the embeddings and norms to fp32
    frozen = weight_bytes(shape, Loading.nf4, float_bytes=4)
    assert loaded_bytes(model, frozen_only=True) == pytest.approx(frozen, rel=0.003)
    short, long = saved_for_backward(model, 64), saved_for_backward(model, 128)
    per_token = (long - short) / 64
    # What does not grow with the tokens: autocast's bf16 copies of the fp32 adapters and lm_head.
    assert short - 64 * per_token == pytest.approx(estimate.weights - frozen, rel=0.01)
    # Besides the saved fp32 log-softmax, the bf16 logits (2 V) and the loss gradient (4 V) live at backward.
    ratio = estimate.activations / cfg.sequence_len / (per_token + 6 * vocab)
    assert 1.0 < ratio < 1.15  # an upper bound, 7% over on this model


def test_cli_refuses_without_writing_anything():
    before = sorted((ROOT / "submissions").rglob("*"))
    result = CliRunner().invoke(
        app, ["submission", "--track", "4090", "--model", LLAMA_13B, "--revision", "main", "--loading", "bf16"]
    )
    assert result.exit_code == 1
    assert "does not fit the 4090 track" in result.output and "--loading nf4" in result.output
    assert sorted((ROOT / "submissions").rglob("*")) == before


@pytest.fixture(scope="module", params=list(TINY_FAMILIES))
def family_dir(request, tiny_family_dir):
    return tiny_family_dir(request.param)


def lora_config(model_dir, **keys) -> AxolotlConfig:
    data = {"base_model": str(model_dir), "adapter": "qlora", "load_in_4bit": True, "learning_rate": 1e-4}
    data["datasets"] = [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return AxolotlConfig.model_validate(data | keys)


def test_shape_plan_and_weights_match_the_real_model_and_peft(family_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = model_shape(str(family_dir))
    model = AutoModelForCausalLM.from_pretrained(family_dir)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    assert shape == ModelShape.from_model(model)  # meta device and real weights: the same shape

    cfg = lora_config(family_dir, lora_target_linear=True, lora_r=4)
    p = plan(cfg)
    # peft's own "all-linear" picks the same modules (on MoE models it adds the fused experts and the router as
    # target_parameters, which lora_target_linear leaves out, as axolotl does), but for a linear layer whose forward
    # returns no tensor (Llama-4's router), which LoRA cannot wrap
    picked = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(model, picked)
    unwrappable = {module.leaf for module in shape.linear if not module.adaptable}
    assert set(p.target_modules) == {name.rsplit(".", 1)[-1] for name in picked.target_modules} - unwrappable
    model = AutoModelForCausalLM.from_pretrained(family_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=p.target_modules, task_type="CAUSAL_LM"))
    assert p.trainable_params == peft_model.get_nb_trainable_parameters()[0]

    loaded = AutoModelForCausalLM.from_pretrained(
        family_dir, dtype="bfloat16", quantization_config=_nf4(), device_map={"": "cpu"}
    )
    assert weight_bytes(shape, Loading.nf4) == pytest.approx(loaded_bytes(loaded), rel=0.02)
    # The layers bitsandbytes quantized, alone: the embeddings dwarf them on these tiny models (vocab 49,152)
    states = [getattr(m.weight, "quant_state", None) for m in loaded.modules() if hasattr(m, "weight")]
    assert shape.quantizable_params == sum(state.shape.numel() for state in states if state is not None)


def _nf4():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)


def test_a_mamba_hybrid_saved_by_transformers_is_sized_without_experts(make_tiny_model):
    """transformers writes Falcon-H1's time_step_limit (0, inf) as {"__float__": "Infinity"}, and reads it back; read
    as plain JSON it stopped validate, merge and random-model with a traceback. Its Mamba layers' conv1d kernels
    are 3-D parameters, which the plan listed as MoE experts."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    mamba = {"mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_chunk_size": 16}
    model_dir = make_tiny_model(FalconH1Config, FalconH1ForCausalLM, **mamba)
    assert '"__float__": "Infinity"' in (model_dir / "config.json").read_text()
    shape = model_shape(str(model_dir))
    assert (shape.architecture, shape.num_heads, shape.expert_params, shape.expert_names) == (
        "FalconH1ForCausalLM",
        4,
        0,
        (),
    )
    result = CliRunner().invoke(app, ["random-model", str(model_dir / "config.json"), "--out", str(model_dir / "r")])
    assert result.exit_code == 0, result.output


def test_moe_experts_are_counted_unquantized_and_cannot_be_listed_as_modules(tiny_family_dir):
    model_dir = tiny_family_dir("mixtral")  # 4 experts
    shape = model_shape(str(model_dir))
    assert shape.expert_names == ("experts.gate_up_proj", "experts.down_proj")
    assert shape.expert_params == 2 * 4 * (2 * 128 * 64 + 64 * 128)  # layers x experts x (gate+up, down)
    assert shape.linear_names() == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.warns(UserWarning, match="its MoE experts are fused parameters"):  # peft wraps q_proj, skips w1
        assert plan(lora_config(model_dir, lora_target_modules=["w1", "q_proj"])).target_modules == ["q_proj"]
    with pytest.raises(ValueError, match="its MoE experts are fused parameters"):
        plan(lora_config(model_dir, lora_target_modules=["w1"]))


def test_qlora_on_moe_experts_counts_them_in_fp32_and_their_rebuilt_weights(tiny_family_dir):
    """bitsandbytes leaves the fused experts in 16 bits and peft's preparation upcasts them to fp32, as the plan
    counts; LoRA on them (lora_target_parameters) rebuilds each targeted parameter with its delta in every forward,
    which backward keeps, with the inputs of the experts' matmuls: the plan's activations grow by what autograd
    keeps."""
    import torch

    from llmkit.train.modeling import build_peft_model, load_base_model

    model_dir = tiny_family_dir("mixtral")
    keys = {"lora_target_modules": ["q_proj"], "bf16": True, "sequence_len": 64, "micro_batch_size": 1}
    experts = {"lora_target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], "lora_dropout": 0.0}
    saved, planned = [], []
    for cfg in (lora_config(model_dir, **keys), lora_config(model_dir, **keys, **experts)):
        p = plan(cfg)
        model = build_peft_model(cfg, load_base_model(cfg))
        model.train()
        fused = [parameter for name, parameter in model.named_parameters() if parameter.dim() == 3]
        assert {parameter.dtype for parameter in fused} == {torch.float32}
        assert sum(parameter.numel() for parameter in fused) == p.shape.expert_params
        assert model.get_nb_trainable_parameters()[0] == p.trainable_params
        assert loaded_bytes(model, frozen_only=True) == pytest.approx(
            weight_bytes(p.shape, Loading.nf4, float_bytes=4), rel=0.001
        )
        torch.manual_seed(0)  # the same tokens, so the same experts, for both
        saved.append(saved_for_backward(model, 64))
        planned.append(p.memory[0].activations)
    # fp32 rebuilt experts (2 layers x 4 x (256 x 64 + 64 x 128)) and each token's inputs to its 2 experts (64 + 128)
    assert planned[1] - planned[0] == 4 * (2 * 4 * (256 * 64 + 64 * 128) + 64 * 2 * 2 * (64 + 128))
    assert saved[1] - saved[0] == planned[1] - planned[0]
