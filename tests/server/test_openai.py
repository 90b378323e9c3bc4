"""The OpenAI API on the real embedded model over real HTTP, through the official `openai` client and lm-eval's
`local-completions`, checked against transformers directly (on each engine: the `server` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import torch

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
NEVER = ["<<no such text>>"]


@pytest.fixture(scope="module")
def oai(server, http):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=http.timeout.read, max_retries=0)


def greedy_ids(reference, ids: list[int], count: int) -> list[int]:
    model, tokenizer = reference
    out = model.generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False)[0, len(ids) :].tolist()
    return out[: out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out


def logprobs_of(reference, ids: list[int]) -> torch.Tensor:
    """log p(token | prefix) at every position of `ids`, one plain forward pass."""
    with torch.no_grad():
        return torch.log_softmax(reference[0](torch.tensor([ids])).logits[0].float(), dim=-1)


def test_models_lists_the_base(oai):
    assert [m.id for m in oai.models.list().data] == [MODEL]


def test_completion_is_greedy_transformers(oai, reference):
    _, tokenizer = reference
    answer = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    expected = greedy_ids(reference, tokenizer(PROMPT).input_ids, 12)
    assert answer.choices[0].text == tokenizer.decode(expected)
    assert answer.usage.prompt_tokens == len(tokenizer(PROMPT).input_ids)
    assert answer.usage.completion_tokens == len(expected) and answer.choices[0].finish_reason == "length"
    assert answer.id.startswith("cmpl-") and answer.model == MODEL


def test_completion_logprobs_legacy_format(oai, reference):
    _, tokenizer = reference
    answer = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    choice = answer.choices[0]
    prompt_ids = tokenizer(PROMPT).input_ids
    completion_ids = greedy_ids(reference, prompt_ids, 6)
    logprobs = logprobs_of(reference, prompt_ids + completion_ids)
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert [choice.text[o : o + len(t)] for o, t in zip(lp.text_offset, lp.tokens, strict=True)] == lp.tokens
    for i, (token_id, value, top) in enumerate(zip(completion_ids, lp.token_logprobs, lp.top_logprobs, strict=True)):
        position = len(prompt_ids) + i - 1
        assert value == pytest.approx(logprobs[position, token_id].item(), abs=1e-4)
        assert 3 <= len(top) <= 4  # the 3 likeliest, plus the chosen token when it is not among them
        best = torch.topk(logprobs[position], 3).values.tolist()
        assert sorted(top.values(), reverse=True)[:3] == pytest.approx(best, abs=1e-4)


def test_echo_with_max_tokens_0_scores_the_prompt(oai, reference):
    """lm-eval's loglikelihood request: echo, no new tokens, logprobs."""
    _, tokenizer = reference
    text = "The quick brown fox jumps over the lazy dog."
    answer = oai.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    ids = tokenizer(text).input_ids
    logprobs = logprobs_of(reference, ids)
    lp = answer.choices[0].logprobs
    assert answer.choices[0].text == text and "".join(lp.tokens) == text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing to condition on
    for position in range(1, len(ids)):
        assert lp.token_logprobs[position] == pytest.approx(logprobs[position - 1, ids[position]].item(), abs=1e-4)
    assert answer.usage.completion_tokens == 0 and answer.choices[0].finish_reason == "length"


def test_token_id_prompts_in_one_request(oai, reference):
    """lm-eval's local-completions sends token ids, several prompts per request, echo and max_tokens 1."""
    _, tokenizer = reference
    prompts = [tokenizer(p).input_ids for p in ("Paris is in", "One, two, three,")]
    answer = oai.completions.create(
        model=MODEL, prompt=prompts, max_tokens=1, echo=True, logprobs=1, temperature=0, seed=1234
    )
    assert [c.index for c in answer.choices] == [0, 1]
    for ids, choice in zip(prompts, answer.choices, strict=True):
        logprobs = logprobs_of(reference, ids)
        lp = choice.logprobs
        assert len(lp.tokens) == len(ids) + 1  # the prompt, then the one new token
        next_id = int(logprobs[-1].argmax())
        assert choice.text == tokenizer.decode(ids + [next_id])
        assert lp.token_logprobs[-1] == pytest.approx(logprobs[-1, next_id].item(), abs=1e-4)
        assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())  # lm-eval's is_greedy check


def test_an_empty_prompt_starts_a_document(oai, reference):
    """OpenAI's models condition an empty prompt on <|endoftext|>; here the BOS (this tokenizer has one), not " "."""
    _, tokenizer = reference
    answer = oai.completions.create(model=MODEL, prompt="", max_tokens=5, temperature=0)
    assert answer.choices[0].text == tokenizer.decode(greedy_ids(reference, [tokenizer.bos_token_id], 5))
    assert answer.usage.prompt_tokens == 1


def test_eos_is_listed_in_logprobs_not_in_text(oai, reference):
    """A completion that ends on EOS lists it last (as OpenAI does), so lm-eval's [ctxlen:-1] drops it, not a
    prompt token."""
    _, tokenizer = reference
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    answer = oai.completions.create(model=MODEL, prompt=chat, max_tokens=40, temperature=0, logprobs=1)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and "Paris" in choice.text
    assert choice.logprobs.tokens[-1] == tokenizer.eos_token and tokenizer.eos_token not in choice.text
    assert "".join(choice.logprobs.tokens[:-1]) == choice.text
    assert answer.usage.completion_tokens == len(choice.logprobs.tokens)


def test_stop_sequences(oai):
    prompt = "List three colors:\n1."
    full = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0).choices[0]
    assert "2." in full.text  # no HELM newline rule on the OpenAI API
    stopped = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=["2.", "zzz"])
    assert stopped.choices[0].text == full.text[: full.text.index("2.")]
    assert stopped.choices[0].finish_reason == "stop"
    # A stop that starts inside a token: the text ends mid-token, and the usage counts only the tokens kept.
    word = full.text.split()[0]  # " Red" of " Red\n2. ..."
    mid = word[len(word) // 2 :]
    cut = oai.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=mid, logprobs=1)
    choice = cut.choices[0]
    assert choice.text == full.text[: full.text.index(mid)] and "".join(choice.logprobs.tokens) == choice.text
    assert cut.usage.completion_tokens == len(choice.logprobs.tokens)


def test_n_choices_with_a_seed_are_distinct_and_reproducible(oai):
    def sample(seed: int):
        answer = oai.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0, top_p=0.95, n=3, seed=seed
        )
        return [c.text for c in sorted(answer.choices, key=lambda c: c.index)]

    first, again, other = sample(7), sample(7), sample(8)
    assert first == again and len(first) == 3
    assert len(set(first)) > 1  # each choice samples with its own seed
    assert first != other


def test_chat_uses_the_chat_template(oai, reference):
    _, tokenizer = reference
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    answer = oai.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)).input_ids
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == tokenizer.decode(greedy_ids(reference, ids, 12))
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob == t.top_logprobs[0].logprob for t in choice.logprobs.content)
    assert answer.usage.prompt_tokens == len(ids)


def test_split_characters_keep_their_bytes_and_their_alternatives(oai):
    # Each of テキスト's characters is two byte-level tokens here: as text, a token holding part of one is "\ufffd".
    messages = [{"role": "user", "content": "Say テキスト"}]
    chat = oai.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert b"".join(bytes(t.bytes) for t in content) == chat.choices[0].message.content.encode()
    assert any(len(t.bytes) and not t.token for t in content)  # part of a character: its bytes, no text yet
    assert all(len(t.top_logprobs) == 3 for t in content)
    text = oai.completions.create(model=MODEL, prompt="日本語のテキスト: ", max_tokens=4, temperature=0, logprobs=3)
    tops = text.choices[0].logprobs.top_logprobs
    assert all(len(top) in (3, 4) for top in tops)  # the chosen token is among them or listed besides
    assert any(key.startswith("bytes:\\x") for top in tops for key in top)


def test_streamed_completion_equals_the_whole_answer(oai):
    request = {"model": MODEL, "prompt": "List three colors:\n1.", "max_tokens": 16, "temperature": 0}
    whole = oai.completions.create(**request, stop=["3."]).choices[0]
    chunks = list(oai.completions.create(**request, stop=["3."], stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 2  # token by token, not one piece at the end
    assert "".join(texts) == whole.text  # a stop sequence split over tokens is never sent
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_streamed_chat_and_echo_logprobs(oai):
    messages = [{"role": "user", "content": "Name a color."}]
    request = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0}
    whole = oai.chat.completions.create(**request)
    chunks = list(oai.chat.completions.create(**request, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    echoed = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1, stream=True
    )
    tokens, values = [], []
    for chunk in echoed:
        tokens += chunk.choices[0].logprobs.tokens
        values += chunk.choices[0].logprobs.token_logprobs
    plain = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1)
    assert tokens == plain.choices[0].logprobs.tokens and values == plain.choices[0].logprobs.token_logprobs


HI = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def test_client_mistakes_are_4xx_in_openai_shape(oai, server, http):
    with pytest.raises(openai.NotFoundError, match="not served here") as unknown:
        oai.completions.create(model="no-such-model", prompt="x")
    assert (unknown.value.code, unknown.value.param) == ("model_not_found", "model")
    route = http.post(f"{server.url}/v1/no-such-route", json={}).json()["error"]  # not a model's absence
    assert route["code"] == "not_found" and route["param"] is None
    with pytest.raises(openai.BadRequestError, match="context limit"):
        oai.completions.create(model=MODEL, prompt="hello " * 2100, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="penalties are not supported"):
        oai.completions.create(model=MODEL, prompt="x", frequency_penalty=1.0)
    response = http.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": []})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages" and error["type"] == "invalid_request_error"
    assert http.post(f"{server.url}/v1/completions", content="{not json").status_code == 400
    # A user message needs content; errors name the field the client wrote, not pydantic's union branches.
    cases = [
        ("chat/completions", {"messages": [{"role": "user"}]}, "messages.0.content: a user message needs content"),
        ("chat/completions", {"messages": [{"role": "user", "content": []}]}, "messages.0.content: a user message"),
        ("completions", {"prompt": "x", "stop": "\ud800"}, "stop: text is not valid Unicode: unpaired surrogate"),
        ("completions", {"prompt": {"a": 1}}, "prompt: Input should be a valid string; prompt: Input should be a"),
        # the branch of a union that took the value says what is wrong; the others ("a valid list") are not said
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": "\ud800"}]},
            "messages.0.content: text is not valid Unicode: unpaired surrogate at character 0",
        ),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0.type: content parts of type 'image_url' are not served: this server takes text",
        ),
        # Options that would change the answer's kind are refused, not ignored (OpenAI's clients rely on them).
        ("chat/completions", {"messages": HI, "tools": [TOOL]}, "tools: tool calling is not supported"),
        ("chat/completions", {"messages": HI, "tool_choice": "required"}, "tool_choice: tool calling"),
        (
            "chat/completions",
            {"messages": HI, "response_format": {"type": "json_object"}},
            "response_format: only type 'text' is served",
        ),
        ("chat/completions", {"messages": HI, "response_format": {}}, "response_format: type is missing"),
        ("chat/completions", {"messages": HI, "top_logprobs": 2}, "top_logprobs needs logprobs"),
    ]
    # null is "unset" for the fields OpenAI marks nullable (clients that write every field send it)
    unset = {"temperature": None, "top_p": None, "n": None, "presence_penalty": None, "frequency_penalty": None}
    for path, body in (("completions", {"prompt": "x"}), ("chat/completions", {"messages": HI})):
        answer = http.post(f"{server.url}/v1/{path}", json={"model": MODEL, "max_tokens": 1, **body, **unset})
        assert answer.status_code == 200 and len(answer.json()["choices"]) == 1, answer.text
    text = {"messages": HI, "response_format": {"type": "text"}, "tool_choice": "none", "tools": []}
    assert http.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "max_tokens": 1, **text}).is_success
    for path, body, message in cases:
        body = json.dumps({"model": MODEL, "max_tokens": 1, **body})  # ASCII: a lone surrogate goes as \\ud800
        response = http.post(f"{server.url}/v1/{path}", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["message"].startswith(message), response.text
        assert "valid list" not in response.text or "valid string" in message, response.text
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary") as outside:
        oai.completions.create(model=MODEL, prompt=[99999999], max_tokens=1)
    assert outside.value.param == "prompt"


# --- lm-eval ----------------------------------------------------------------------------------------------------
LM_EVAL_TASKS = Path(__file__).parent / "lm_eval_tasks"  # the README's lm_eval command uses them too


def test_lm_eval_local_completions(server, reference, default_model_dir, monkeypatch):
    """lm-eval's own loglikelihoods over the server equal a forward pass, and its accuracy follows from them."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(LM_EVAL_TASKS.parents[2])  # the task's data_files path is relative to the repository root
    rows = (LM_EVAL_TASKS / "capitals.jsonl").read_text().splitlines()
    model_args = (
        f"model={MODEL},base_url={server.url}/v1/completions,tokenizer={default_model_dir},"
        "tokenizer_backend=huggingface,num_concurrent=2,max_retries=1"
    )
    results = simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=["llmkit_capitals"],
        task_manager=TaskManager(include_path=str(LM_EVAL_TASKS)),
        log_samples=True,
    )
    _, tokenizer = reference
    correct = 0
    for sample in sorted(results["samples"]["llmkit_capitals"], key=lambda s: s["doc_id"]):
        scores = [resp[0][0] for resp in sample["resps"]]
        for (context, continuation), score in zip(sample["arguments"], scores, strict=True):
            context_ids = tokenizer(context).input_ids
            continuation_ids = tokenizer(context + continuation).input_ids[len(context_ids) :]
            logprobs = logprobs_of(reference, context_ids + continuation_ids)
            expected = sum(
                logprobs[len(context_ids) + i - 1, token].item() for i, token in enumerate(continuation_ids)
            )
            assert score == pytest.approx(expected, abs=1e-3)
        correct += int(max(range(len(scores)), key=scores.__getitem__) == sample["target"])
    assert len(results["samples"]["llmkit_capitals"]) == len(rows) == 4
    assert results["results"]["llmkit_capitals"]["acc,none"] == pytest.approx(correct / len(rows))
