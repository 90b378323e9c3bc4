"""The scheduler in-process on tiny random models: batching is exact, a cache that cannot be re-padded falls back
to one row at a time, and the KV budget bounds the batch."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, MistralConfig, MistralForCausalLM

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


def test_tiny_llama_batches_exactly(engine_for, tiny_model_dir):
    engine = engine_for(tiny_model_dir, prefill_chunk_tokens=16)  # the 40-x prompt goes in chunks
    assert engine.scheduler.max_batch_size == 16
    check_batched_equals_sequential(engine)


@pytest.fixture(scope="module")
def tiny_sliding_window_model(make_tiny_model):
    """A random Mistral with a sliding window: its cache layers cannot be re-padded."""
    return make_tiny_model(MistralConfig, MistralForCausalLM, sliding_window=32)


def test_sliding_window_cache_is_served_one_row_at_a_time(engine_for, tiny_sliding_window_model, caplog):
    engine = engine_for(tiny_sliding_window_model)
    assert engine.scheduler.max_batch_size == 1
    assert "cannot be re-padded" in caplog.text
    check_batched_equals_sequential(engine)


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
