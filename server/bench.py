"""llmkit bench (make bench): serving benchmarks on the embedded default model; prints ratios, writes JSON.

Two HELM-shaped workloads: a ~400-token multiple-choice prompt (max_new_tokens 5, top_k_per_token 5, no stop
sequences) and a 128-token generation. For each: the end-to-end /process time over HTTP against the in-process
engine time (HTTP overhead), and against plain transformers `generate(output_scores=True,
return_dict_in_generate=True)` plus log_softmax over the scores. Also decode tokens/s against the memory-bandwidth
bound (measured read bandwidth / model bytes: each decoded token reads every weight once).

Concurrency: generated tokens/s with 1, 4 and 16 HELM-shaped clients (128-token greedy generations, prompts of
different lengths) over HTTP, against the same server with batching off (`--max-batch-size 1`) and against
transformers' batched `generate` on the same prompts at the same batch size.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import statistics
import time
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

from llmkit.server.engine import Engine
from llmkit.server.launch import ServerProcess
from llmkit.server.protocol import ProcessRequest, helm_body
from llmkit.server.settings import ServerSettings

LOG = logging.getLogger(__name__)
NEVER_STOP = ["<<no such text>>"]


def _mc_prompt(target_tokens: int, engine: Engine) -> str:
    """A HELM multiple-choice prompt (instructions, in-context examples, the question) of about target_tokens."""
    head = "The following are multiple choice questions (with answers) about arithmetic.\n\n"
    shots, n = [], 0
    while True:
        a, b = 3 + n * 7 % 41, 5 + n * 11 % 37
        options = f"A. {a + b}\nB. {a + b + 2}\nC. {a + b - 3}\nD. {a * b}"
        shots.append(f"Question: What is {a} + {b}?\n{options}\nAnswer: A\n")
        prompt = head + "\n".join(shots) + "\nQuestion: What is 12 + 30?\nA. 44\nB. 42\nC. 39\nD. 360\nAnswer:"
        if len(engine.encode(prompt)) >= target_tokens:
            return prompt
        n += 1


def _workloads(engine: Engine) -> dict[str, ProcessRequest]:
    counting = ", ".join(str(i) for i in range(1, 20)) + ","
    common = {"temperature": 1e-7, "num_return_sequences": 1, "top_p": 1.0, "echo_prompt": False}
    return {
        "multiple_choice_400": ProcessRequest(
            prompt=_mc_prompt(400, engine), max_new_tokens=5, top_k_per_token=5, stop_sequences=[], **common
        ),
        "generation_128": ProcessRequest(
            prompt=counting, max_new_tokens=128, top_k_per_token=1, stop_sequences=NEVER_STOP, **common
        ),
    }


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _generate_with_scores(engine: Engine, inputs: dict, max_new_tokens: int, top_k: int) -> int:
    """transformers' generate with each step's scores turned into logprobs and top-k, as the server computes them;
    returns how many positions it generated."""
    with torch.inference_mode():
        out = engine.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=engine.tokenizer.eos_token_id,
        )
        for scores in out.scores:
            torch.topk(torch.log_softmax(scores.float(), dim=-1), max(top_k, 1))
    return len(out.scores)


def _transformers_baseline(engine: Engine, request: ProcessRequest) -> None:
    ids = torch.tensor([engine.encode(request.prompt, special=True)], device=engine.device)
    _generate_with_scores(engine, {"input_ids": ids}, request.max_new_tokens, request.top_k_per_token)


def _read_bandwidth(megabytes: int = 1024) -> float:
    """Bytes/s read by a reduction over a large tensor: decoding reads the weights, it does not copy them."""
    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    seconds = _median_seconds(lambda: src.sum(), 5)
    return src.numel() * 4 / seconds


CLIENTS = (1, 4, 16)
GENERATED = 128


def _generation_prompts(count: int) -> list[str]:
    """HELM-shaped generation prompts of different lengths that greedy decoding continues for 128 tokens."""
    return [", ".join(str(n) for n in range(i * 7, i * 7 + 8 + 6 * i)) + "," for i in range(count)]


def _http_tokens_per_s(url: str, clients: int, prompts: list[str]) -> float:
    """Generated tokens/s with `clients` concurrent HTTP clients working through `prompts`."""
    bodies = [helm_body(p, max_new_tokens=GENERATED, stop_sequences=NEVER_STOP) for p in prompts]
    with httpx.Client(timeout=3600, limits=httpx.Limits(max_connections=clients)) as http:
        post = lambda body: len(http.post(f"{url}/process", json=body).raise_for_status().json()["tokens"])  # noqa: E731
        post(bodies[0])  # warm-up
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(post, bodies))
    return tokens / (time.perf_counter() - start)


def _generate_tokens_per_s(engine: Engine, prompts: list[str], batch_size: int) -> float:
    """transformers' batched generate (left-padded) over `prompts` in batches of `batch_size`, on the engine's
    model thread."""
    tokens, seconds = 0, 0.0
    for first in range(0, len(prompts), batch_size):
        batch = engine.tokenizer(
            prompts[first : first + batch_size], return_tensors="pt", padding=True, padding_side="left"
        ).to(engine.device)
        start = time.perf_counter()
        positions = _generate_with_scores(engine, dict(batch), GENERATED, top_k=1)
        seconds += time.perf_counter() - start
        tokens += batch.input_ids.shape[0] * positions
    return tokens / seconds


def concurrency(engine: Engine) -> list[dict]:
    """Tokens/s at 1, 4 and 16 clients: batching on, batching off, transformers' batched generate."""
    rows = []
    with ServerProcess() as batched, ServerProcess(["--max-batch-size", "1"]) as one_by_one:
        for clients in CLIENTS:
            prompts = _generation_prompts(max(clients, 4))  # the same prompts for all three (16: 23 to 489 tokens)
            rows.append(
                {
                    "clients": clients,
                    "batching_tokens_per_s": _http_tokens_per_s(batched.url, clients, prompts),
                    "no_batching_tokens_per_s": _http_tokens_per_s(one_by_one.url, clients, prompts),
                    "transformers_tokens_per_s": engine.scheduler.call(
                        _generate_tokens_per_s, engine, prompts, clients
                    ),
                }
            )
    single = rows[0]["batching_tokens_per_s"]
    for row in rows:
        row["vs_one_client"] = row["batching_tokens_per_s"] / single
        row["vs_no_batching"] = row["batching_tokens_per_s"] / row["no_batching_tokens_per_s"]
        row["vs_transformers"] = row["batching_tokens_per_s"] / row["transformers_tokens_per_s"]
    return rows


def run(out_dir: Path, repeats: int = 5) -> dict:
    """Measure both workloads in-process, over HTTP and with plain transformers; return the results."""
    settings = ServerSettings()
    engine = Engine.load(settings)
    workloads = _workloads(engine)
    results: dict = {"model": engine.loaded.source.model_id, "device": engine.loaded.device, "workloads": {}}
    for name, request in workloads.items():
        completion = engine.process(request)
        results["workloads"][name] = {
            "prompt_tokens": len(engine.encode(request.prompt, special=True)),
            "completion_tokens": len(completion.tokens),
            "engine_s": _median_seconds(lambda r=request: engine.process(r), repeats),
            "transformers_generate_s": _median_seconds(
                lambda r=request: engine.scheduler.call(_transformers_baseline, engine, r), repeats
            ),
        }
    with ServerProcess() as server, httpx.Client(timeout=600) as http:
        for name, request in workloads.items():
            body = request.model_dump(exclude_none=True)
            post = lambda b=body: http.post(f"{server.url}/process", json=b).raise_for_status()  # noqa: E731
            results["workloads"][name]["http_s"] = _median_seconds(post, repeats)
    for row in results["workloads"].values():
        row["http_overhead"] = row["http_s"] / row["engine_s"] - 1
        row["speedup_vs_transformers"] = row["transformers_generate_s"] / row["engine_s"]
    generation = results["workloads"]["generation_128"]
    model_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    bandwidth = engine.scheduler.call(_read_bandwidth)
    results["decode"] = {
        "tokens_per_s": generation["completion_tokens"] / generation["engine_s"],
        "bandwidth_bytes_per_s": bandwidth,
        "model_bytes": model_bytes,
        "bound_tokens_per_s": bandwidth / model_bytes,
    }
    decode = results["decode"]
    decode["fraction_of_bound"] = decode["tokens_per_s"] / decode["bound_tokens_per_s"]
    results["concurrency"] = concurrency(engine)
    engine.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "server.json").write_text(json.dumps(results, indent=2))
    _print(results)
    return results


def _print(results: dict) -> None:
    table = Table(title=f"Serving {results['model']} on {results['device']} (median seconds)")
    for column in [
        "workload",
        "tokens in/out",
        "engine",
        "HTTP",
        "HTTP overhead (≤10%)",
        "transformers",
        "engine speed-up vs transformers",
    ]:
        table.add_column(column)
    for name, row in results["workloads"].items():
        table.add_row(
            name,
            f"{row['prompt_tokens']}/{row['completion_tokens']}",
            f"{row['engine_s']:.3f}",
            f"{row['http_s']:.3f}",
            f"{row['http_overhead']:+.1%}",
            f"{row['transformers_generate_s']:.3f}",
            f"{row['speedup_vs_transformers']:.2f}x",
        )
    console = Console()
    console.print(table)
    decode = results["decode"]
    console.print(
        f"Decode: {decode['tokens_per_s']:.1f} tokens/s; memory-bandwidth bound "
        f"{decode['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s / {decode['model_bytes'] / 1e6:.0f} MB = "
        f"{decode['bound_tokens_per_s']:.1f} tokens/s ({decode['fraction_of_bound']:.0%} of the bound)"
    )
    table = Table(title=f"Concurrent HELM-shaped clients, {GENERATED}-token greedy generations (generated tokens/s)")
    for column in ["clients", "batching", "vs 1 client", "batching off", "vs off", "transformers batch", "vs it"]:
        table.add_column(column)
    for row in results["concurrency"]:
        table.add_row(
            str(row["clients"]),
            f"{row['batching_tokens_per_s']:.1f}",
            f"{row['vs_one_client']:.2f}x",
            f"{row['no_batching_tokens_per_s']:.1f}",
            f"{row['vs_no_batching']:.2f}x",
            f"{row['transformers_tokens_per_s']:.1f}",
            f"{row['vs_transformers']:.2f}x",
        )
    console.print(table)
