"""Hostile and fuzzed requests: every one gets a 4xx naming the field (or a 200), never a 500 or a dropped
connection, and the keep-alive connection keeps working after each."""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

JSON = {"Content-Type": "application/json"}
FIELD_NAMES = ["é€", "a\r\nX-Evil: 1", "a\x00b", " lead", "trail\t", "x" * 100_000]


def as_json(**fields) -> bytes:
    return json.dumps(fields).encode()


# name: (path, raw body, expected status, text the answer must contain)
HOSTILE = {
    "NaN temperature": ("/process", b'{"prompt": "hi", "temperature": NaN}', 422, "temperature"),
    "Infinity top_p": ("/process", b'{"prompt": "hi", "top_p": Infinity}', 422, "finite"),
    "1e400 temperature": ("/process", b'{"prompt": "hi", "temperature": 1e400}', 422, "finite"),
    "seed over 2^64": ("/process", b'{"prompt": "hi", "temperature": 1, "seed": 18446744073709551616}', 422, "seed"),
    "seed under -2^63": ("/process", b'{"prompt": "hi", "temperature": 1, "seed": -9223372036854775809}', 422, "seed"),
    "surrogate prompt": ("/process", b'{"prompt": "\\ud800 hi"}', 422, "unpaired surrogate at character 0"),
    "surrogate stop": ("/process", b'{"prompt": "hi", "stop_sequences": ["\\udfff"]}', 422, "unicode"),
    "surrogate text": ("/tokenize", b'{"text": "\\ud800"}', 422, "unpaired surrogate"),
    "NaN max_length": ("/tokenize", b'{"text": "a", "max_length": NaN}', 422, "max_length"),
    "zero max_length": ("/tokenize", b'{"text": "a", "max_length": 0}', 422, "max_length"),
    "Infinity token": ("/decode", b'{"tokens": [Infinity]}', 422, "tokens"),
    "huge token id": ("/decode", b'{"tokens": [99999999999999999999999]}', 422, "tokens"),
    "negative token id": ("/decode", b'{"tokens": [-1]}', 422, "tokens"),
    "token id past the vocabulary": ("/decode", b'{"tokens": [49152, 5]}', 422, "vocabulary"),
    "not UTF-8": ("/process", b'\xff\xfe{"prompt": "x"}', 400, "not UTF-8"),
    "empty body": ("/process", b"", 422, "body"),
    "not JSON": ("/tokenize", b"hello", 422, "JSON"),
    "JSON null": ("/decode", b"null", 422, "body"),
    "fractional count": ("/process", b'{"prompt": "x", "max_new_tokens": 1.5}', 422, "max_new_tokens"),
    "boolean count": ("/process", b'{"prompt": "x", "max_new_tokens": true}', 422, "max_new_tokens"),
    "integral float count": ("/tokenize", as_json(text="a b c", truncation=True, max_length=2.0), 200, "tokens"),
    "huge max_new_tokens": ("/process", b'{"prompt": "x", "max_new_tokens": 100000000000000000000}', 422, "limit"),
    "huge top_k_per_token": ("/process", b'{"prompt": "x", "top_k_per_token": 1000000}', 422, "top_k_per_token"),
    "101 stop sequences": ("/process", as_json(prompt="x", stop_sequences=["a"] * 101), 422, "100"),
    "prompt over the context": ("/process", as_json(prompt="hello " * 3000, max_new_tokens=2), 422, "context limit"),
    "1000 tokens to decode": ("/decode", as_json(tokens=list(range(1000))), 200, "text"),
    "huge truncation length": ("/tokenize", as_json(text="a b", truncation=True, max_length=10**13), 200, "["),
    "top_p rounding to 0": ("/process", as_json(prompt="hi", temperature=1, top_p=1e-45, max_new_tokens=2), 200, "["),
    "one-token prompt echoed": ("/process", as_json(prompt="0", max_new_tokens=0, echo_prompt=True), 200, "tokens"),
    "JSON nested too deeply": (
        "/process",
        b'{"prompt": "hi", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        422,
        "deeply",
    ),
    "a number of 5000 digits": ("/tokenize", b'{"text": "Hi", "max_length": ' + b"9" * 5000 + b"}", 422, "digits"),
    "/v1 a number of 5000 digits": ("/v1/completions", b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", 400, "digits"),
    "/v1 JSON nested too deeply": ("/v1/completions", b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, '"error"'),
    "/v1 not JSON": ("/v1/completions", b"{x", 400, '"param":null'),  # a character offset is no field name
    "/v1 unknown route": ("/v1/nothing", b"{}", 404, '"error"'),
    # More sequences than the batch and its queue ever hold: a 503 would say "retry" to what can never be served.
    "/v1 more prompts than the server holds": ("/v1/completions", as_json(prompt=["x"] * 81), 400, '"param":"prompt"'),
    "/v1 n over what the server holds": ("/v1/completions", as_json(prompt="x", n=81), 400, '"param":"n"'),
    "/v1 max_tokens over the limit": ("/v1/completions", as_json(prompt="x", max_tokens=5), 400, "max_tokens 5 is"),
    "/v1 chat max_completion_tokens over the limit": (
        "/v1/chat/completions",
        as_json(messages=[{"role": "user", "content": "x"}], max_completion_tokens=5),
        400,
        '"param":"max_completion_tokens"',
    ),
}


@pytest.fixture(scope="module")
def server(start_server):
    # Small limits keep each fuzzed /process request cheap: schemathesis reaches for the largest values the schema
    # allows (16 prompts of the whole context, 100 alternatives per token), and at the challenge's limits one such
    # request takes a minute on 2 CPU cores. The limits are the server's own settings, so the checks are the same.
    return start_server("--max-new-tokens-limit", "4", "--max-context", "128")


@pytest.fixture(scope="module")
def connection(server):
    """One keep-alive connection for every case, as HELM's client keeps one per thread."""
    url = httpx.URL(server.url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=300)
    yield conn
    conn.close()


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_request_gets_a_clear_answer_and_the_connection_lives(connection, name):
    path, body, status, mention = HOSTILE[name]
    connection.request("POST", path, body=body, headers=JSON)
    response = connection.getresponse()
    text = response.read().decode()
    assert response.status == status, text
    assert mention.lower() in text.lower()
    connection.request("GET", "/health")  # the same keep-alive connection still answers
    health = connection.getresponse()
    assert health.status == 200 and json.loads(health.read())["status"] == "ok"


def test_health_probes_compressed_bodies_and_an_empty_adapter_header_get_clear_answers(connection):
    connection.request("HEAD", "/health")  # load balancers probe with HEAD
    head = connection.getresponse()
    assert head.status == 200 and head.read() == b""
    gzipped = {**JSON, "Content-Encoding": "gzip"}
    connection.request("POST", "/process", body=gzip.compress(as_json(prompt="hi")), headers=gzipped)
    compressed = connection.getresponse()
    assert compressed.status == 415 and "Content-Encoding gzip is not supported" in compressed.read().decode()
    connection.request(
        "POST", "/process", body=as_json(prompt="hi", max_new_tokens=1), headers={**JSON, "X-Adapter": ""}
    )
    empty = connection.getresponse()
    assert empty.status == 200 and json.loads(empty.read())["tokens"]  # no name: the server's default


def ignored_header(connection, names) -> str:
    body = {"prompt": "hi", "max_new_tokens": 2, **dict.fromkeys(names, 1)}
    connection.request("POST", "/process", body=json.dumps(body).encode(), headers=JSON)
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["tokens"]
    assert response.getheader("X-Evil") is None
    listed = response.getheader("X-Ignored-Fields")
    assert listed.isascii() and listed.isprintable() and " " not in listed and len(listed) <= 1100
    return listed


def test_unknown_field_names_never_reach_a_header_raw(connection):
    listed = ignored_header(connection, FIELD_NAMES)
    expected = ["%20lead", "a%00b", "a%0D%0AX-Evil%3A%201", "trail%09", "%C3%A9%E2%82%AC", "...1%20more"]
    assert listed.split(",") == expected  # sorted; the 100 KB name does not fit and is counted
    listed = ignored_header(connection, [f"extra{i}" for i in range(10_000)])  # a 64 KB header line breaks http.client
    assert listed.startswith("extra0,extra1,") and listed.endswith("more")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error_and_no_undeclared_answer(server, tmp_path):
    """Fuzz every operation from the server's own OpenAPI schema (seed 42, 15 examples per operation: the
    hostile cases above are written out; this looks for what they missed, within the suite's time)."""
    st = Path(sys.executable).with_name("st")
    checks = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
    result = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json", "--seed", "42", "--max-examples", "15", "--checks", checks,
         "--request-timeout", "300", "--no-color",
         # GET /v1/models/{model}: most generated strings cannot be a URL path segment and are filtered out
         "--suppress-health-check", "filter_too_much"],
        capture_output=True, text=True, timeout=580, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
