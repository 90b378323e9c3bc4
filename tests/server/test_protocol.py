"""The wire models alone: what HELM sends parses, what it must not send is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmkit.server.protocol import ProcessRequest, ProcessResponse, TokenizeRequest

HELM_REQUEST = {  # every key crfm-helm 0.5.x sends (http_model_client.py)
    "prompt": "Question: 2 is\nA. even\nB. odd\nAnswer:",
    "temperature": 1e-7,
    "num_return_sequences": 1,
    "max_new_tokens": 5,
    "top_p": 1,
    "echo_prompt": False,
    "top_k_per_token": 5,
    "stop_sequences": [],
}


def test_helm_request_parses_and_is_greedy():
    request = ProcessRequest.model_validate(HELM_REQUEST)
    assert request.greedy and request.max_new_tokens == 5 and request.ignored_fields == []


def test_probe_needs_only_a_prompt():
    request = ProcessRequest.model_validate({"prompt": "The capital of France is "})
    assert request.greedy and request.max_new_tokens > 0


def test_sample_server_fields_accepted():
    body = {"prompt": "x", "num_samples": 1, "top_k": 200, "seed": 3, "temperature": 0.8}
    request = ProcessRequest.model_validate(body)
    assert (request.top_k, request.seed, request.greedy) == (200, 3, False)


def test_unknown_fields_are_listed():
    assert ProcessRequest.model_validate({"prompt": "x", "zzz": 1, "aaa": 2}).ignored_fields == ["aaa", "zzz"]


@pytest.mark.parametrize(
    "change",
    [
        {"max_new_tokens": -1},
        {"max_new_tokens": "5"},
        {"max_new_tokens": 5.5},
        {"temperature": "hot"},
        {"top_p": 0},
        {"echo_prompt": "yes"},
        {"stop_sequences": "\n"},
        {"prompt": None},
        {"top_k_per_token": 1000},
    ],
)
def test_wrong_values_refused(change):
    with pytest.raises(ValidationError):
        ProcessRequest.model_validate({**HELM_REQUEST, **change})


def test_tokenize_defaults_and_limits():
    assert TokenizeRequest.model_validate({"text": "a"}).truncation is False
    with pytest.raises(ValidationError):
        TokenizeRequest.model_validate({"text": "a", "max_length": 0})


def test_response_field_names_are_helms():
    fields = set(ProcessResponse.model_fields)
    assert fields == {"text", "tokens", "logprob", "request_time"}
