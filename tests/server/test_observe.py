"""What the server tells its operators, over real HTTP on each engine: Prometheus /metrics, the request id header
and one JSON access-log line per request."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

from prometheus_client.parser import text_string_to_metric_families

from llmkit.server.protocol import helm_body

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def scrape(http, server) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, by (name, sorted labels)."""
    response = http.get(f"{server.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_tokens_and_latency(client, server):
    before = scrape(client, server)
    # Two prompts, two choices each: the usage counts each prompt once, and so must the counter.
    body = {"model": MODEL, "prompt": ["Hello there", "Bye"], "n": 2, "max_tokens": 5}
    answer = client.post("/v1/completions", json=body)
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] == sum(
        len(client.post("/tokenize", json={"text": t}).json()["tokens"]) for t in body["prompt"]
    )
    assert client.post("/process", json=helm_body("Hi", max_new_tokens=3)).status_code == 200
    assert client.post("/process", json={"prompt": ""}).status_code == 422
    after = scrape(client, server)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("http_requests_total", handler="/v1/completions", method="POST", status="200") == 1
    assert grew("http_requests_total", handler="/process", method="POST", status="200") == 1
    assert grew("http_requests_total", handler="/process", method="POST", status="422") == 1
    assert grew("http_request_duration_seconds_count", handler="/process", method="POST") == 2
    assert grew("http_request_duration_seconds_bucket", handler="/process", method="POST", le="+Inf") == 2
    hi = len(client.post("/tokenize", json={"text": "Hi"}).json()["tokens"])
    assert grew("llmkit_prompt_tokens_total", model=MODEL) == usage["prompt_tokens"] + hi
    assert grew("llmkit_completion_tokens_total", model=MODEL) >= usage["completion_tokens"] + 1
    assert after[("llmkit_batch_max_batch_size", ())] == 16
    vllm = "vllm" in server.command
    assert (("llmkit_batch_kv_cache_bytes_budget", ()) in after) is not vllm  # vLLM does not report its cache


def test_metrics_show_the_batch_in_flight(server, http):
    body = helm_body(", ".join(str(i) for i in range(1, 30)) + ",", max_new_tokens=64, stop_sequences=["<<none>>"])
    seen = 0.0
    # A loaded machine can finish one request between two scrapes: a few tries before judging the gauge.
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(http.post, f"{server.url}/process", json=body)
            while not running.done() and not seen:
                seen = scrape(http, server).get(("llmkit_batch_running", ()), 0.0)
                time.sleep(0.02)
            assert running.result().status_code == 200
        if seen:
            break
    assert seen == 1
    # The answer can reach the client a moment before the engine's loop retires the sequence: poll, then judge.
    deadline = time.monotonic() + 10
    while scrape(http, server)[("llmkit_batch_running", ())] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape(http, server)[("llmkit_batch_running", ())] == 0


def test_request_id_and_access_log(client, server):
    answer = client.post(
        "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, headers={"X-Request-Id": "trace-42.a"}
    )
    assert answer.headers["x-request-id"] == "trace-42.a" and answer.json()["id"] == "cmpl-trace-42.a"
    generated = client.post("/process", json=helm_body("Hi", max_new_tokens=2)).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = client.get("/health", headers={"X-Request-Id": "bad id\twith spaces"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe)  # a client's id is echoed only when it is plain
    time.sleep(0.5)  # the line is written as the answer ends
    lines = {}
    for line in server.log_tail(200_000).splitlines():
        if "llmkit.server.access" in line:
            record = json.loads(line[line.index("{") :])
            lines[record["request_id"]] = record
    logged = lines["trace-42.a"]
    usage = answer.json()["usage"]
    assert logged["method"] == "POST" and logged["path"] == "/v1/completions" and logged["status"] == 200
    assert logged["prompt_tokens"] == usage["prompt_tokens"]
    assert logged["completion_tokens"] == usage["completion_tokens"]
    assert logged["model"] == MODEL and logged["duration_ms"] > 0
    assert lines[generated]["path"] == "/process" and lines[unsafe]["status"] == 200
    assert ' - "POST /process HTTP/1.1" 200' not in server.log_tail(200_000)  # uvicorn's own line is replaced
