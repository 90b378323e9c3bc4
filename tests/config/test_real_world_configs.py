"""Issue #14: configs as real users write them must validate offline.

Every YAML in tests/config/real_world/ (the project's own corpus, modelled on axolotl's example configs and the 2023
challenge teams' configs; each file's first line, `# pattern:`, names what it reproduces) goes through
`llmkit validate FILE`, all of them in ONE child process (the CLI's import is the slow part) with the hub switched
off and an empty HF cache, as on a fresh machine without network. Each run must end in a plan (exit 0; "plan
unknown: no config.json" for a base without a shipped config.json counts) or in a ConfigError that names a key,
never in a traceback; at least 90% must plan.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmkit.config.schema import load_config

CORPUS = Path(__file__).parent / "real_world"
FILES = sorted(CORPUS.glob("*.yml"))
REQUIRED_SHARE = 0.90

# Runs in the child: each file through the real typer app, exactly what `llmkit validate FILE` runs, with any
# exception that escapes the command kept as its formatted traceback instead of being swallowed by the runner.
DRIVER = """
import json, sys, traceback
from typer.testing import CliRunner
from transformers.utils import logging as transformers_logging

from llmkit.cli import _logging, app

# transformers binds its log handler to whatever sys.stderr is when it first logs, and the CLI's logging.basicConfig
# binds the root logger's; inside the runner that is the first invocation's capture stream, closed afterwards, and
# every later warning would print a logging traceback (transformers' records reach the root logger too where CI=true
# is set, as on the CI machine). Bind both to this process's own stderr first, as in a real `llmkit validate`.
transformers_logging.get_logger()
_logging()
runner = CliRunner()
results = []
for path in sys.argv[1:]:
    result = runner.invoke(app, ["validate", path], prog_name="llmkit")
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = "".join(traceback.format_exception(*result.exc_info))
    results.append({"file": path, "exit_code": result.exit_code, "output": result.output, "traceback": crash})
print(json.dumps(results))
"""

# A ConfigError prints "Invalid config <file>:" and then one "  - key.path: what is wrong" line per problem; a key
# refused for its value is said with the value, "  - key=value: why" (config.keys.REFUSED_KEYS), and two keys that
# conflict as "  - key and other: why".
PROBLEM_LINE = re.compile(r"^\s*- (?P<key>[A-Za-z_][\w.\[\]]*)(?: and [A-Za-z_][\w.\[\]]*)?\s*[:=]", re.MULTILINE)


@dataclass
class Run:
    file: str
    exit_code: int
    output: str
    traceback: str | None

    @property
    def name(self) -> str:
        return Path(self.file).name

    @property
    def crashed(self) -> bool:
        return self.traceback is not None or "Traceback (most recent call last)" in self.output

    @property
    def names_a_key(self) -> bool:
        return "Invalid config" in self.output and PROBLEM_LINE.search(self.output) is not None

    @property
    def result(self) -> str:
        if self.crashed:
            return "TRACEBACK"
        if self.exit_code == 0:
            return "plan unknown" if "no config.json" in self.output else "plan"
        return "error" if self.names_a_key else f"exit {self.exit_code}, no key named"

    @property
    def first_error_line(self) -> str:
        """What the lead needs to see of a failure: the first problem line, else the last line of the traceback."""
        if self.exit_code == 0 and not self.crashed:
            return ""
        found = PROBLEM_LINE.search(self.output)
        if found:
            return self.output[found.start() :].splitlines()[0].strip()
        text = self.traceback or self.output
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        frames = [line for line in lines if line.startswith('File "')]
        where = f" (at {frames[-1]})" if frames else ""
        return (lines[-1] + where) if lines else "(no output)"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Run]:
    home = tmp_path_factory.mktemp("empty_hf_home")  # no cached config.json or tokenizer may help
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(home),
        "COLUMNS": "200",  # rich wraps the plan at the terminal width; keep problem lines whole
    }
    child = subprocess.run(
        [sys.executable, "-c", DRIVER, *map(str, FILES)],
        cwd=home,  # relative output_dir / dataset_prepared_path values must not land in the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert child.returncode == 0, f"the validate driver itself failed:\n{child.stderr[-4000:]}"
    runs = [Run(**entry) for entry in json.loads(child.stdout.strip().splitlines()[-1])]
    print(_table(runs))  # noqa: T201 (the table of runs, shown with -s)
    return runs


def _table(runs: list[Run]) -> str:
    width = max(len(run.name) for run in runs)
    lines = [f"{'file':<{width}}  {'result':<14}  first error line", "-" * (width + 60)]
    lines += [f"{run.name:<{width}}  {run.result:<14}  {run.first_error_line}" for run in runs]
    planned = sum(run.exit_code == 0 and not run.crashed for run in runs)
    lines.append(f"{planned}/{len(runs)} validate ({planned / len(runs):.0%}; required {REQUIRED_SHARE:.0%})")
    return "\n".join(lines)


def test_corpus_is_what_the_survey_describes():
    assert len(FILES) >= 40
    for path in FILES:
        assert path.read_text().startswith("# pattern: "), f"{path.name}: first line must name the real pattern"
    assert (CORPUS / "mistral-7b-4090-winner-recipe.yml").is_file()


@pytest.mark.timeout(600)
def test_no_run_ends_in_a_traceback_and_every_failure_names_a_key(runs):
    crashed = [f"{run.name}: {run.first_error_line}" for run in runs if run.crashed]
    assert not crashed, "validate crashed instead of reporting a ConfigError:\n" + "\n".join(crashed)
    failed = [run for run in runs if run.exit_code != 0]
    unnamed = [f"{run.name}: {run.output.strip()[-300:]}" for run in failed if not run.names_a_key]
    assert not unnamed, "failures that do not name a key:\n" + "\n".join(unnamed)


@pytest.mark.timeout(600)
def test_at_least_90_percent_of_real_world_configs_validate(runs):
    planned = [run for run in runs if run.exit_code == 0 and not run.crashed]
    share = len(planned) / len(runs)
    assert share >= REQUIRED_SHARE, f"only {share:.0%} validate offline:\n{_table(runs)}"


@pytest.mark.timeout(600)
def test_a_quantized_moe_plan_says_its_fused_experts_stay_unquantized(runs):
    mixtral = next(run for run in runs if run.name == "mixtral-8x7b-qlora.yml")
    assert "MoE experts" in mixtral.output and "45.1B parameters held as fused 3-D tensors" in mixtral.output
    dense = next(run for run in runs if run.name == "mistral-7b-qlora-alpaca.yml")
    assert "MoE experts" not in dense.output


@pytest.mark.timeout(600)
def test_newer_axolotl_keys_in_the_corpus_are_named_for_what_they_do(runs):
    """Keys of axolotl's 2025-26 examples: each ignored or refused by name, none said to be an unknown key (a typo)."""
    said = {run.name: run.output for run in runs}
    assert "fused_attn_kernel=True: not implemented here" in said["qwen3-8b-lora-fused-attn-kernel.yml"]
    assert "base_model_ignore_patterns='pytorch*': not implemented here" in said["pythia-12b-full-float16.yml"]
    assert (
        "DFT loss (each target token's cross-entropy times its probability)"
        in said["gemma3-1b-fft-dynamic-finetuning.yml"]
    )
    assert "adapter: qalora (axolotl's QA-LoRA adapter" in said["tinyllama-1.1b-qalora.yml"]
    assert "llmcompressor={'recipe'" in said["llama3.1-8b-sparse-llmcompressor.yml"]
    newer = [name for name in said if name.startswith(("qwen3-8b", "pythia-12b", "gemma3-1b", "tinyllama-1.1b-qa"))]
    assert len(newer) == 5 and not [name for name in newer if "unknown key" in said[name]]


@pytest.mark.timeout(600)
def test_the_outside_checks_configs_end_as_axolotl_reads_them(runs):
    """Configs a later outside check ran (axolotl's examples, a DPO tutorial, users' design docs and a web UI): each
    refusal says what to write instead, or what axolotl does; the DPO prompt that holds the chosen answer plans."""
    said = {run.name: " ".join(run.output.split()) for run in runs}  # rich wraps warnings at the terminal width
    assert (
        "datasets[0].train_on_eos: Input should be 'turn', 'all', 'last' or 'none', not true: write turn"
        in (said["qwen2.5-coder-7b-multiagent-mix.yml"])
    )
    assert "the adapter's own included" in said["gemma3-1b-it-qlora-slimorca.yml"]
    assert (
        "datasets: Input should be a valid list, not a mapping: write `- ` before each entry (`- path: ...`"
        in (said["tlite-lora-datasets-as-mapping.yml"])
    )
    assert "adapter: qlora requires load_in_4bit: true" in said["qwen2.5-7b-toolace-qlora-no4bit.yml"]
    # chat_template: mistral_v7_tekken is checked against the base's own template once it is here: offline, it plans
    mistral_small = next(run for run in runs if run.name == "mistral-small-3.1-24b-lora-vision.yml")
    assert mistral_small.result == "plan unknown" and "chat_template" not in said[mistral_small.name]
    dpo = next(run for run in runs if run.name == "dpo-sharegpt-chosen-chatml.yml")
    assert dpo.result == "plan"  # its warning goes to the driver's stderr, not the run's output: tests/train has it


@pytest.mark.timeout(600)
def test_real_axolotl_keys_of_users_configs_are_said_for_what_they_do(runs):
    """Users' configs an eighth outside check ran: chat_template: alpaca was refused as unknown, rl_adapter_ref_model
    and liger_cross_entropy were unknown keys (a typo?), save_safetensors: false was "off, not implemented" and true
    an ignored key, though safetensors is what is written."""
    said = {run.name: " ".join(run.output.split()) for run in runs}  # rich wraps the plan's cells
    added = {
        "phi3.5-mini-lora-4bit-alpaca-template.yml": "plan unknown",
        "qwen3-32b-fft-fsdp-liger.yml": "plan unknown",
        "qwen2-1.5b-dpo-qlora-fsdp-adapter-ref.yml": "plan unknown",
        "mistral-7b-qlora-alpaca-data-seed.yml": "plan",
    }
    assert {run.name: run.result for run in runs if run.name in added} == added
    fsdp = said["qwen3-32b-fft-fsdp-liger.yml"]
    assert "save_safetensors=False: the model is saved as safetensors only here" in fsdp and "unknown key" not in fsdp
    dpo = said["qwen2-1.5b-dpo-qlora-fsdp-adapter-ref.yml"]
    assert "rl_adapter_ref_model=False: an adapter's reference here is the model before training" in dpo
    assert "unknown key" not in dpo and "save_safetensors" not in said["mistral-7b-qlora-alpaca-data-seed.yml"]


@pytest.mark.timeout(600)
def test_a_named_attention_beside_a_boolean_attention_key_wins_as_in_axolotl(runs):
    """Every gpt-oss config of axolotl's examples sets flash_attention: true beside attn_implementation: a hub
    kernel; axolotl's model loader takes the named one, and this was refused as attention set more than one way."""
    run = next(run for run in runs if run.name == "gpt-oss-120b-fft-hub-kernel-attention.yml")
    said = " ".join(run.output.split())  # rich wraps the plan's cells
    assert run.result == "plan unknown", said
    assert (
        "flash_attention: true is ignored: attn_implementation: kernels-community/vllm-flash-attn3 names the "
        "attention, as in axolotl" in said
    )


@pytest.mark.timeout(600)
def test_a_linearized_llama4_checkpoint_is_refused_for_what_axolotl_patches(runs):
    """axolotl's Llama 4 example loads a linearized checkpoint through a patch llama4_linearized_experts turns on;
    the key was ignored, as if the base loaded without it."""
    run = next(run for run in runs if run.name == "llama4-scout-qlora-linearized-flex.yml")
    said = " ".join(run.output.split())  # rich wraps the problem lines
    assert run.result == "error", said
    assert "llama4_linearized_experts=True: Llama 4 with linearized experts is not implemented" in said


@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_a_hub_base_model_offline_is_one_line_not_four_tracebacks(command, tmp_path):
    """Offline, `preprocess` and `train` on a config whose base model is not in the cache printed 400 lines."""
    config = tmp_path / "hub.yml"
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n")
    config.write_text(
        f"base_model: someone/never-seen-7b\ndatasets:\n  - path: {data}\n    type: alpaca\n"
        f"output_dir: {tmp_path / 'out'}\nadapter: lora\nlora_target_linear: true\nlearning_rate: 0.0002\n"
        "micro_batch_size: 1\nnum_epochs: 1\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    llmkit = str(Path(sys.executable).parent / "llmkit")
    result = subprocess.run([llmkit, command, str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        "Error: There is no folder someone/never-seen-7b here, and the hub cannot be reached: Cannot download "
        "someone/never-seen-7b from the Hugging Face hub"
    ), last_line


def test_a_missing_folder_given_as_model_is_named_as_a_folder(tmp_path):
    """`serve --model nonexist_dir` (a mistyped folder) was blamed on the network alone, over two lines."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    llmkit = str(Path(sys.executable).parent / "llmkit")
    command = [llmkit, "serve", "--model", "nonexist_dir"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    said = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert said[-1].startswith("Error: cannot serve: There is no folder nonexist_dir here, and the hub cannot be")


@pytest.mark.timeout(600)
def test_fastchats_llama_3_is_the_llama3_template(runs):
    """A user's Tagengo config writes sharegpt's conversation: llama-3, FastChat's name, which axolotl's sharegpt
    strategy took from FastChat: it renders with llama3, the same text. It was refused (did you mean llama3?)."""
    run = next(run for run in runs if run.name == "llama3-8b-instruct-fft-sharegpt-llama3-tagengo.yml")
    assert run.result in ("plan", "plan unknown"), run.first_error_line
    [(_, _, spec)] = load_config(CORPUS / run.name).dataset_entries()
    assert spec.template_choice(None, None) == ("llama3", None, "conversation")
