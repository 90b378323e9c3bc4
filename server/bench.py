"""llmkit bench (make bench): serving benchmarks on the embedded default model; prints ratios, writes JSON.

Two HELM-shaped workloads: a ~400-token multiple-choice prompt (max_new_tokens 5, top_k_per_token 5, no stop
sequences) and a 128-token generation. For each: the end-to-end /process time over HTTP against the in-process
engine time (HTTP overhead), and against plain transformers `generate(output_scores=True,
return_dict_in_generate=True)` plus log_softmax over the scores. Also decode tokens/s against the memory-bandwidth
bound (measured read bandwidth / model bytes: each decoded token reads every weight once).

Concurrency: generated tokens/s with 1, 4 and 16 HELM-shaped clients (128-token greedy generations, prompts of
different lengths) over HTTP, against the same server with batching off (`--max-batch-size 1`) and against
transformers' batched `generate` on the same prompts at the same batch size.

Quick (`--quick`, for a big model on a GPU): the decode bound and the batching server's tokens/s at 1, 4 and 16
clients only, no baselines; the decode rate is then one HTTP client's.

Any model (`--model DIR`, e.g. one `llmkit random-model` wrote): the same measurements on it instead of the
embedded default.

Engines: the same concurrency measurement on each engine's server (`--engine builtin`, `--engine vllm`, both with
their default settings), side by side in one run: tokens/s per client count, each engine's N-clients / 1-client
scaling, vLLM / built-in, and the seconds each server took to answer /health. Without vLLM's venv the vLLM column
says how to install it (`make vllm-setup`) and the built-in results still print.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmkit.core.venvs import ToolVenvError
from llmkit.server.builtin import BuiltinEngine
from llmkit.server.launch import ServerProcess, ServerStartError
from llmkit.server.protocol import ProcessRequest, helm_body
from llmkit.server.settings import EngineName, ServerSettings
from llmkit.server.vllm_venv import vllm_venv

LOG = logging.getLogger(__name__)
NEVER_STOP = ["<<no such text>>"]


def _mc_prompt(target_tokens: int, engine: BuiltinEngine) -> str:
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


def _workloads(engine: BuiltinEngine) -> dict[str, ProcessRequest]:
    counting, choice = ", ".join(str(i) for i in range(1, 20)) + ",", _mc_prompt(400, engine)
    return {  # HELM's requests as its client sends them (greedy)
        "multiple_choice_400": ProcessRequest(**helm_body(choice, max_new_tokens=5, top_k_per_token=5)),
        "generation_128": ProcessRequest(**helm_body(counting, max_new_tokens=128, stop_sequences=NEVER_STOP)),
    }


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _generate_with_scores(engine: BuiltinEngine, inputs: dict, max_new_tokens: int, top_k: int) -> int:
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


def _transformers_baseline(engine: BuiltinEngine, request: ProcessRequest) -> None:
    ids = torch.tensor([engine.encode(request.prompt, special=True)], device=engine.device)
    _generate_with_scores(engine, {"input_ids": ids}, request.max_new_tokens, request.top_k_per_token)


def _read_bandwidth(device: str, megabytes: int = 1024) -> float:
    """Bytes/s read by a reduction over a large tensor on `device`: decoding reads the weights, it does not copy
    them."""
    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)

    def reduce() -> None:
        src.sum()
        if src.is_cuda:
            torch.cuda.synchronize()  # CUDA kernels run asynchronously: time the reduction, not its launch

    seconds = _median_seconds(reduce, 5)
    return src.numel() * 4 / seconds


CLIENTS = (1, 4, 16)
GENERATED = 128
ENGINES = tuple(EngineName)
ENGINE_LABELS = {EngineName.builtin: "built-in", EngineName.vllm: "vLLM"}
VLLM_STARTUP_TIMEOUT_S = 600  # vLLM's start on a 2-core CPU takes 60-90 s, longer when the machine is busy


def _generation_prompts(count: int) -> list[str]:
    """HELM-shaped generation prompts of different lengths that greedy decoding continues for 128 tokens."""
    return [", ".join(str(n) for n in range(i * 7, i * 7 + 8 + 6 * i)) + "," for i in range(count)]


def _client_prompts(clients: int) -> list[str]:
    """The prompts `clients` clients work through: the same for every engine and baseline, at least 4 so that one
    client's figure is not one prompt's (16 clients: 23 to 489 tokens)."""
    return _generation_prompts(max(clients, 4))


def _http_tokens_per_s(url: str, clients: int, prompts: list[str], generated: int = GENERATED) -> tuple[float, int]:
    """Generated tokens/s with `clients` concurrent HTTP clients working through `prompts`, and how many tokens."""
    bodies = [helm_body(p, max_new_tokens=generated, stop_sequences=NEVER_STOP) for p in prompts]
    with httpx.Client(timeout=3600, limits=httpx.Limits(max_connections=clients)) as http:
        post = lambda body: len(http.post(f"{url}/process", json=body).raise_for_status().json()["tokens"])  # noqa: E731
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(post, bodies))
    return tokens / (time.perf_counter() - start), tokens


def measure_server(
    args: Sequence[str] = (),
    clients: Sequence[int] = CLIENTS,
    generated: int = GENERATED,
    startup_timeout: float = 300,
) -> dict:
    """Start `python -m llmkit.server ARGS`, time it to a healthy /health, then measure generated tokens/s at each
    client count over HTTP; the server is stopped before this returns."""
    _step(f"a server ({' '.join(args) or 'its defaults'}) over HTTP at {', '.join(map(str, clients))} clients")
    started = time.perf_counter()
    with ServerProcess(args, startup_timeout=startup_timeout) as server:
        startup_s = time.perf_counter() - started
        # Warm-up: the longest prompt, a few tokens; one per server (a full generation per client count took a
        # minute of vLLM's time on a CPU).
        _http_tokens_per_s(server.url, 1, _client_prompts(max(clients))[-1:], generated=min(generated, 16))
        rows = []
        for count in clients:
            tokens_per_s, tokens = _http_tokens_per_s(server.url, count, _client_prompts(count), generated)
            rows.append({"clients": count, "tokens_per_s": tokens_per_s, "generated_tokens": tokens})
    info = server.info
    return {
        "engine": info["engine"],
        "version": info["engine_version"],
        "model": info["model"],
        "device": info["device"],
        "dtype": info["dtype"],
        "startup_s": startup_s,
        "max_new_tokens": generated,
        "clients": rows,
    }


def measure_vllm(args: Sequence[str] = (), clients: Sequence[int] = CLIENTS, generated: int = GENERATED) -> dict:
    """vLLM's server measured as `measure_server` does, or why it was not: its venv is missing (the fix is
    `make vllm-setup`; the bench does not install GBs on its own) or it did not start."""
    try:
        vllm_venv().require()
    except ToolVenvError as err:
        return {"skipped": f"{err} (or `llmkit vllm-setup`)"}
    try:
        return measure_server(["--engine", "vllm", *args], clients, generated, startup_timeout=VLLM_STARTUP_TIMEOUT_S)
    except ServerStartError as err:
        return {"skipped": f"vLLM's server did not start: {err}"}


def side_by_side(servers: dict[str, dict]) -> list[dict]:
    """One row per client count: each measured engine's tokens/s and its N-clients / 1-client scaling, and
    vLLM / built-in where both were measured (engines that were skipped are left out)."""
    measured = {name: server["clients"] for name, server in servers.items() if "clients" in server}
    counts = sorted({row["clients"] for rows in measured.values() for row in rows})
    table = []
    for count in counts:
        row: dict = {"clients": count}
        for name, rows in measured.items():
            by_clients = {r["clients"]: r["tokens_per_s"] for r in rows}
            row[f"{name}_tokens_per_s"] = by_clients[count]
            row[f"{name}_vs_one_client"] = by_clients[count] / by_clients[min(by_clients)]
        if {EngineName.builtin.value, EngineName.vllm.value} <= measured.keys():
            row["vllm_vs_builtin"] = row["vllm_tokens_per_s"] / row["builtin_tokens_per_s"]
        table.append(row)
    return table


def _generate_tokens_per_s(
    engine: BuiltinEngine, prompts: list[str], batch_size: int, generated: int = GENERATED
) -> float:
    """transformers' batched generate (left-padded) over `prompts` in batches of `batch_size`, on the engine's
    model thread."""
    tokens, seconds = 0, 0.0
    for first in range(0, len(prompts), batch_size):
        batch = engine.tokenizer(
            prompts[first : first + batch_size], return_tensors="pt", padding=True, padding_side="left"
        ).to(engine.device)
        start = time.perf_counter()
        positions = _generate_with_scores(engine, dict(batch), generated, top_k=1)
        seconds += time.perf_counter() - start
        tokens += batch.input_ids.shape[0] * positions
    return tokens / seconds


def concurrency(
    transformers: Sequence[float],
    args: Sequence[str] = (),
    clients: Sequence[int] = CLIENTS,
    generated: int = GENERATED,
) -> tuple[list[dict], dict]:
    """Tokens/s at 1, 4 and 16 clients: batching on, batching off, against transformers' batched generate (measured
    before, in-process: `transformers`, one figure per client count). Also returns the batching-on server's
    `measure_server` figures, the built-in column of the engines' table: measured last, so that it runs just
    before vLLM's and a busy machine's load changes less between the two.

    Args:
        args: the servers' model flags (`--model DIR`).
    """
    one_by_one = measure_server([*args, "--max-batch-size", "1"], clients, generated)
    batched = measure_server(args, clients, generated)
    rows = [
        {
            "clients": on["clients"],
            "batching_tokens_per_s": on["tokens_per_s"],
            "no_batching_tokens_per_s": off["tokens_per_s"],
            "transformers_tokens_per_s": baseline,
        }
        for on, off, baseline in zip(batched["clients"], one_by_one["clients"], transformers, strict=True)
    ]
    single = rows[0]["batching_tokens_per_s"]
    for row in rows:
        row["vs_one_client"] = row["batching_tokens_per_s"] / single
        row["vs_no_batching"] = row["batching_tokens_per_s"] / row["no_batching_tokens_per_s"]
        row["vs_transformers"] = row["batching_tokens_per_s"] / row["transformers_tokens_per_s"]
    return rows, batched


def run(
    out_dir: Path,
    repeats: int = 5,
    engines: Sequence[str] = ENGINES,
    *,
    model: str | None = None,
    quick: bool = False,
    clients: Sequence[int] = CLIENTS,
    generated: int = GENERATED,
) -> dict:
    """Measure the chosen engines: the built-in one in-process, over HTTP, against plain transformers and under
    concurrency; then each engine's server side by side. Print, write out_dir/server.json, return the results.

    Args:
        model: hub id or folder served instead of the embedded default.
        quick: the built-in engine's decode bound and batching server only (see the module's docstring).
        clients, generated: the client counts measured, and the tokens each request generates.
    """
    chosen = [EngineName(name) for name in dict.fromkeys(engines)]
    model_args = _model_flags(model)
    results: dict = {"quick": quick, "max_new_tokens": generated}
    servers: dict[str, dict] = {}
    if EngineName.builtin in chosen:
        servers[EngineName.builtin.value] = _builtin(results, repeats, model, quick, clients, generated)
        _free_memory()  # for vLLM's share of a GPU
    if EngineName.vllm in chosen:
        servers[EngineName.vllm.value] = measure_vllm(model_args, clients, generated)
    measured = [server for server in servers.values() if "model" in server]
    results.setdefault("model", measured[0]["model"] if measured else None)
    results.setdefault("device", measured[0]["device"] if measured else None)
    results["engines"] = {"servers": servers, "side_by_side": side_by_side(servers)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "server.json").write_text(json.dumps(results, indent=2))
    console = Console()
    if "decode" in results:
        _print_builtin(results, console)
    print_engines(results, console)
    return results


def _model_flags(model: str | None) -> list[str]:
    """The servers' flags that serve `model` (none: the embedded default)."""
    return ["--model", model] if model else []


def _step(text: str) -> None:
    """A line on stderr as each part starts: the stage runs for minutes, and its tables print at the end."""
    Console(stderr=True).print(f"serving: {text}", style="dim", markup=False, highlight=False)


def _free_memory() -> None:
    """Return a closed in-process engine's memory (on a GPU: to the server process measured next)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _decode_bound(tokens_per_s: float, model_bytes: int, bandwidth: float, measured_as: str) -> dict:
    bound = bandwidth / model_bytes
    return {
        "tokens_per_s": tokens_per_s,
        "measured_as": measured_as,
        "bandwidth_bytes_per_s": bandwidth,
        "model_bytes": model_bytes,
        "bound_tokens_per_s": bound,
        "fraction_of_bound": tokens_per_s / bound,
    }


def _builtin(
    results: dict,
    repeats: int,
    model: str | None = None,
    quick: bool = False,
    clients: Sequence[int] = CLIENTS,
    generated: int = GENERATED,
) -> dict:
    """The built-in engine's workloads, decode bound and concurrency, into `results`; returns its server's
    `measure_server` figures (batching on, the default settings) for the side-by-side table."""
    model_args = _model_flags(model)
    _step(f"the built-in engine in-process on {model or 'the default model'}")
    engine = BuiltinEngine.load(ServerSettings(model=model))
    try:
        results.update({"model": engine.loaded.source.model_id, "device": engine.loaded.device})
        model_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
        bandwidth = engine.scheduler.call(_read_bandwidth, engine.device)
        if not quick:
            workloads = _workloads(engine)
            results["workloads"] = {name: _in_process(engine, r, repeats) for name, r in workloads.items()}
            transformers = [
                engine.scheduler.call(_generate_tokens_per_s, engine, _client_prompts(count), count, generated)
                for count in clients
            ]
    finally:
        # One copy of the weights at a time: the servers measured below load their own, and a 7B model twice would
        # not fit a 24 GB card. On Ctrl-C too: a model thread left inside torch as the interpreter exits can abort it
        # ("terminate called without an active exception").
        engine.close()
    del engine
    _free_memory()
    if quick:
        batched = measure_server(model_args, clients, generated)
        one_client = batched["clients"][0]["tokens_per_s"]
        results["decode"] = _decode_bound(one_client, model_bytes, bandwidth, "one HTTP client's tokens/s")
        return batched
    _step("the workloads over HTTP")
    with ServerProcess(model_args) as server, httpx.Client(timeout=600) as http:
        for name, request in workloads.items():
            body = request.model_dump(exclude_none=True)
            post = lambda b=body: http.post(f"{server.url}/process", json=b).raise_for_status()  # noqa: E731
            results["workloads"][name]["http_s"] = _median_seconds(post, repeats)
    for row in results["workloads"].values():
        row["http_overhead"] = row["http_s"] / row["engine_s"] - 1
        row["speedup_vs_transformers"] = row["transformers_generate_s"] / row["engine_s"]
    generation = results["workloads"]["generation_128"]
    results["decode"] = _decode_bound(
        generation["completion_tokens"] / generation["engine_s"], model_bytes, bandwidth, "generation_128, in-process"
    )
    results["concurrency"], batched = concurrency(transformers, model_args, clients, generated)
    return batched


def _in_process(engine: BuiltinEngine, request: ProcessRequest, repeats: int) -> dict:
    """A workload's sizes, and its median seconds in the engine and in plain transformers' generate."""
    completion = engine.process(request)
    return {
        "prompt_tokens": len(engine.encode(request.prompt, special=True)),
        "completion_tokens": len(completion.tokens),
        "engine_s": _median_seconds(lambda: engine.process(request), repeats),
        "transformers_generate_s": _median_seconds(
            lambda: engine.scheduler.call(_transformers_baseline, engine, request), repeats
        ),
    }


def _print_builtin(results: dict, console: Console) -> None:
    if "workloads" in results:
        _print_workloads(results, console)
    decode = results["decode"]
    console.print(
        f"Decode ({decode['measured_as']}): {decode['tokens_per_s']:.1f} tokens/s; memory-bandwidth bound "
        f"{decode['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s / {decode['model_bytes'] / 1e6:.0f} MB = "
        f"{decode['bound_tokens_per_s']:.1f} tokens/s ({decode['fraction_of_bound']:.0%} of the bound)"
    )
    if "concurrency" in results:
        _print_concurrency(results, console)


def _print_workloads(results: dict, console: Console) -> None:
    table = Table(title=escape(f"Serving {results['model']} on {results['device']} (median seconds)"))
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
    console.print(table)


def _print_concurrency(results: dict, console: Console) -> None:
    table = Table(
        title=f"Concurrent HELM-shaped clients, {results['max_new_tokens']}-token greedy generations "
        "(generated tokens/s)"
    )
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


def print_engines(results: dict, console: Console) -> None:
    """The engines side by side: tokens/s and scaling per client count, vLLM / built-in, each server's start."""
    engines = results["engines"]
    servers = {EngineName(name): server for name, server in engines["servers"].items()}
    measured = [name for name, server in servers.items() if "clients" in server]
    if measured:
        generated = servers[measured[0]]["max_new_tokens"]
        table = Table(
            title=f"{'Engines side by side' if len(measured) > 1 else f'The {measured[0].value} engine'}: "
            f"{escape(results['model'])}, {generated}-token greedy generations from concurrent "
            "HELM-shaped clients over HTTP (generated tokens/s)"
        )
        table.add_column("clients")
        for name in measured:
            table.add_column(ENGINE_LABELS[name])
            table.add_column(f"{ENGINE_LABELS[name]} vs 1 client")
        both = "vllm_vs_builtin" in engines["side_by_side"][0]
        if both:
            table.add_column("vLLM / built-in")
        for row in engines["side_by_side"]:
            cells = [str(row["clients"])]
            for name in measured:
                cells += [f"{row[f'{name.value}_tokens_per_s']:.1f}", f"{row[f'{name.value}_vs_one_client']:.2f}x"]
            if both:
                cells.append(f"{row['vllm_vs_builtin']:.2f}x")
            table.add_row(*cells)
        console.print(table)
    for name, server in servers.items():
        label = ENGINE_LABELS[name]
        if "skipped" in server:
            console.print(Text(f"{label} not measured: {server['skipped']}", style="yellow"))  # no markup: a log
        else:
            console.print(
                escape(
                    f"{label} ({server['version']}, {server['device']}, {server['dtype']}): /health answered "
                    f"{server['startup_s']:.0f} s after start"
                ),
                highlight=False,
            )
