"""The server on the real embedded model, over real HTTP, checked against transformers directly."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
import torch

from llmkit.server.protocol import DecodeResponse, HealthResponse, ProcessResponse, TokenizeResponse, helm_body

# A stop sequence that never appears: turns the newline option off for a request.
NEVER = ["<<no such text>>"]
PROMPTS = [
    "The capital of France is ",
    "List three colors:\n1.",
    "Question: What is 2+2?\nAnswer:",
    "def add(a, b):\n",
]


def process(client: httpx.Client, prompt: str, **overrides) -> ProcessResponse:
    response = client.post("/process", json=helm_body(prompt, **overrides))
    assert response.status_code == 200, response.text
    return ProcessResponse.model_validate_json(response.text)


def reference_greedy(reference, prompt: str, max_new_tokens: int) -> list[int]:
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def reference_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """log p(token | prefix) at every position of `ids` from one plain forward pass."""
    model, _ = reference
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def test_harness_probe_without_content_type(server, http):
    response = http.post(f"{server.url}/process", content='{"prompt": "The capital of France is "}')
    assert response.status_code == 200
    assert ProcessResponse.model_validate_json(response.text).text


def test_wire_fields_exactly(client):
    body = client.post("/process", json=helm_body("Hello", top_k_per_token=3)).json()
    assert set(body) == {"text", "tokens", "logprob", "request_time"}
    assert body["tokens"] and all(set(t) == {"text", "logprob", "top_logprob"} for t in body["tokens"])
    assert all(len(t["top_logprob"]) <= 3 for t in body["tokens"])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate(client, reference, prompt):
    result = process(client, prompt, max_new_tokens=24, stop_sequences=NEVER)
    _, tokenizer = reference
    expected_ids = reference_greedy(reference, prompt, 24)
    eos = tokenizer.eos_token_id
    expected_ids = expected_ids[: expected_ids.index(eos)] if eos in expected_ids else expected_ids
    assert result.text == tokenizer.decode(expected_ids)
    assert "".join(t.text for t in result.tokens) == result.text
    assert len(result.tokens) == len(expected_ids)


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_logprobs_match_forward_pass(client, reference, prompt):
    _, tokenizer = reference
    result = process(client, prompt, max_new_tokens=12, top_k_per_token=5, stop_sequences=NEVER)
    prompt_ids = tokenizer(prompt).input_ids
    completion_ids = reference_greedy(reference, prompt, 12)[: len(result.tokens)]
    logprobs = reference_logprobs(reference, prompt_ids + completion_ids)
    for i, (token, token_id) in enumerate(zip(result.tokens, completion_ids, strict=True)):
        position = len(prompt_ids) + i - 1
        assert token.logprob == pytest.approx(logprobs[position, token_id].item(), abs=1e-4)
        top = torch.topk(logprobs[position], 5)
        assert sorted(token.top_logprob.values(), reverse=True) == pytest.approx(top.values.tolist(), abs=1e-4)
    assert result.logprob == pytest.approx(sum(t.logprob for t in result.tokens), abs=1e-5)


def test_echo_scores_the_prompt_alone(client, reference):
    prompt = "The quick brown fox jumps over the lazy dog."
    result = process(client, prompt, max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    _, tokenizer = reference
    ids = tokenizer(prompt).input_ids
    logprobs = reference_logprobs(reference, ids)
    assert result.text == prompt and "".join(t.text for t in result.tokens) == prompt
    assert len(result.tokens) == len(ids)
    assert result.tokens[0].logprob == 0.0  # the first token has no context (documented)
    for pos in range(1, len(ids)):
        assert result.tokens[pos].logprob == pytest.approx(logprobs[pos - 1, ids[pos]].item(), abs=1e-4)
    # helm-protocol: with echo_prompt, text/tokens/logprob cover prompt + completion (HELM's own HF client sums
    # the prompt's logprobs too, and its separate-choice adapters compare references by this number)
    assert result.logprob == pytest.approx(sum(t.logprob for t in result.tokens), abs=1e-5) and result.logprob < -5


def test_top_alternatives_of_partial_characters_stay_apart(client):
    # Tokens holding part of a UTF-8 character all decode to "\ufffd" alone: keyed by their bytes they stay apart.
    result = process(
        client, "日本語のテキスト: ", max_new_tokens=4, temperature=0, top_k_per_token=5, stop_sequences=NEVER
    )
    assert "".join(t.text for t in result.tokens) == result.text
    assert all(len(t.top_logprob) == 5 for t in result.tokens)
    partial = [key for t in result.tokens for key in t.top_logprob if key.startswith("bytes:\\x")]
    assert partial and all(bytes.fromhex(key[6:].replace("\\x", "")) for key in partial)


def test_echo_with_completion(client):
    prompt = "The capital of France is "
    alone = process(client, prompt, max_new_tokens=8, stop_sequences=NEVER)
    echoed = process(client, prompt, max_new_tokens=8, stop_sequences=NEVER, echo_prompt=True)
    assert echoed.text == prompt + alone.text
    prompt_part = sum(t.logprob for t in echoed.tokens[: -len(alone.tokens)])
    assert echoed.logprob == pytest.approx(prompt_part + alone.logprob, abs=1e-4) and prompt_part < 0
    assert [t.text for t in echoed.tokens[-len(alone.tokens) :]] == [t.text for t in alone.tokens]


def test_stop_sequence_ends_the_text_before_it(client):
    prompt = "List three colors:\n1."
    full = process(client, prompt, max_new_tokens=16, stop_sequences=NEVER).text
    assert "2." in full
    stopped = process(client, prompt, max_new_tokens=16, stop_sequences=["2.", "zzz"])
    assert stopped.text == full[: full.index("2.")]
    assert "".join(t.text for t in stopped.tokens) == stopped.text


def test_newline_option_ends_at_first_newline_after_text(client):
    prompt = "List three colors:\n1."
    full = process(client, prompt, max_new_tokens=16, stop_sequences=NEVER).text
    cut = process(client, prompt, max_new_tokens=16).text
    assert "\n" in full.strip() and cut == full[: full.index("\n", len(full) - len(full.lstrip()))]
    assert cut.strip() == "Red"


@pytest.mark.slow
def test_newline_option_can_be_switched_off(start_server, http):
    server = start_server("--no-stop-at-newline")
    response = http.post(f"{server.url}/process", json=helm_body("List three colors:\n1.", max_new_tokens=16))
    assert "\n" in response.json()["text"].strip()
    assert http.get(f"{server.url}/health").json()["stop_at_newline"] is False


def test_tokenize_truncation_and_decode_round_trip(client, reference):
    _, tokenizer = reference
    text = "Efficiency challenge: one GPU, one day, ünïcödé and emoji 🤖 too."
    answer = client.post("/tokenize", json={"text": text, "truncation": False, "max_length": 3})
    full = TokenizeResponse.model_validate(answer.json())
    assert full.tokens == tokenizer(text, add_special_tokens=False).input_ids and len(full.tokens) > 3
    cut = client.post("/tokenize", json={"text": text, "truncation": True, "max_length": 3}).json()
    assert cut["tokens"] == full.tokens[:3]
    decoded = DecodeResponse.model_validate(client.post("/decode", json={"tokens": full.tokens}).json())
    assert decoded.text == text and decoded.request_time >= 0


def test_sampling_is_reproducible_with_a_seed(client):
    def sample(seed):
        return process(
            client,
            "Once upon a time",
            temperature=1.0,
            top_p=0.95,
            top_k=50,
            seed=seed,
            max_new_tokens=20,
            stop_sequences=NEVER,
        )

    first, again, other = sample(1), sample(1), sample(2)
    assert first.text == again.text
    assert [t.logprob for t in first.tokens] == [t.logprob for t in again.tokens]
    assert first.text != other.text


def test_sampling_values_the_schema_allows_never_get_a_500(client, server):
    """vLLM refuses temperatures over 2 and could not send a top_k of 2^64 to its engine: both were a 500. A seed of
    -1 is a seed on both engines (vLLM reads -1 as none, so it was not reproducible)."""

    def sample(**fields):
        body = helm_body("Once upon a time", max_new_tokens=3, stop_sequences=NEVER) | fields
        return client.post("/process", json=body)

    hot = sample(temperature=100.0, seed=1)
    nothing = sample(temperature=100.0, max_new_tokens=0)  # answered without an engine, checked as the same request
    if "vllm" in server.command:
        for answer in (hot, nothing):
            [error] = answer.json()["detail"]
            assert answer.status_code == 422 and error["loc"] == ["body", "temperature"], answer.text
            assert error["msg"] == "temperature 100 is over vLLM's limit of 2 (the built-in engine samples up to 100)"
        assert (
            client.get("/openapi.json").json()["components"]["schemas"]["ProcessRequest"]["properties"]["temperature"][
                "maximum"
            ]
            == 2.0
        )
    else:
        assert hot.status_code == nothing.status_code == 200, hot.text
    assert sample(temperature=1.0, top_k=2**64, seed=1).status_code == 200
    first, again = sample(temperature=1.0, seed=-1), sample(temperature=1.0, seed=-1)
    assert first.status_code == 200 and first.json()["text"] == again.json()["text"]


def test_request_time_is_wall_time(client):
    start = time.perf_counter()
    result = process(client, "The capital of France is ", max_new_tokens=16, stop_sequences=NEVER)
    elapsed = time.perf_counter() - start
    assert 0 < result.request_time <= elapsed


def test_event_loop_free_during_generation(server, http):
    counting = ", ".join(str(i) for i in range(1, 30)) + ","
    body = helm_body(counting, max_new_tokens=200, stop_sequences=NEVER)  # counting on does not hit EOS early
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        # The long request's own time limit is wider than HTTP_TIMEOUT: on a loaded 2-core machine 200 tokens can
        # take minutes, and what this test checks is only that the short requests are answered meanwhile.
        long = pool.submit(http.post, f"{server.url}/process", json=body, timeout=3 * http.timeout.read)
        time.sleep(0.5)
        health = http.get(f"{server.url}/health")
        tokenized = http.post(f"{server.url}/tokenize", json={"text": "hi"})
        answered_at = time.perf_counter()
        assert not long.done(), "the long generation ended before the check: make it longer"
        assert health.status_code == 200 and tokenized.status_code == 200
        assert long.result().status_code == 200
    assert answered_at - started < time.perf_counter() - started


BAD_BODIES = {
    "malformed json": ('{"prompt": "x",', "JSON"),
    "wrong type": ('{"prompt": 5}', "prompt"),
    "negative max_new_tokens": ('{"prompt": "x", "max_new_tokens": -3}', "max_new_tokens"),
    "absurd max_new_tokens": ('{"prompt": "x", "max_new_tokens": 100000000}', "max_new_tokens"),
    "empty prompt": ('{"prompt": ""}', "at least 1 character"),
    "missing prompt": ('{"max_new_tokens": 3}', "prompt"),
    "not an object": ("[1, 2]", "the body must be a JSON object of the request's fields, got a JSON array"),
    # "Field required" (vLLM's FastAPI said it for null too): which field?
    "null body": ("null", "the body must be a JSON object of the request's fields, got "),
    "empty body": ("", "the body must be a JSON object of the request's fields, got an empty body"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_input_is_4xx_with_a_message(client, name):
    body, mention = BAD_BODIES[name]
    response = client.post("/process", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert mention.lower() in response.text.lower()
    assert client.get("/health").status_code == 200  # and the server keeps serving


def test_prompt_over_context_limit(client):
    response = client.post("/process", json=helm_body("hello " * 2100))
    assert response.status_code == 422
    [error] = response.json()["detail"]  # the shape of a validation error's 422, naming the field as its others do
    assert error["loc"] == ["body", "prompt"] and "context limit" in error["msg"] and error["type"] == "value_error"
    over = client.post("/process", json=helm_body("Hi", max_new_tokens=5000))
    [error] = over.json()["detail"]
    assert over.status_code == 422 and "over this server's limit" in error["msg"]


def test_a_prompt_of_exactly_the_context_limit_is_scored(client, tokenizer):
    """HELM truncates a scoring prompt to the context: exactly --max-context tokens is a 200 (vLLM needs one slot
    more, which the engine gives it)."""
    ids = tokenizer("hello " * 3000, add_special_tokens=False).input_ids[:2048]
    body = {"prompt": tokenizer.decode(ids), "max_new_tokens": 0, "echo_prompt": True}
    response = client.post("/process", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["tokens"]) == 2048


def test_a_json_syntax_error_names_the_character(client):
    body = '{"prompt": "two\nlines"}'  # a raw newline inside a JSON string, as a curl command broken over lines
    [error] = client.post("/process", content=body, headers={"content-type": "application/json"}).json()["detail"]
    assert error["msg"] == "body is not valid JSON: Invalid control character at character 15"


def test_unknown_fields_ignored_and_reported(client):
    response = client.post("/process", json={**helm_body("Hi", max_new_tokens=2), "frobnicate": True})
    assert response.status_code == 200 and response.headers["x-ignored-fields"] == "frobnicate"


def test_bad_token_ids_and_tokenize_types(client):
    assert client.post("/decode", json={"tokens": [-1, 10**9]}).status_code == 422
    assert client.post("/tokenize", json={"text": 3}).status_code == 422
    assert client.post("/tokenize", json={"text": "a", "max_length": -1}).status_code == 422


def test_health_and_openapi(client, server):
    health = HealthResponse.model_validate(client.get("/health").json())
    assert health.engine == ("vllm" if "vllm" in server.command else "builtin") and health.engine_version
    assert health.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and health.device == "cpu"
    assert health.dtype == "float32" and health.memory["rss_bytes"] > 100_000_000
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/process", "/tokenize", "/decode", "/health"} <= set(paths)
    assert client.get("/docs").status_code == 200
