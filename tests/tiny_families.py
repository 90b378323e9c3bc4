"""Tiny random models of every family the pipeline supports: the table shared by the shape, memory and end-to-end
tests (`tiny_family_dir` in conftest.py builds one with `make_tiny_model`)."""

ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
GATED_MLP = {"gate_proj", "up_proj", "down_proj"}
NEOX = {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
# family: (config class, model class, config fields beyond make_tiny_model's sizes, modules lora_target_linear wraps)
TINY_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, ATTENTION | GATED_MLP),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4096}, ATTENTION | GATED_MLP),
    # the router and the fused experts are parameters, not linear layers: attention only
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}, ATTENTION),
    # DeepSeek-V2/V3's layout: a dense first layer whose MLP is named like the experts' projections, which peft
    # renames to the fused experts (gate_up_proj, down_proj) when targeted: lora_target_linear leaves it out
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "head_dim": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "mlp_only_layers": [0],
        },
        ATTENTION,
    ),
    # Llama-4's router is an nn.Linear whose forward returns a tuple: lora_target_linear leaves it out (wrapped,
    # training stopped at step 1); the shared expert's projections are wrapped, the fused experts are parameters
    "llama4_text": (
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        {"head_dim": 16, "num_local_experts": 2, "intermediate_size_mlp": 128},
        ATTENTION | GATED_MLP,
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, ATTENTION | GATED_MLP),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, ATTENTION | GATED_MLP),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16}, ATTENTION | GATED_MLP),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}, NEOX),
    # Falcon-40B/180B's layout (grouped key/value heads); Falcon-7B's (one shared head) passes the same way
    "falcon": ("FalconConfig", "FalconForCausalLM", {"new_decoder_architecture": True, "num_kv_heads": 2}, NEOX),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {"ffn_dim": 128, "word_embed_proj_dim": 64},
        {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_inner": 128}, {"c_attn", "c_proj", "c_fc"}),
}
