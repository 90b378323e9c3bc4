"""The scheduler in-process on tiny random models: batching is exact (sliding windows too), a cache that cannot be
re-padded falls back to one row at a time, the KV budget bounds the batch, and a row whose client left gives its
place to a waiting request in the pass that drops it."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import (
    AutoModelForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    JambaConfig,
    JambaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
)

from llmkit.server.app import create_app
from llmkit.server.builtin import BuiltinEngine
from llmkit.server.protocol import ProcessRequest, helm_body
from llmkit.server.sequence import RequestError
from llmkit.server.settings import ServerSettings

PROMPTS = ["a b c", "The capital of France is", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "x" * 40, "Hello"]


def requests() -> list[ProcessRequest]:
    bodies = []
    for i, prompt in enumerate(PROMPTS * 2):
        bodies.append(helm_body(prompt, max_new_tokens=6 + i, stop_sequences=["<<never>>"], top_k_per_token=3))
    bodies[1]["echo_prompt"] = True
    bodies[2]["max_new_tokens"], bodies[2]["echo_prompt"] = 0, True
    return [ProcessRequest(**body) for body in bodies]


def check_batched_equals_sequential(engine: BuiltinEngine) -> None:
    sequential = [engine.process(r) for r in requests()]
    with concurrent.futures.ThreadPoolExecutor(len(sequential)) as pool:
        batched = list(pool.map(engine.process, requests()))
    for one, other in zip(sequential, batched, strict=True):
        assert other.text == one.text and [t.text for t in other.tokens] == [t.text for t in one.tokens]
        for a, b in zip(one.tokens, other.tokens, strict=True):
            assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
            assert b.top_logprob.keys() == a.top_logprob.keys()


@pytest.fixture
def engine_for():
    engines = []

    def make(model_dir, **settings) -> BuiltinEngine:
        engine = BuiltinEngine.load(ServerSettings(model=str(model_dir), stop_at_newline=False, **settings))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def test_an_adapters_own_turn_end_ends_its_completions(engine_for, tiny_model_dir, tmp_path):
    """Training writes generation_config.json into the adapter for a config's eot_tokens: served unmerged, the
    adapter's completions end there too (only the base's EOS did)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    prompt = "Hello"  # its greedy completion changes token at the 4th: the turn end is that 4th token
    engine = engine_for(tiny_model_dir, adapter=[str(tmp_path / "adapter")])
    ids, _ = engine.prompt_ids(prompt)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    request = ProcessRequest(**helm_body(prompt, max_new_tokens=8, stop_sequences=[]))
    assert len(engine.process(request).tokens) == 8
    engine.close()

    end = max(k for k in range(8) if greedy[k] not in greedy[:k])  # its first appearance ends the completion
    eos = engine.loaded.tokenizer.eos_token_id
    (tmp_path / "adapter" / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, greedy[end]]}))
    result = engine_for(tiny_model_dir, adapter=[str(tmp_path / "adapter")]).process(request)
    assert end == 3 and len(result.tokens) == end  # as at the EOS: not listed
    assert result.text == engine.loaded.tokenizer.decode(greedy[:end])


def test_tiny_llama_batches_exactly(engine_for, tiny_model_dir):
    engine = engine_for(tiny_model_dir, prefill_chunk_tokens=16)  # the 40-x prompt goes in chunks
    assert engine.scheduler.max_batch_size == 16
    check_batched_equals_sequential(engine)
    # every answer is in: the batch is empty at once (its snapshot was taken after the answers were released)
    idle = engine.stats()
    assert idle["running"] == idle["prefilling"] == idle["waiting"] == idle["kv_cache_bytes_used"] == 0, idle


SLIDING = {
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "gemma-3": (Gemma3TextConfig, Gemma3ForCausalLM, {"layer_types": ["sliding_attention", "full_attention"]}),
    "phi-3": (Phi3Config, Phi3ForCausalLM, {"pad_token_id": 0}),
}


@pytest.mark.parametrize("architecture", SLIDING)
def test_sliding_window_models_batch_within_their_window(engine_for, make_tiny_model, architecture):
    """Phi-3-mini's window (2,047) is narrower than the context and Gemma-3's (512) much narrower: their window
    layers are grown, and the mask keeps every query within its 8-token window, as a full forward pass does."""
    config_class, model_class, overrides = SLIDING[architecture]
    model_dir = make_tiny_model(config_class, model_class, sliding_window=8, head_dim=16, **overrides)
    engine = engine_for(model_dir, prefill_chunk_tokens=16, dtype="float32")
    assert engine.scheduler.max_batch_size == 16
    check_batched_equals_sequential(engine)
    prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # several windows long
    logprobs = check_against_a_full_forward_pass(engine, model_dir, prompt)
    ids = torch.tensor([engine.encode(prompt, special=True)])
    unwindowed = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, sliding_window=4096)
    with torch.inference_mode():
        windowed = logprobs[: ids.shape[1]]
        assert (unwindowed(ids).logits[0].log_softmax(-1) - windowed).abs().max() > 0.01  # the window matters here


def check_against_a_full_forward_pass(engine: BuiltinEngine, model_dir, prompt: str) -> torch.Tensor:
    """The answer to `prompt`, served among the other PROMPTS at once, has the logprobs one forward pass of the
    whole text gives (float32); returns that pass's logprobs."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        served = list(pool.map(engine.process, [ProcessRequest(**helm_body(p, max_new_tokens=8)) for p in PROMPTS]))
    answer = served[PROMPTS.index(prompt)]
    ids = engine.encode(prompt, special=True) + [engine.encode(t.text)[0] for t in answer.tokens]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    expected = [logprobs[i - 1, ids[i]].item() for i in range(len(ids) - len(answer.tokens), len(ids))]
    assert [t.logprob for t in answer.tokens] == pytest.approx(expected, abs=1e-4)
    return logprobs


RECURRENT = {
    "jamba": (
        JambaConfig,
        JambaForCausalLM,
        {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "num_experts": 2},
        "LinearAttentionLayer",
    ),
    "mamba": (MambaConfig, MambaForCausalLM, {"state_size": 8}, "LinearAttentionLayer"),
}


@pytest.mark.parametrize("architecture", RECURRENT)
def test_a_cache_that_cannot_be_re_padded_is_served_one_row_at_a_time(
    engine_for, make_tiny_model, caplog, architecture
):
    """Mamba layers keep a recurrent state per row, which left padding would change. A decode step gave Mamba's
    layer the whole row's mask beside its one token, which it read as that many tokens: from the third token on,
    the answer was another model's."""
    config_class, model_class, overrides, layer = RECURRENT[architecture]
    model_dir = make_tiny_model(config_class, model_class, **overrides, use_mamba_kernels=False)
    engine = engine_for(model_dir, dtype="float32")
    assert engine.scheduler.max_batch_size == 1
    assert f"({layer}) cannot be re-padded" in caplog.text
    check_batched_equals_sequential(engine)
    check_against_a_full_forward_pass(engine, model_dir, "The capital of France is")


def test_keys_and_values_of_different_widths_batch(engine_for, make_tiny_model):
    """Multi-head latent attention (DeepSeek-V2/V3) caches 16-wide keys beside 8-wide values."""
    model_dir = make_tiny_model(
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        **{"kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8},
        **{"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1},
        **{"n_group": 1, "topk_group": 1, "num_key_value_heads": 4},  # MLA: one key per query head
    )
    engine = engine_for(model_dir, prefill_chunk_tokens=16)
    assert engine.scheduler.max_batch_size > 1
    check_batched_equals_sequential(engine)


@pytest.fixture(scope="module")
def bos_model(make_tiny_model):
    """Factory: a tiny Llama with `positions` positions whose tokenizer puts a BOS before every prompt (Llama,
    Mistral, Gemma), as the server sees it, and with `eos` an EOS after it too (a tokenizer saved with
    add_eos_token)."""
    from tokenizers import processors
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    def make(positions: int, eos: bool = False):
        model_dir = make_tiny_model(LlamaConfig, LlamaForCausalLM, max_position_embeddings=positions)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        bos, end = (tokenizer.bos_token, tokenizer.bos_token_id), (tokenizer.eos_token, tokenizer.eos_token_id)
        template = f"{bos[0]} $A {end[0]}" if eos else f"{bos[0]} $A"
        specials = [bos, end] if eos else [bos]
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=specials
        )
        tokenizer.save_pretrained(model_dir)
        return model_dir

    return make


@pytest.mark.parametrize("eos", [False, True], ids=["BOS", "BOS and EOS"])
def test_the_bos_the_server_adds_rides_on_top_of_the_context_limit(engine_for, bos_model, eos):
    """HELM sizes a prompt with /tokenize (no BOS) and truncates it to fill the context: the BOS the server adds
    did count, so a truncated scoring prompt was a 422 and a truncated generation lost a token. An EOS the
    tokenizer appends is left off the prompt (the completion continues the text, not a new document)."""
    engine = engine_for(bos_model(positions=2048, eos=eos), max_context=64, max_new_tokens_limit=16)
    text = engine.decode(engine.tokenize("red blue " * 100, truncation=True, max_length=64))
    ids, added = engine.prompt_ids(text)
    assert len(engine.tokenize(text, truncation=False, max_length=64)) == 64 == len(ids) - 1 and added == 1
    assert ids[0] == engine.tokenizer.bos_token_id and ids[1:] == engine.encode(text)
    scored = engine.process(ProcessRequest(prompt=text, max_new_tokens=0, echo_prompt=True))
    assert len(scored.tokens) == 64  # the echo leaves the BOS out
    shorter = engine.decode(engine.tokenize(text, truncation=True, max_length=59))
    stop = ["<<never>>"]
    generated = engine.process(ProcessRequest(prompt=shorter, max_new_tokens=5, stop_sequences=stop, temperature=0))
    assert len(generated.tokens) == 5
    longer = text + " red"
    with pytest.raises(RequestError, match=r"^prompt is 65 tokens, over the context limit of 64$"):
        engine.process(ProcessRequest(prompt=longer, max_new_tokens=0))


def test_the_models_positions_bound_a_prompt(engine_for, bos_model, caplog):
    """Where the model has no position for the BOS beyond the context, it counts; a model with fewer positions
    than --max-context gets a 422 naming them, not an index error inside the batch, and a warning at start."""
    engine = engine_for(bos_model(positions=64), max_context=64, max_new_tokens_limit=16)
    assert "fewer than --max-context" not in caplog.text
    text = engine.decode(engine.tokenize("red blue " * 100, truncation=True, max_length=64))
    message = r"prompt is 64 tokens, over the 64 positions this model has \(max_position_embeddings\), with the 1 "
    with pytest.raises(RequestError, match=message):
        engine.process(ProcessRequest(prompt=text, max_new_tokens=0))
    fits = engine.decode(engine.tokenize(text, truncation=True, max_length=63))
    assert len(engine.process(ProcessRequest(prompt=fits, max_new_tokens=0, echo_prompt=True)).tokens) == 63
    short = engine_for(bos_model(positions=32), max_context=64, max_new_tokens_limit=16)
    assert "The model has 32 positions (max_position_embeddings), fewer than --max-context 64" in caplog.text
    with TestClient(create_app(short.settings, short)) as client:
        health = client.get("/health").json()
    assert (health["max_context"], health["model_positions"]) == (64, 32)  # it said 64 alone
    with pytest.raises(RequestError, match=r"prompt is 40 tokens, over the 32 positions this model has"):
        short.process(ProcessRequest(prompt=short.decode(short.tokenize(text, True, 40)), max_new_tokens=0))


def test_tokens_beyond_the_embedding_are_refused(engine_for, make_tiny_model, tokenizer, caplog):
    """A tokenizer 100 tokens longer than the embedding (tokens added, embedding not resized): a prompt holding one
    of them is a 422 naming it, not an index error inside the batch (which fails everyone in flight)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    engine = engine_for(make_tiny_model(LlamaConfig, LlamaForCausalLM, vocab_size=len(tokenizer) - 100))
    assert f"only {len(tokenizer) - 100} rows" in caplog.text
    token = next(i for i in range(len(tokenizer) - 1, 0, -1) if engine.encode(tokenizer.decode([i])) == [i])
    assert token >= len(tokenizer) - 100
    prompt = "Hello" + tokenizer.decode([token])
    with pytest.raises(RequestError, match=rf"prompt holds tokens \[{token}\] that the model has no embedding for"):
        engine.process(ProcessRequest(**helm_body(prompt, max_new_tokens=2)))
    assert engine.process(ProcessRequest(**helm_body("Hello", max_new_tokens=2))).tokens  # the rest is served


def test_ids_past_the_tokenizer_in_a_padded_embedding_are_never_chosen(engine_for, make_tiny_model, tokenizer):
    """An embedding padded past the tokenizer (Qwen2.5's 151,936 rows for about 151,665 tokens; random-model keeps a
    shape's vocabulary): an id there was a 500 (no vocabulary entry), then was generated as "" text. Rows no token
    maps to are never chosen nor listed; the logprobs stay the model's softmax over every row."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = make_tiny_model(LlamaConfig, LlamaForCausalLM, vocab_size=len(tokenizer) + 64)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():  # the padded rows win: every real id's logit is 0, the padding's are large
        model.lm_head.weight[: len(tokenizer)] = 0
        model.lm_head.weight[len(tokenizer) :] *= 100
    model.save_pretrained(model_dir)
    engine = engine_for(model_dir)
    scoring = helm_body("Hello world", max_new_tokens=0, echo_prompt=True, top_k_per_token=5)
    token = engine.process(ProcessRequest(**scoring)).tokens[1]  # the padded rows hold nearly all of the mass
    assert len(token.top_logprob) == 5 and "" not in token.top_logprob
    assert token.logprob < -10 and token.top_logprob == pytest.approx(dict.fromkeys(token.top_logprob, token.logprob))
    done = engine.process(ProcessRequest(**helm_body("Hello", max_new_tokens=3, top_k_per_token=5)))
    # every token ties at 0 and argmax takes the first, id 0, rather than a padded row's "" (what was generated)
    assert done.text == "<|endoftext|>" * 3 and all(token.logprob < -10 for token in done.tokens)


def test_kv_budget_bounds_the_batch(engine_for, tiny_model_dir):
    per_token = engine_for(tiny_model_dir).scheduler.bytes_per_token
    # Each of these requests needs under 200 tokens of cache (prompt, completion, 128 spare); two need over 250.
    engine = engine_for(tiny_model_dir, kv_cache_bytes=250 * per_token)
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            stats = engine.scheduler.stats()
            seen.append(stats["running"] + stats["prefilling"])
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        check_batched_equals_sequential(engine)
    finally:
        done.set()
        watcher.join()
    assert max(seen) == 1
    too_big = ProcessRequest(**helm_body("hi " * 1500, max_new_tokens=1000))
    with pytest.raises(RequestError, match="KV cache"):
        engine.scheduler.submit(engine.new_sequence(too_big))


def test_a_row_whose_client_left_frees_its_place_in_the_same_pass(engine_for, tiny_model_dir):
    """Cancelled rows are dropped before admission: they held their place while a pass checked it, so a waiting
    request waited one more pass. Passes are counted in the tokens of a row that decodes one in each, read on the
    model thread as the sequences finish (their futures' callbacks): from the drop of the row that left to the
    answer of the request that waited for its place (one token, chosen in the pass that admits it) is one pass,
    wherever in a pass the client leaves; it was two. Over HTTP this was read off /health's cache size, which
    changes twice a pass: a poll between the end of the pass in which the client left and the next pass's drop
    saw the row running at a second size (a fresh-clone suite run failed so)."""
    engine = engine_for(tiny_model_dir, max_batch_size=2, max_queue=1)

    def sequence(max_new_tokens: int):
        body = helm_body("a b c", max_new_tokens=max_new_tokens, stop_sequences=["<<never>>"])
        return engine.new_sequence(ProcessRequest(**body))

    running, leaving, waiting = sequence(1000), sequence(1000), sequence(1)
    dropped, answered = [], []
    leaving.future.add_done_callback(lambda _: dropped.append(len(running.completion.ids)))
    waiting.future.add_done_callback(lambda _: answered.append(len(running.completion.ids)))
    for seq in (running, leaving, waiting):  # the first two take the batch's rows, the third waits
        engine.scheduler.submit(seq)
    deadline = time.monotonic() + 60
    while engine.scheduler.stats()["running"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.scheduler.stats()["running"] == 2
    engine.scheduler.cancel(leaving)  # what the route does when the client disconnects
    waiting.future.result(timeout=60)
    engine.scheduler.cancel(running)
    assert (running.finish_reason, leaving.finish_reason) == (None, None)  # both ran until cancelled
    assert answered[0] - dropped[0] == 1, (dropped, answered)
