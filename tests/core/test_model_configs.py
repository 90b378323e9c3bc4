"""The offline config.json files in llmkit/core/model_configs build the model each one names, at its published size.

Each file is turned into a model the way the planner does it (AutoConfig.for_model, then from_config on the meta
device), and the parameter count is compared with the figure the model's publisher (or a public count of the real
checkpoint) states. A wrong hidden size, layer count, head layout, vocabulary or tying shows up as a wrong count.
"""

from __future__ import annotations

import importlib.resources
import json

import accelerate
import pytest
from transformers import AutoConfig, AutoModelForCausalLM

CONFIGS = importlib.resources.files("llmkit.core.model_configs")

# Published parameter counts, with where each figure is stated. Rounded figures ("7B", "1.54B") are floats and allow
# 3%; exact published counts are ints and allow 0.02% (the Gemma reports count 256,128 embedding rows, the
# checkpoints 256,000), so a wrong vocabulary or head size in those files cannot hide inside the tolerance.
EXPECTED_PARAMS: dict[str, int | float] = {
    # Llama 2 paper, Table 1 (7B/13B/70B); exact 7B count 6,738,415,616 as printed by peft for Llama-2-7b
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-2-7b-chat-hf": 6_738_415_616,
    "meta-llama/Llama-2-13b-hf": 13e9,
    "meta-llama/Llama-2-70b-hf": 70e9,
    # Meta's spec for Llama 3 / 3.1 8B: 8,030,261,248
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    # Llama 3.2 model card: "1B (1.23B)", "3B (3.21B)"
    "meta-llama/Llama-3.2-1B": 1.23e9,
    "meta-llama/Llama-3.2-3B": 3.21e9,
    # Qwen2-7B model card table: Mistral-7B "7.2B"; v0.3 only adds 768 vocabulary rows (card: vocabulary 32768)
    "mistralai/Mistral-7B-v0.1": 7.2e9,
    "mistralai/Mistral-7B-v0.3": 7.2e9,
    # Mistral-7B-Instruct-v0.2: "7.3 billion parameters" (apxml.com model page)
    "mistralai/Mistral-7B-Instruct-v0.2": 7.3e9,
    # Mixtral card (Azure model catalog copy): "Mixtral has 46.7B total parameters"
    "mistralai/Mixtral-8x7B-v0.1": 46.7e9,
    # Qwen model cards ("Number of Parameters"): Qwen2-7B 7.6B, Qwen2.5 0.49B/1.54B/7.61B/14.7B, Qwen3 0.6B/8.2B
    "Qwen/Qwen2-7B": 7.6e9,
    "Qwen/Qwen2.5-0.5B": 0.49e9,
    "Qwen/Qwen2.5-1.5B": 1.54e9,
    "Qwen/Qwen2.5-7B": 7.61e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.61e9,
    "Qwen/Qwen2.5-14B": 14.7e9,
    "Qwen/Qwen3-0.6B": 0.6e9,
    "Qwen/Qwen3-8B": 8.2e9,
    # Phi-3-mini card: "3.8B parameters"; phi-2: 2,779,683,840 (HfApi model_info / peft printouts)
    "microsoft/Phi-3-mini-4k-instruct": 3.8e9,
    "microsoft/phi-2": 2_779_683_840,
    # Gemma report Table 2 (embedding + non-embedding, embeddings at 256,128 rows): 2B and 7B
    "google/gemma-2b": 524_550_144 + 1_981_884_416,
    "google/gemma-7b": 786_825_216 + 7_751_248_896,
    # Gemma 2 report Table 2: 2B and 9B
    "google/gemma-2-2b": 590_118_912 + 2_024_517_888,
    "google/gemma-2-9b": 917_962_752 + 8_324_201_984,
    # Falcon-7B card: "a 7B parameters causal decoder-only model"
    "tiiuae/falcon-7b": 7e9,
    # Pythia card, "Naming convention and parameter count" table (exact totals)
    "EleutherAI/pythia-1b": 1_011_781_632,
    "EleutherAI/pythia-6.9b": 6_857_302_016,
    "EleutherAI/pythia-12b": 11_846_072_320,
    # GPT-NeoX-20B card: 20,554,567,680
    "EleutherAI/gpt-neox-20b": 20_554_567_680,
    # OPT paper, Table 1 model names
    "facebook/opt-1.3b": 1.3e9,
    "facebook/opt-6.7b": 6.7e9,
    # GPT-2 card: "the smallest version of GPT-2, with 124M parameters"
    "openai-community/gpt2": 124e6,
    # TinyLlama cards: 1.1B
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": 1.1e9,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1.1e9,
    # OpenLLaMA dense counts as computed in LLaMA-MoE's parameter script (3B: 3,426,473,600; 7B: 6,738,415,616)
    "openlm-research/open_llama_3b_v2": 3_426_473_600,
    "openlm-research/open_llama_7b_v2": 6_738_415_616,
    # Code Llama 7B is the Llama 2 7B layout with 16 more vocabulary rows (vocab_size 32016)
    "codellama/CodeLlama-7b-hf": 6_738_415_616,
    # Yi card: "Yi-6B"
    "01-ai/Yi-6B": 6e9,
    # StableLM-3B-4E1T card, "Model Architecture" table: 2,795,443,200
    "stabilityai/stablelm-3b-4e1t": 2_795_443_200,
    # SmolLM2 cards: 135M and 1.7B
    "HuggingFaceTB/SmolLM2-135M": 135e6,
    "HuggingFaceTB/SmolLM2-1.7B": 1.7e9,
}
ROUNDED_TOLERANCE = 0.03
EXACT_TOLERANCE = 0.0002


def config_file_name(model: str) -> str:
    return model.replace("/", "--") + ".json"


def test_every_shipped_config_has_a_published_size_to_check() -> None:
    shipped = {entry.name for entry in CONFIGS.iterdir() if entry.name.endswith(".json")}
    assert shipped == {config_file_name(model) for model in EXPECTED_PARAMS}


@pytest.mark.parametrize("model", sorted(EXPECTED_PARAMS))
def test_config_builds_the_named_architecture_at_its_published_size(model: str) -> None:
    config_dict = json.loads((CONFIGS / config_file_name(model)).read_text())
    config = AutoConfig.for_model(**config_dict)
    with accelerate.init_empty_weights():
        built = AutoModelForCausalLM.from_config(config)
    # Under init_empty_weights, transformers 5.24 leaves a tied head as a second meta tensor; tying it again
    # makes tied models (Gemma, Qwen2.5-0.5B, GPT-2...) count their embedding once, as the real checkpoint does.
    built.tie_weights()

    assert type(built).__name__ == config_dict["architectures"][0]
    assert all(parameter.device.type == "meta" for parameter in built.parameters())
    num_params = sum(parameter.numel() for parameter in built.parameters())
    expected = EXPECTED_PARAMS[model]
    tolerance = EXACT_TOLERANCE if isinstance(expected, int) else ROUNDED_TOLERANCE
    assert num_params == pytest.approx(expected, rel=tolerance)
