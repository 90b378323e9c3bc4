"""Continuous batching over real HTTP: concurrent clients get what they get one by one, a disconnect frees its row,
a full queue answers 503, and generation, scoring and tokenizing run in one batch together."""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from llmkit.server.app import DOCKER_STOP_S
from llmkit.server.protocol import ProcessResponse, helm_body

NEVER = ["<<no such text>>"]
COUNTING = ", ".join(str(i) for i in range(1, 30)) + ","  # counting on: no early EOS, no newline
PROMPTS = [
    "The capital of France is ",
    "List three colors:\n1.",
    "Question: What is 2+2?\nAnswer:",
    "def add(a, b):\n",
    "The following are multiple choice questions about physics.\n\nQuestion: What is the unit of force?\n"
    "A. Joule\nB. Newton\nC. Watt\nD. Pascal\nAnswer:",
    COUNTING,
]


def mixed_bodies(count: int) -> list[dict]:
    """HELM-shaped requests of different prompt lengths and kinds: greedy, echoed, scoring-only, seeded sampling."""
    bodies = []
    for i in range(count):
        prompt = PROMPTS[i % len(PROMPTS)]
        kind = i % 4
        if kind == 0:
            bodies.append(helm_body(prompt, max_new_tokens=12, stop_sequences=NEVER, top_k_per_token=5))
        elif kind == 1:
            bodies.append(helm_body(prompt, max_new_tokens=8, echo_prompt=True, top_k_per_token=3))
        elif kind == 2:
            bodies.append(helm_body(prompt, max_new_tokens=0, echo_prompt=True, top_k_per_token=1))
        else:
            bodies.append(helm_body(prompt, max_new_tokens=10, temperature=0.8, seed=i, stop_sequences=NEVER))
    return bodies


def post(client: httpx.Client, body: dict) -> ProcessResponse:
    response = client.post("/process", json=body)
    assert response.status_code == 200, response.text
    return ProcessResponse.model_validate_json(response.text)


def assert_same(one: ProcessResponse, other: ProcessResponse) -> None:
    """Same text and token texts; every logprob and top-k alternative within 1e-4 (float32 on the CPU)."""
    assert other.text == one.text
    assert [t.text for t in other.tokens] == [t.text for t in one.tokens]
    for a, b in zip(one.tokens, other.tokens, strict=True):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
        assert set(b.top_logprob) == set(a.top_logprob)
        for text, value in a.top_logprob.items():
            assert b.top_logprob[text] == pytest.approx(value, abs=1e-4)
    assert other.logprob == pytest.approx(one.logprob, abs=1e-3)


@pytest.fixture(scope="module")
def batching(start_server):
    """Short prompts prefill together; prompts over 64 tokens prefill in 64-token chunks between decode steps."""
    return start_server("--prefill-chunk-tokens", "64")


@pytest.mark.parametrize("clients", [4, 16])
def test_concurrent_clients_get_what_one_by_one_gets(batching, http, clients):
    bodies = mixed_bodies(clients)
    with httpx.Client(base_url=batching.url, timeout=http.timeout) as client:
        alone = [post(client, body) for body in bodies]
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(lambda body: post(client, body), bodies))
    for one, other in zip(alone, together, strict=True):
        assert_same(one, other)


def test_requests_share_the_batch(batching, http):
    """Four long generations in flight are decoded in one batch, and /health says so."""
    body = helm_body(COUNTING, max_new_tokens=60, stop_sequences=NEVER)
    seen = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(http.post, f"{batching.url}/process", json=body) for _ in range(4)]
        while not all(f.done() for f in futures):
            batch = http.get(f"{batching.url}/health").json()["batch"]
            seen = max(seen, batch["running"])
            time.sleep(0.05)
        assert all(f.result().status_code == 200 for f in futures)
    assert seen >= 2
    idle = http.get(f"{batching.url}/health").json()["batch"]
    assert idle["running"] == idle["waiting"] == idle["prefilling"] == 0 and idle["kv_cache_bytes_used"] == 0
    assert idle["kv_cache_bytes_budget"] > 0 and idle["max_batch_size"] == 16


def test_mixed_generation_scoring_and_tokenizing_in_flight(batching, http):
    bodies = mixed_bodies(8)
    texts = [PROMPTS[i % len(PROMPTS)] * (i + 1) for i in range(8)]
    with httpx.Client(base_url=batching.url, timeout=http.timeout) as client:
        alone = [post(client, body) for body in bodies]
        tokens_alone = [client.post("/tokenize", json={"text": t}).json()["tokens"] for t in texts]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            processed = [pool.submit(post, client, body) for body in bodies]
            tokenized = [pool.submit(client.post, "/tokenize", json={"text": t}) for t in texts]
            decoded = [pool.submit(client.post, "/decode", json={"tokens": ids}) for ids in tokens_alone]
            for one, future in zip(alone, processed, strict=True):
                assert_same(one, future.result())
            assert [f.result().json()["tokens"] for f in tokenized] == tokens_alone
            assert [f.result().json()["text"] for f in decoded] == texts


def test_long_prompt_prefilled_in_chunks_scores_like_one_pass(batching, http, reference):
    """A 300-token prompt goes in five 64-token chunks; its echoed logprobs equal one plain forward pass."""
    model, tokenizer = reference
    prompt = PROMPTS[4] * 8
    ids = tokenizer(prompt).input_ids
    assert len(ids) > 4 * 64
    body = helm_body(prompt, max_new_tokens=0, echo_prompt=True, top_k_per_token=2)
    result = ProcessResponse.model_validate(http.post(f"{batching.url}/process", json=body).json())
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert "".join(t.text for t in result.tokens) == prompt and len(result.tokens) == len(ids)
    for position in range(1, len(ids)):
        assert result.tokens[position].logprob == pytest.approx(logprobs[position - 1, ids[position]].item(), abs=1e-4)


@pytest.fixture(scope="module")
def one_row(start_server):
    """Batching off, one waiting place: the queue fills after two requests."""
    return start_server("--max-batch-size", "1", "--max-queue", "1")


def wait_for(http: httpx.Client, url: str, check, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = http.get(f"{url}/health").json()["batch"]
        if check(batch):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"/health never showed the expected batch state; last: {batch}")


def open_request(url: str, body: dict) -> socket.socket:
    """Send a /process request on a raw socket and leave it waiting; closing the socket is the client leaving."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, port))
    head = f"POST /process HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def test_disconnect_frees_the_row_and_full_queue_answers_503(one_row, http):
    long = helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER)  # minutes of decoding on this CPU
    running = open_request(one_row.url, long)
    wait_for(http, one_row.url, lambda b: b["running"] == 1)
    waiting = open_request(one_row.url, long)
    wait_for(http, one_row.url, lambda b: b["waiting"] == 1)

    refused = http.post(f"{one_row.url}/process", json=helm_body("Hi"))
    assert refused.status_code == 503
    assert "busy" in refused.json()["detail"] and int(refused.headers["retry-after"]) >= 1
    # nothing to compute (no new token, no echo) is answered at once, not queued: it got the 503 too, or a whole
    # prefill for an empty answer
    empty = http.post(f"{one_row.url}/process", json=helm_body("Hi", max_new_tokens=0))
    assert empty.status_code == 200 and (empty.json()["text"], empty.json()["tokens"]) == ("", []), empty.text

    running.close()  # the running client leaves: its row frees, and the waiting request takes it
    wait_for(http, one_row.url, lambda b: b["running"] == 1 and b["waiting"] == 0, seconds=30)
    waiting.close()
    wait_for(http, one_row.url, lambda b: b["running"] == b["waiting"] == 0, seconds=30)
    assert post(httpx.Client(base_url=one_row.url, timeout=http.timeout), helm_body("Hi", max_new_tokens=2)).text


def test_free_batch_rows_take_requests_before_the_queue_counts(start_server, http):
    """--max-queue 0: no request waits, but every free row of the batch still takes one (a burst included)."""
    server = start_server("--max-batch-size", "2", "--max-queue", "0")
    long = helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER)
    clients = [open_request(server.url, long) for _ in range(2)]  # sent together, before either is admitted
    wait_for(http, server.url, lambda b: b["running"] == 2 and b["waiting"] == 0)
    refused = http.post(f"{server.url}/process", json=helm_body("Hi"))
    detail = refused.json()["detail"]
    assert refused.status_code == 503 and "2 requests in flight (--max-batch-size 2 plus --max-queue 0)" in detail
    for client in clients:
        client.close()
    wait_for(http, server.url, lambda b: b["running"] == b["waiting"] == 0, seconds=30)


def test_a_burst_gets_the_batch_and_the_queue_and_no_more(start_server, http):
    """Admission counted free rows from the last step's snapshot while the model thread was taking requests into the
    batch: 10 requests at once got 6 places where 2 rows and 1 queue place are 3."""
    server = start_server("--max-batch-size", "2", "--max-queue", "1")
    long = helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER)
    clients = [open_request(server.url, long) for _ in range(10)]
    wait_for(http, server.url, lambda b: b["running"] == 2 and b["waiting"] == 1)
    answered = []
    for client in clients:
        client.settimeout(2)
        try:
            answered.append(client.recv(64))
        except TimeoutError:  # admitted: still generating
            pass
    assert len(answered) == 7 and all(a.startswith(b"HTTP/1.1 503") for a in answered), answered
    for client in clients:
        client.close()
    wait_for(http, server.url, lambda b: b["running"] == b["waiting"] == 0, seconds=30)


@pytest.mark.slow
def test_health_counts_each_request_in_flight_once(start_server, http):
    """While requests arrive and none ends, /health's running + prefilling + waiting only grows: the requests a pass
    admitted were counted nowhere until it ended (the last pass's snapshot beside the live queue), so a burst of 40
    read 37, and here the whole group being prefilled (4 prompts of ~450 tokens in one pass) vanished."""
    server = start_server("--prefill-chunk-tokens", "8192")
    long = helm_body(COUNTING * 5, max_new_tokens=900, stop_sequences=NEVER)
    clients = [open_request(server.url, long)]
    wait_for(http, server.url, lambda b: b["running"] == 1)
    clients += [open_request(server.url, long) for _ in range(4)]
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1]["running"] < 5):
        seen.append(http.get(f"{server.url}/health").json()["batch"])
    for client in clients:
        client.close()
    totals = [batch["running"] + batch["prefilling"] + batch["waiting"] for batch in seen]
    counts = [(batch["running"], batch["prefilling"], batch["waiting"]) for batch in seen]
    assert seen[-1]["running"] == 5 and totals == sorted(totals), counts
    wait_for(http, server.url, lambda b: b["running"] == b["waiting"] == 0, seconds=30)


@pytest.mark.slow
def test_vllm_health_counts_requests_past_the_batch_as_waiting(start_server, http):
    """vLLM runs at most --max-batch-size requests at once (its max_num_seqs) and queues the rest: /health derives
    running and waiting from the requests in flight. It said all 4 were running with 2 rows, and waiting null."""
    server = start_server("--engine", "vllm", "--max-batch-size", "2", startup_timeout=600)
    long = helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER)
    clients = [open_request(server.url, long) for _ in range(4)]
    batch = wait_for(http, server.url, lambda b: b["running"] + (b["waiting"] or 0) == 4)
    for client in clients:
        client.close()
    assert (batch["running"], batch["waiting"]) == (2, 2), batch
    wait_for(http, server.url, lambda b: b["running"] == b["waiting"] == 0, seconds=30)


@pytest.mark.slow
def test_request_time_limit_gives_504(start_server, http):
    server = start_server("--request-timeout-s", "2")
    response = http.post(f"{server.url}/process", json=helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER))
    assert response.status_code == 504 and "over 2 s" in response.json()["detail"]
    assert post(httpx.Client(base_url=server.url, timeout=http.timeout), helm_body("Hi", max_new_tokens=2)).text


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_shutdown_answers_requests_in_flight_503_within_its_grace_period(start_server, http, signum):
    """SIGTERM (docker stop) or Ctrl-C with long requests running: each gets a 503 (a stream, an error event) once
    --shutdown-timeout-s has passed, and the server exits; without the limit it waited for them (minutes). Ctrl-C
    then ended in asyncio's KeyboardInterrupt traceback, exit 1."""
    # The server gets Ctrl-C's default handling even where this suite runs in the background (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server = start_server("--shutdown-timeout-s", "1")
    finally:
        signal.signal(signal.SIGINT, previous)
    long = helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER)
    stream_body = {"prompt": COUNTING, "max_tokens": 1000, "stop": NEVER, "stream": True, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        helm = pool.submit(http.post, f"{server.url}/process", json=long)

        def stream() -> list[str]:
            with http.stream("POST", f"{server.url}/v1/completions", json=stream_body) as response:
                return list(response.iter_lines())

        streamed = pool.submit(stream)
        wait_for(http, server.url, lambda b: b["running"] == 2)
        server.process.send_signal(signum)
        server.process.wait(timeout=60)
        answer, events = helm.result(timeout=10), streamed.result(timeout=10)
    assert answer.status_code == 503 and answer.headers["connection"] == "close"
    assert "shutting down" in answer.json()["detail"]
    assert events[-2].startswith('data: {"error"') and "shutting down" in events[-2], events[-3:]
    log = server.log_tail(20_000)
    assert "Traceback" not in log and "never retrieved" not in log, log
    assert server.process.returncode == {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130}[signum], log


@pytest.mark.slow
def test_vllm_drains_and_stops_its_engine_before_docker_stop_kills_it(start_server, http):
    """docker stop SIGKILLs 10 s after its SIGTERM, and vLLM's engine takes seconds to stop (VLLM_CLOSE_S): its
    server drains for what that leaves of the 10 s, where a request that can finish does, the others get the 503,
    and then the engine stops cleanly. It drained the default 5 s and exited after 10-13 s, vLLM having SIGKILLed its
    EngineCore mid-teardown (its own 5 s limit): shared memory leaked, and under docker the server's own cleanup (its
    socket folder) never ran."""
    server = start_server("--engine", "vllm", startup_timeout=600)
    children = psutil.Process(server.process.pid).children(recursive=True)  # the resource tracker among them
    folders = {Path(folder) for folder in (child.environ().get("VLLM_RPC_BASE_PATH") for child in children) if folder}
    long = helm_body(COUNTING, max_new_tokens=1000, stop_sequences=NEVER)
    short_body = helm_body("Hi", max_new_tokens=4)  # can finish in the drain
    for body in (short_body, {**long, "max_new_tokens": 4}):  # a fresh vLLM's first requests take seconds
        assert http.post(f"{server.url}/process", json=body).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(http.post, f"{server.url}/process", json=long) for _ in range(3)]
        wait_for(http, server.url, lambda b: b["running"] == 3)
        short = pool.submit(http.post, f"{server.url}/process", json=short_body)
        wait_for(http, server.url, lambda b: b["running"] == 4 or short.done())
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        took = time.monotonic() - sent
        statuses = [answer.result(timeout=10).status_code for answer in [*answers, short]]
    psutil.wait_procs(children, timeout=30)  # the resource tracker names what leaked as it ends
    log = server.log_tail(50_000)
    assert took < DOCKER_STOP_S, f"exited {took:.1f} s after SIGTERM\n{log}"
    assert statuses == [503, 503, 503, 200], log
    assert "force killing" not in log and "leaked" not in log, log
    assert len(folders) == 1 and not any(folder.exists() for folder in folders), folders


def test_body_over_the_limit_is_413_unread(batching, http):
    huge = helm_body("word " * 400_000)  # 2 MB, over the 1 MiB default
    response = http.post(f"{batching.url}/process", json=huge)
    assert response.status_code == 413 and "--max-body-bytes" in response.json()["detail"]

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(300):
            yield b"word " * 1000
        yield b'"}'

    response = http.post(f"{batching.url}/tokenize", content=chunked())
    assert response.status_code == 413
    assert http.get(f"{batching.url}/health").status_code == 200


def _half_body(url: str) -> socket.socket:
    """Headers that promise 100 bytes of body, and 10 of them."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /process HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    sock.sendall(head.encode() + b'{"prompt":')
    return sock


def test_a_body_that_never_ends_gets_408_and_one_that_is_dropped_is_logged_499(start_server, http):
    """Half-sent bodies had no time limit (3,000 of them held open), and a client gone mid-body was counted a 400."""
    server = start_server("--body-timeout-s", "2")
    stalled = _half_body(server.url)
    answer = _read_to_close(stalled)  # the connection is closed after the answer
    assert answer.startswith("HTTP/1.1 408") and "request body incomplete after 2 s (--body-timeout-s)" in answer
    assert "connection: close" in answer.lower()
    _half_body(server.url).close()
    log = wait_for_log(server, '"status": 499')
    assert '"status": 400' not in log and "Traceback" not in log, log


def test_headers_that_never_end_get_408_on_a_new_and_a_kept_alive_connection(start_server, http):
    """The body had a time limit, the headers none: a connection that never finished them was held open for good
    (60 of them still open after 40 s), as was one that sent nothing."""
    server = start_server("--body-timeout-s", "2")
    host, port = server.url.removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)))
    partial = socket.create_connection((host, int(port)))
    partial.sendall(f"POST /process HTTP/1.1\r\nHost: {host}\r\nContent-Le".encode())
    kept = socket.create_connection((host, int(port)))  # a first request served, then a second one left unfinished
    kept.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert _read_response(kept).startswith("HTTP/1.1 200")
    kept.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n".encode())
    started = time.monotonic()
    for sock in (silent, partial, kept):
        answer = _read_to_close(sock)
        assert answer.startswith("HTTP/1.1 408") and "connection: close" in answer.lower(), answer
    assert time.monotonic() - started < 15
    slow = socket.create_connection((host, int(port)))  # headers byte by byte, within the limit: served
    for byte in f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode():
        slow.sendall(bytes([byte]))
        time.sleep(0.01)
    assert _read_to_close(slow).startswith("HTTP/1.1 200")
    assert http.get(f"{server.url}/health").status_code == 200


@pytest.mark.slow
def test_a_half_sent_body_at_shutdown_gets_503_not_a_500(start_server):
    """uvicorn cut such a request off with a 500 and three tracebacks, 2 s after the grace period."""
    server = start_server("--shutdown-timeout-s", "1")
    stalled = _half_body(server.url)
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    answer = _read_to_close(stalled)
    server.process.wait(timeout=60)
    assert answer.startswith("HTTP/1.1 503") and "shutting down" in answer, answer
    log = server.log_tail(20_000)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


def _read_response(sock: socket.socket, seconds: float = 30) -> str:
    """One whole response on a kept-alive connection: its headers, then Content-Length bytes of body (which may come
    in a later packet than the headers)."""
    sock.settimeout(seconds)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(4096)
    return (head + b"\r\n\r\n" + body).decode()


def _read_to_close(sock: socket.socket, seconds: float = 30) -> str:
    """Everything the server sends until it closes the connection (headers and body may come apart)."""
    sock.settimeout(seconds)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received.decode()


def wait_for_log(server, text: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while text not in (log := server.log_tail(20_000)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return log
