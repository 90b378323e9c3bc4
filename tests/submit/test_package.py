"""build_submission: the zip's layout, its Dockerfile per track, determinism, numbering, bundling."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from llmkit.core.challenge import TRACKS, Loading, Track
from llmkit.core.models import DEFAULT_MODEL_ID
from llmkit.core.project import pinned_version
from llmkit.core.shapes import ModelConfigNotFound
from llmkit.server.settings import EngineName
from llmkit.submit.archive import write_zip
from llmkit.submit.dockerfile import exec_form, final_stage, last, parse_dockerfile
from llmkit.submit.image import render_dockerfile
from llmkit.submit.package import build_submission
from llmkit.submit.sources import SubmissionError, Weights, hub_or_local
from llmkit.submit.verify import hadolint, verify_submission


@pytest.mark.parametrize("track", ["4090", "A100"])
def test_default_model_zip_per_track(default_zips, track):
    zip_path = default_zips[track]
    assert zip_path.name == f"{track}_submission_1.zip" and zip_path.parent.name == f"{track}_track"
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        dockerfile = archive.read("Dockerfile").decode()
        manifest = json.loads(archive.read("manifest.json"))
        requirements = archive.read("requirements.txt").decode()
    assert {"Dockerfile", ".dockerignore", "manifest.json", "requirements.txt", "llmkit/server/__main__.py"} <= set(
        names
    )
    assert [n for n in names if "dockerfile" in n.lower()] == ["Dockerfile"]
    assert (
        "server/bench.py" not in names and "server/launch.py" not in names
    )  # not imported by `python -m llmkit.server`
    assert not any(n.endswith(".safetensors") for n in names)
    assert f"FROM {TRACKS[Track(track)].cuda_base_image}" in dockerfile
    assert f"torch=={pinned_version('torch')}" in requirements
    command = exec_form(last(final_stage(parse_dockerfile(dockerfile)), "CMD"))
    assert command[1:7] == ["-m", "llmkit.server", "--host", "0.0.0.0", "--port", "80"]
    assert command[command.index("--model") + 1] == DEFAULT_MODEL_ID and "--revision" in command
    assert manifest["track"] == track and manifest["model"]["id"] == DEFAULT_MODEL_ID
    assert manifest["loading"] == "bf16" and manifest["estimated_gpu_memory"]["total_gib"] < 3
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert verify_submission(zip_path) == []
    unpacked = zip_path.with_suffix("")
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()) == sorted(names)


def test_same_inputs_give_byte_identical_zips(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    args = {"model": DEFAULT_MODEL_ID, "revision": "main", "number": 1}
    first = build_submission("4090", out_root=tmp_path / "a", **args).read_bytes()
    second = build_submission("4090", out_root=tmp_path / "b", **args)
    assert second.read_bytes() == first
    again = build_submission("4090", out_root=tmp_path / "b", **args)  # N=1 again replaces it, same bytes
    assert again == second and again.read_bytes() == first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the only input the timestamps come from
    assert build_submission("4090", out_root=tmp_path / "c", **args).read_bytes() != first


def test_numbers_count_up_and_the_loading_can_be_chosen(tmp_path, caplog):
    first = build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path)
    second = build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path, loading="nf4")
    assert (first.name, second.name) == ("A100_submission_1.zip", "A100_submission_2.zip")
    with zipfile.ZipFile(second) as archive:
        assert '"--quantization", "nf4"' in archive.read("Dockerfile").decode()
    assert sorted(p.name for p in (tmp_path / "A100_track").iterdir()) == [
        "A100_submission_1",
        "A100_submission_1.zip",
        "A100_submission_2",
        "A100_submission_2.zip",
    ]  # no temporary folder left behind
    # The same submission again without N: kept under its number, not copied to a third (3 per track count).
    assert build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path) == first
    assert build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path, number=3).name == (
        "A100_submission_3.zip"  # unless N says so
    )
    warning = "the challenge accepts at most 3 per track"
    assert warning not in caplog.text  # 3 is allowed
    build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path, number=4)
    assert f"Submission 4: {warning}" in caplog.text


def test_zip_entries_are_sorted_whatever_order_the_files_were_made_in(tmp_path):
    folder = tmp_path / "folder"
    names = [f"{letter}.txt" for letter in string.ascii_lowercase] + ["a/inner.txt", "m/n/deep.txt"]
    for name in reversed(names):  # made last-first: the file system's own order is not the sorted one
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    write_zip(folder, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.namelist() == sorted(names)


# What `llmkit submission` does around its zip: the CLI's progress-bar rule (cli._logging), then write_zip.
_WRITE_ZIP = """
import sys
from pathlib import Path
from llmkit.cli import _logging
_logging()
from llmkit.submit.archive import write_zip
write_zip(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_the_zips_bar_is_off_when_piped_as_trainings_bars_are(tmp_path):
    """Piped (a log, CI), the "Writing" bar of a zip over 128 MiB redrew itself with carriage returns."""
    folder = tmp_path / "folder"
    folder.mkdir()
    with (folder / "model.safetensors").open("wb") as weights:  # sparse: 129 MiB on no disk
        weights.truncate(129 << 20)
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_DISABLE_PROGRESS_BARS"}
    zip_path = tmp_path / "out.zip"
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_ZIP, str(folder), str(zip_path)], stderr=subprocess.PIPE, env=env, timeout=300
    )  # bytes: text=True would read a bar's \r as \n
    assert done.returncode == 0, done.stderr.decode()
    assert b"Writing" not in done.stderr and b"\r" not in done.stderr, done.stderr.decode()
    assert zipfile.ZipFile(zip_path).namelist() == ["model.safetensors"]


def test_a_local_model_needs_bundling(tmp_path, tiny_model_dir):
    with pytest.raises(SubmissionError, match="local directory.*--bundle-weights"):
        build_submission("4090", model=str(tiny_model_dir), out_root=tmp_path)
    assert not (tmp_path / "4090_track").exists()  # refused before anything was written


def test_a_bundled_adapter_the_server_would_refuse_is_refused_before_the_zip_is_built(
    tmp_path, tiny_model_dir, monkeypatch
):
    """The server's own start-up check of an adapter (server.engine.check_adapters) runs before the build: a DoRA
    adapter was zipped, then refused by the smoke test's server in one line ("cannot serve: ... is DoRA")."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from llmkit.cli import app

    for name, dora in (("dora", True), ("lora", False)):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        lora = LoraConfig(r=4, target_modules=["q_proj"], use_dora=dora)
        get_peft_model(base, lora).save_pretrained(tmp_path / name)
    flags = ["submission", "--track", "4090", "--model", str(tiny_model_dir), "--bundle-weights"]
    flags += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*flags, "--adapter", str(tmp_path / "dora")])
    said = f"Error: --adapter {tmp_path / 'dora'}: the server would refuse it: Adapter "
    assert result.exit_code == 1 and said in result.output and "is DoRA (use_dora)" in result.output, result.output
    assert not (tmp_path / "out" / "4090_track").exists()  # refused before anything was written
    # the check is of what the image's CMD gives the server: this shell's server variables, which the image has not,
    # failed the build with pydantic's text
    monkeypatch.setenv("LLMKIT_MAX_NEW_TOKENS_LIMIT", "3000")
    monkeypatch.setenv("LLMKIT_PORT", "abc")
    zip_path = build_submission(
        "4090", model=str(tiny_model_dir), adapter=str(tmp_path / "lora"), bundle_weights=True, out_root=tmp_path
    )
    with zipfile.ZipFile(zip_path) as archive:
        assert "adapter/adapter_config.json" in archive.namelist()


def test_the_track_is_accepted_in_any_case(tmp_path, tiny_model_dir):
    """`--track a100` was refused ("'a100' is not one of '4090', 'A100'"): it got no further than parsing."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    for track in ("a100", "A100", "4090"):
        result = CliRunner().invoke(app, ["submission", "--track", track, "--model", str(tiny_model_dir)])
        assert result.exit_code == 1 and "is a local directory" in result.output, result.output  # past parsing
    result = CliRunner().invoke(app, ["submission", "--track", "a10", "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and "'a10' is not one of" in result.output


def test_the_upload_commands_quote_a_folder_with_spaces(tmp_path, caplog):
    """`hf upload <you>/<name> mérged 1` uploaded a folder `mérged` (and named the repo's path `1`)."""
    folder = tmp_path / "mérged 1"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    command = f"hf upload <you>/<name> {shlex.quote(str(folder))}"
    with pytest.raises(SubmissionError) as refused:
        hub_or_local(str(folder), None, bundle=False, marker="config.json", what="model")
    assert command in str(refused.value)
    hub_or_local(str(folder), None, bundle=True, marker="config.json", what="model")
    assert command in caplog.text  # the bundling warning


def test_bundled_local_model(tmp_path, tiny_model_dir, caplog):
    zip_path = build_submission("4090", model=str(tiny_model_dir), bundle_weights=True, out_root=tmp_path)
    assert "the challenge does not accept it" in caplog.text
    with zipfile.ZipFile(zip_path) as archive:
        weights = archive.getinfo("model/model.safetensors")
        manifest = json.loads(archive.read("manifest.json"))
        dockerfile = archive.read("Dockerfile").decode()
    assert weights.compress_type == zipfile.ZIP_STORED
    assert manifest["bundled_weights"] and manifest["model"]["bundled"]
    assert "COPY model/ /opt/model/" in dockerfile and "--mount=type=secret" not in dockerfile
    assert verify_submission(zip_path) == []


def test_a_full_fine_tune_config_is_bundled_as_its_output_dir(tmp_path, tiny_config):
    """A full fine-tune needs no merge: `submission --config` failed asking for an adapter_config.json."""
    lora_keys = {"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_linear": None}
    config = tiny_config(**lora_keys, learning_rate=1e-5)
    zip_path = build_submission("4090", config=str(config), out_root=tmp_path / "subs")
    with zipfile.ZipFile(zip_path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        names = archive.namelist()
    assert manifest["model"]["bundled"] and "model/model.safetensors" in names
    assert "model/adapter_config.json" not in names
    assert verify_submission(zip_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a paged optimizer trains as it is with CUDA")
def test_a_paged_optimizer_config_is_packaged_with_cpu_fallback_then_as_trained(tmp_path, tiny_config, caplog):
    """Mistral-01.yml's paged_adamw_32bit on a machine without CUDA: `submission` had no --cpu-fallback to pass on
    to training, and once the run had finished (`train --cpu-fallback`) it still refused on the optimizer."""
    config = str(tiny_config(optimizer="paged_adamw_32bit"))
    with pytest.raises(ValueError, match="optimizer: paged_adamw_32bit .* or pass --cpu-fallback"):
        build_submission("4090", config=config, out_root=tmp_path / "subs")
    zip_path = build_submission("4090", config=config, cpu_fallback=True, out_root=tmp_path / "subs")
    caplog.set_level(logging.INFO)
    assert build_submission("4090", config=config, out_root=tmp_path / "subs") == zip_path
    assert "Training already complete" in caplog.text


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SubmissionError, match="not both"):
        build_submission("4090", config="x.yml", model=DEFAULT_MODEL_ID, out_root=tmp_path)
    with pytest.raises(SubmissionError, match="neither a local directory nor a hub id"):
        build_submission("4090", model="no-such-dir", out_root=tmp_path)
    with pytest.raises(SubmissionError, match="numbered from 1"):
        build_submission("4090", model=DEFAULT_MODEL_ID, number=0, out_root=tmp_path)
    with pytest.raises(ValueError, match="'H100' is not a valid Track"):
        build_submission("H100", model=DEFAULT_MODEL_ID, out_root=tmp_path)
    sha = "0123456789abcdef" * 2 + "01234567"
    # offline, a model llmkit has never seen: the hint is one the submission command can follow (no --model-config)
    hint = f"hf download someone/never-seen-7b config.json --revision {sha}; it is then read from the cache"
    with pytest.raises(ModelConfigNotFound, match=re.escape(hint)):
        build_submission("4090", model="someone/never-seen-7b", revision=sha, out_root=tmp_path)
    assert not list(tmp_path.iterdir())
    (tmp_path / "taken").write_text("somebody's file")
    with pytest.raises(SubmissionError, match=f"--out: {tmp_path / 'taken'} is a file, not a folder"):
        build_submission("4090", out_root=tmp_path / "taken")  # before the default config trains


@pytest.mark.parametrize("engine", list(EngineName))
@pytest.mark.parametrize("track", list(Track))
@pytest.mark.parametrize(
    "model, adapter",
    [
        (Weights("meta-llama/Llama-2-7b-hf", "main"), Weights("someone/llama-adapter", "0123abc")),
        (Weights("meta-llama/Llama-2-7b-hf", "main"), Weights("/local/adapter", local_dir="/local/adapter")),
        (Weights("/local/merged", local_dir="/local/merged"), None),
    ],
    ids=["hub model + hub adapter", "hub model + bundled adapter", "bundled model"],
)
def test_every_dockerfile_variant_passes_hadolint(engine, track, model, adapter):
    dockerfile = render_dockerfile(track, model, adapter, Loading.nf4, engine)
    assert hadolint(dockerfile) == []
    assert "HF_TOKEN=" not in dockerfile and "ARG " not in dockerfile


def test_a_tampered_zip_is_rebuilt_and_a_tampered_folder_restored(tmp_path, rewrite_zip, caplog):
    caplog.set_level(logging.INFO, logger="llmkit.submit.package")
    args = {"model": DEFAULT_MODEL_ID, "revision": "main", "number": 1, "out_root": tmp_path}
    zip_path = build_submission("4090", **args)
    built = zip_path.read_bytes()
    dockerfile = zipfile.ZipFile(zip_path).read("Dockerfile") + b'ENTRYPOINT ["sleep", "infinity"]\n'
    rewrite_zip(zip_path, zip_path, {"Dockerfile": dockerfile}, fix_manifest=False)  # manifest.json kept as it was
    caplog.clear()
    assert build_submission("4090", **args).read_bytes() == built
    assert "kept as it is" not in caplog.text
    folder = zip_path.with_suffix("")
    for number in (1, None):  # without N, an earlier zip holding these files is kept too, not copied to number 2
        (folder / "Dockerfile").write_bytes(dockerfile)  # the unpacked copy edited; the zip (what is sent) not
        caplog.clear()
        assert build_submission("4090", **{**args, "number": number}) == zip_path
        assert "kept as it is" in caplog.text and f"Restored {folder}" in caplog.text
        assert (folder / "Dockerfile").read_bytes() == zipfile.ZipFile(zip_path).read("Dockerfile")
    assert sorted(p.name for p in zip_path.parent.iterdir()) == ["4090_submission_1", "4090_submission_1.zip"]
    caplog.clear()
    build_submission("4090", **args)  # untouched now: kept, nothing restored
    assert "kept as it is" in caplog.text and "Restored" not in caplog.text


def test_bundled_weights_give_the_same_zip_from_any_folder(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """Two copies of a project give one zip; and the same build from another working directory keeps its number
    (folders were recorded relative to the working directory, so it became a new submission)."""
    zips = []
    for where in ("a", "b"):
        model = tmp_path / where / "outputs" / "merged"
        shutil.copytree(tiny_model_dir, model)
        record = {"report": {"out_dir": str(model), "adapter": str(tmp_path / where / "run"), "seconds": 9.8}}
        (model / "llmkit_merge.json").write_text(json.dumps(record))
        out_root = tmp_path / where / "submissions"
        zips.append(build_submission("4090", model=str(model), bundle_weights=True, out_root=out_root))
    assert zips[0].read_bytes() == zips[1].read_bytes()
    with zipfile.ZipFile(zips[0]) as archive:
        assert json.loads(archive.read("manifest.json"))["model"]["id"] == "outputs/merged"
        assert json.loads(archive.read("model/llmkit_merge.json")) == {
            "report": {"out_dir": "outputs/merged", "adapter": "run"}
        }
        assert str(tmp_path) not in archive.read("Dockerfile").decode()
    caplog.set_level(logging.INFO)
    for cwd in (tmp_path / "a", tmp_path / "a" / "outputs", tmp_path):
        monkeypatch.chdir(cwd)
        caplog.clear()
        model = os.path.relpath(tmp_path / "a" / "outputs" / "merged")  # as a user in that folder writes it
        again = build_submission(
            "4090", model=model, bundle_weights=True, out_root=os.path.relpath(zips[0].parents[1])
        )
        assert again.resolve() == zips[0] and "already holds this submission" in caplog.text, cwd


def test_a_bundled_merged_folder_names_the_base_it_was_merged_into(tmp_path):
    """The summary's instruction-tuned check reads the base: a bundled merge used to record none."""
    from llmkit.submit.sources import hub_or_local

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "llmkit_merge.json").write_text(json.dumps({"report": {"base": "org/Model-7B-Instruct"}}))
    weights = hub_or_local(str(tmp_path), None, bundle=True, marker="config.json", what="model")
    assert weights.bundled and weights.base_model == "org/Model-7B-Instruct"
    (tmp_path / "llmkit_merge.json").unlink()  # any other model folder: no base to name
    assert hub_or_local(str(tmp_path), None, bundle=True, marker="config.json", what="model").base_model is None


def test_a_killed_builds_staging_folder_is_removed_by_the_next_build_of_any_number(tmp_path):
    """It stayed (half a GB with bundled weights) until that same number was built again."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    track_dir = tmp_path / "A100_track"
    left = track_dir / f".A100_submission_9.build-{int(dead.stdout)}-x1y2"
    (left / "A100_submission_9").mkdir(parents=True)
    build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path)
    assert sorted(p.name for p in track_dir.iterdir()) == ["A100_submission_1", "A100_submission_1.zip"]


def test_an_adapter_is_pinned_by_its_own_revision(tmp_path, caplog):
    """Offline, the adapter's warning said to pass --revision, which pins the model."""
    sha = "c" * 40
    adapter = {"bundle": False, "marker": "adapter_config.json", "what": "adapter"}
    assert hub_or_local("someone/some-adapter", sha, **adapter).revision == sha
    with pytest.raises(SubmissionError, match=r"^--adapter-revision 'a b' is not a branch, tag or commit name$"):
        hub_or_local("someone/some-adapter", "a b", **adapter)
    with caplog.at_level(logging.WARNING):
        assert hub_or_local("someone/never-seen-adapter", None, **adapter).revision == "main"
    assert "Pass --adapter-revision <commit> (ADAPTER_REVISION=...) to pin it." in caplog.text
    with pytest.raises(SubmissionError, match="--adapter-revision needs --adapter"):
        build_submission("4090", model=DEFAULT_MODEL_ID, revision="main", adapter_revision=sha, out_root=tmp_path)


def test_a_revision_for_a_local_folder_is_refused(tmp_path, tiny_model_dir):
    """It was silently ignored: the folder's files are what get bundled."""
    with pytest.raises(SubmissionError, match=rf"^--revision main: --model {tiny_model_dir} is a local folder"):
        build_submission("4090", model=str(tiny_model_dir), revision="main", bundle_weights=True, out_root=tmp_path)


@pytest.fixture()
def hub(monkeypatch, stand_in_server):
    """A stand-in for the hub's model-info endpoint (huggingface_hub's own client asks it over HTTP): it knows one
    commit of every repo, its branch `main` points there, and it answers any other revision as the hub does, 404
    RevisionNotFound."""
    from huggingface_hub import constants

    known = "1" * 40

    def answer(method, path):
        if path.split("?")[0].endswith((f"/revision/{known}", "/revision/main")):
            return 200, {"Content-Type": "application/json"}, json.dumps({"id": "x/y", "sha": known}).encode()
        return 404, {"X-Error-Code": "RevisionNotFound"}, b'{"error": "Invalid rev id"}'

    monkeypatch.setattr(constants, "ENDPOINT", stand_in_server(answer))
    return known


def test_a_given_revision_is_asked_of_the_hub_where_it_answers(hub, caplog):
    """A made-up --revision got "weights ✓ ... (downloaded by docker build)": only its spelling was checked."""
    assert hub_or_local(DEFAULT_MODEL_ID, hub, bundle=False, marker="config.json", what="model").revision == hub
    typo = "2" * 40
    with pytest.raises(SubmissionError, match=f"--revision {typo}: the hub has no such branch, tag or commit of"):
        hub_or_local(DEFAULT_MODEL_ID, typo, bundle=False, marker="config.json", what="model")
    with pytest.raises(SubmissionError, match="--adapter-revision v9: the hub has no such"):
        hub_or_local("someone/adapter", "v9", bundle=False, marker="adapter_config.json", what="adapter")


def test_a_given_branch_is_pinned_to_its_commit(hub):
    """`--revision main` was checked and then written as `main`: the image downloaded whatever main was later."""
    assert hub_or_local(DEFAULT_MODEL_ID, "main", bundle=False, marker="config.json", what="model").revision == hub
    adapter = hub_or_local("someone/adapter", "main", bundle=False, marker="adapter_config.json", what="adapter")
    assert adapter.revision == hub


def test_a_given_revision_the_hub_cannot_be_asked_about_is_said_unchecked(monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing answers there
    caplog.set_level(logging.WARNING)
    weights = hub_or_local(DEFAULT_MODEL_ID, "3" * 40, bundle=False, marker="config.json", what="model")
    assert weights.revision == "3" * 40
    assert f"Could not check --revision {'3' * 40} against the hub" in caplog.text


def test_bundled_files_the_server_would_refuse_at_start_up_are_refused_before_the_zip_is_built(
    tmp_path, tiny_model_dir, make_tiny_model
):
    """The server's fit check (models.apply_adapter: "has no place in the base") and its tokenizer lookup ran only
    when a server started: `submission --no-smoke` and verify-submission called such a zip good."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    one_layer = make_tiny_model(LlamaConfig, LlamaForCausalLM, num_hidden_layers=1)  # not the base it trained on
    with pytest.raises(SubmissionError) as refused:
        build_submission(
            "4090", model=str(one_layer), adapter=str(tmp_path / "lora"), bundle_weights=True, out_root=tmp_path
        )
    said = f"--adapter {tmp_path / 'lora'}: the server would refuse it: Adapter {tmp_path / 'lora'} does not fit "
    assert str(refused.value).startswith(said) and "has no place in the base" in str(refused.value)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for file in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(tiny_model_dir / file, no_tokenizer / file)
    with pytest.raises(
        SubmissionError, match=f"--model {no_tokenizer}: the server would refuse it: .* holds no token"
    ):
        build_submission("4090", model=str(no_tokenizer), bundle_weights=True, out_root=tmp_path)
    assert not (tmp_path / "4090_track").exists()  # refused before anything was written


def test_an_adapter_folder_as_the_model_is_said_to_be_one(tmp_path):
    """`submission --model <an adapter's folder>` said only "the directory holds no config.json": it says what serve
    says (models.local_model_dir), the adapter's base and --adapter."""
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "owner/base", "peft_type": "LORA"}')
    refused = f"--model {adapter}: {adapter} is a LoRA adapter (adapter_config.json, no config.json), not a model"
    with pytest.raises(SubmissionError, match=re.escape(refused)) as said:
        build_submission("4090", model=str(adapter), bundle_weights=True, out_root=tmp_path)
    assert f"(--model owner/base --adapter {adapter})" in str(said.value)


def test_a_bundled_model_cut_short_is_refused_as_the_server_refuses_it(tmp_path, tiny_model_dir):
    """A half-written model.safetensors (a copy or a merge stopped midway) passed submission ("checks passed") where
    serve refused it; its header's offsets against the file's size say so, no weight read."""
    half = tmp_path / "half"
    shutil.copytree(tiny_model_dir, half)
    weights = half / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    refused = f"--model {half}: the server would refuse it: {weights} cannot be read as safetensors (empty or cut"
    with pytest.raises(SubmissionError, match=re.escape(refused)):
        build_submission("4090", model=str(half), bundle_weights=True, out_root=tmp_path)
    assert not (tmp_path / "4090_track").exists()


def test_a_full_disk_is_named_and_leaves_nothing(tmp_path, monkeypatch):
    """It said only "[Errno 28] No space left on device", and left an empty A100_track/ behind."""
    from llmkit.submit import package

    def full(folder, zip_path):
        zip_path.write_bytes(b"PK\3\4")  # a zip cut short
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package, "write_zip", full)
    with pytest.raises(SubmissionError) as refused:
        build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path)
    track_dir = tmp_path / "A100_track"
    assert str(refused.value).startswith(f"the disk holding {track_dir} is full (")
    assert str(refused.value).endswith("MiB free): submission A100_submission_1 did not fit; nothing of it is left")
    assert os.listdir(tmp_path) == []


def test_rebuilding_over_a_number_says_it_replaces_that_submission(tmp_path, caplog):
    """`--number 1` over a submission 1 with other files replaced it without a word."""
    first = build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path)
    assert "Replacing" not in caplog.text
    again = build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path, number=1)
    assert again == first and "Replacing" not in caplog.text  # the same files: kept as they are
    build_submission("A100", model=DEFAULT_MODEL_ID, revision="main", out_root=tmp_path, number=1, loading="nf4")
    assert f"Replacing {first}, which held another submission (its files differ from these)" in caplog.text


def test_a_config_whose_training_does_not_fit_the_tracks_gpu_is_refused_before_it_trains(tmp_path):
    """The challenge fine-tunes on one GPU of the track: Mistral-01 (QLoRA, 2 x 4096 tokens) needs about 28.8 GiB
    by validate's plan, so a 4090 submission of it could not be reproduced. It went on to train (on whatever GPU
    this machine has) and packaged a zip for the 4090."""
    config = Path(__file__).parents[2] / "axolotl_configs" / "Mistral-01.yml"
    with pytest.raises(SubmissionError) as caught:
        build_submission("4090", config=str(config), out_root=tmp_path)
    said = str(caught.value)
    assert said.startswith(
        f"{config}: training needs about 28.8 GiB per GPU by its plan, over the 23.6 GiB of the "
        "4090 track's NVIDIA RTX 4090"
    ), said
    assert "load_in_4bit" not in said  # it is QLoRA already: lowering the batch or the length is what is left
    assert not list(tmp_path.rglob("*.zip"))
