"""Rerunning `train` on the same output_dir: a finished run is left as it is, an unpublished last checkpoint is
published without another step, a changed config is refused until `--fresh`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit.config.schema import ConfigError, load_config
from llmkit.data import DataError
from llmkit.train.resume import RUN_RECORD
from llmkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]


def _global_step(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_rerunning_a_finished_run_does_no_step_and_keeps_the_adapter(tiny_config):
    path = tiny_config(max_steps=4, save_steps=2)
    out = train(load_config(path))
    adapter = (out / "adapter_model.safetensors").read_bytes()
    assert _global_step(out) == 4 and _checkpoints(out) == ["checkpoint-2", "checkpoint-4"]

    again = subprocess.run(
        [sys.executable, "-m", "llmkit.cli", "train", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Training already complete" in again.stderr and "(step 4 of 4)" in again.stderr
    assert "Resuming" not in again.stderr and "'loss'" not in again.stdout
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    assert _global_step(out) == 4 and _checkpoints(out) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a paged optimizer trains as it is with CUDA")
def test_a_finished_run_is_found_before_the_checks_only_training_needs(tiny_config, caplog):
    """Finished with `train --cpu-fallback`, a paged optimizer's run was refused by the same command without the
    flag, and by `submission --config` (which trains first), on the optimizer: "already complete" came later."""
    path = tiny_config(optimizer="paged_adamw_32bit")
    out = train(load_config(path), cpu_fallback=True)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    with caplog.at_level(logging.INFO):
        assert train(load_config(path)) == out
    assert "Training already complete" in caplog.text
    with pytest.raises(ConfigError, match="optimizer: paged_adamw_32bit pages its state through CUDA memory"):
        train(load_config(path), fresh=True)  # it trains: the check holds, before anything is removed
    assert (out / "adapter_model.safetensors").read_bytes() == adapter and _global_step(out) == 2


def test_a_run_killed_after_its_last_checkpoint_is_published_without_another_step(tiny_config, caplog):
    path = tiny_config(max_steps=4, save_steps=2)
    out = train(load_config(path))
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
        (out / name).unlink()  # as if killed between saving checkpoint-4 and publishing
    with caplog.at_level(logging.INFO):
        train(load_config(path))
    assert "at the end of the schedule; publishing it without training" in caplog.text
    assert _global_step(out) == 4 and _checkpoints(out) == ["checkpoint-2", "checkpoint-4"]
    published = (out / "adapter_model.safetensors").read_bytes()
    assert published == (out / "checkpoint-4" / "adapter_model.safetensors").read_bytes()


def test_an_output_dir_that_is_a_file_is_refused_before_the_model_loads(tiny_config, tmp_path):
    (tmp_path / "taken").write_text("somebody's file")
    for output_dir in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(ConfigError, match=f"output_dir: {tmp_path / 'taken'} is a file, not a folder"):
            train(load_config(tiny_config(output_dir=str(output_dir))))
    assert (tmp_path / "taken").read_text() == "somebody's file"
    # dataset_prepared_path too: a traceback once the data was tokenized, and a run folder holding only its record
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"dataset_prepared_path: {tmp_path / 'taken'} is a file, not a folder"):
        train(load_config(tiny_config(output_dir=str(run), dataset_prepared_path=str(tmp_path / "taken"))))
    assert not run.exists()  # a run that wrote nothing leaves no folder
    # nor one that stopped on its data, after writing its record
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    bad = tiny_config(output_dir=str(run), datasets=[{"path": str(tmp_path / "bad.jsonl"), "type": "alpaca"}])
    with pytest.raises(DataError, match="row 2: field 'output' is missing"):
        train(load_config(bad))
    assert not run.exists()


def test_a_bad_value_given_by_a_train_flag_names_the_flag_not_the_key(tiny_config, tmp_path):
    """`train cfg.yml --output-dir afile` said "output_dir: afile is a file": a key the file may not even hold."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    (tmp_path / "taken").write_text("somebody's file")
    config = str(tiny_config())
    says = {  # a folder it cannot write in, as --out elsewhere: 1; a value it cannot take: a usage error, 2
        ("--output-dir", str(tmp_path / "taken")): (
            1,
            f"Error: --output-dir: {tmp_path / 'taken'} is a file, not a folder",
        ),
        ("--max-steps", "0"): (2, "Error: --max-steps: Input should be greater than 0 (got 0)"),
    }
    for flag, (status, message) in says.items():  # the flag's, not under "Invalid config <file>:"
        result = CliRunner().invoke(app, ["train", config, *flag])
        assert result.exit_code == status and result.output.splitlines() == [message], result.output
    result = CliRunner().invoke(app, ["train", str(tiny_config(output_dir=str(tmp_path / "taken")))])
    assert result.output.splitlines() == [  # the file's
        f"Error: Invalid config {tmp_path / 'tiny.yml'}:",
        f"  - output_dir: {tmp_path / 'taken'} is a file, not a folder",
    ], result.output


def test_what_is_not_in_the_config_is_not_said_as_an_invalid_config(tiny_config, tmp_path, monkeypatch):
    """An --output-dir another train holds, a config file that does not exist and a folder given as the config were
    each said under "Invalid config <file>:", as if a key of the file were wrong."""
    import fcntl

    from typer.testing import CliRunner

    from llmkit.cli import app

    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    with open(busy / ".llmkit_train.lock", "w") as lock:  # as the run training in it holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        result = CliRunner().invoke(app, ["train", str(tiny_config()), "--output-dir", str(busy)])
        assert result.exit_code == 1 and result.output.splitlines() == [
            f"Error: --output-dir: another `llmkit train` (pid 4242) is training in {busy}; wait for it to end, or "
            "train into another folder"
        ], result.output
    for config, said in {
        "nosuch.yml": "cannot read the config nosuch.yml: No such file or directory",
        "a-folder": "cannot read the config a-folder: it is a folder, not a file",
    }.items():
        result = CliRunner().invoke(app, ["train", config])
        assert result.exit_code == 1 and result.output.splitlines() == [f"Error: {said}"], result.output


def test_preprocess_refuses_a_prepared_path_it_cannot_write_before_tokenizing(tiny_config, tmp_path):
    (tmp_path / "taken").write_text("somebody's file")
    command = [
        sys.executable,
        "-m",
        "llmkit.cli",
        "preprocess",
        str(tiny_config(dataset_prepared_path=str(tmp_path / "taken"))),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert f"dataset_prepared_path: {tmp_path / 'taken'} is a file, not a folder" in done.stderr


@pytest.mark.parametrize("fresh", [False, True])
def test_a_folder_that_is_not_a_run_is_refused_untouched(tiny_config, tmp_path, fresh):
    """A partial-looking checkpoint-7 of somebody else's was removed, and --fresh removed their config.json too."""
    victim = tmp_path / "victim"
    (victim / "checkpoint-3").mkdir(parents=True)
    (victim / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (victim / "checkpoint-7").mkdir()
    (victim / "checkpoint-7" / "my_weights.bin").write_bytes(b"mine")
    (victim / "config.json").write_text("{}")
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    message = (
        rf"output_dir: {victim} holds other files \(no llmkit_run.json: not a training run\): checkpoint-3, "
        "checkpoint-7, config.json; it would be written over"
    )
    with pytest.raises(ConfigError, match=message):
        train(load_config(tiny_config(output_dir=str(victim))), fresh=fresh)
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before


def test_a_changed_config_is_refused_until_fresh(tiny_config):
    out = train(load_config(tiny_config(max_steps=2)))
    longer = tiny_config(max_steps=3)
    refusal = r"(?s)holds a run of another config \(changed: max_steps: 2 -> 3\).*--fresh"
    with pytest.raises(ConfigError, match=refusal):
        train(load_config(longer))
    assert _global_step(out) == 2 and (out / "adapter_config.json").is_file()  # the finished run is untouched

    other_rate = tiny_config(max_steps=2, learning_rate=5e-4)  # the factory rewrites the same file
    with pytest.raises(ConfigError, match=r"learning_rate: 0.001 -> 0.0005"):
        train(load_config(other_rate))

    train(load_config(tiny_config(max_steps=3)), fresh=True)
    assert _global_step(out) == 3
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["log_history"][0]["step"] == 1  # from step 0, not continued from the old run
    # How often it logs or saves is not what it trains: a rerun with other cadences finds the run finished.
    assert train(load_config(tiny_config(max_steps=3, logging_steps=2, save_steps=1))) == out
    assert _global_step(out) == 3


def test_a_changed_data_file_is_a_changed_run(tiny_config, tiny_dataset, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(tiny_dataset.read_bytes())
    path = tiny_config(datasets=[{"path": str(data), "type": "alpaca"}])
    train(load_config(path))
    data.write_text(data.read_text().replace("plus", "added to"))
    with pytest.raises(ConfigError, match=r"changed: datasets\[0\] files\)"):
        train(load_config(path))
    data.write_bytes(tiny_dataset.read_bytes())
    changed = tiny_config(datasets=[{"path": str(data), "type": "alpaca", "split": "train[:20]"}])
    with pytest.raises(ConfigError, match=r"changed: datasets\[0\]\.split: train -> train\[:20\]\)"):
        train(load_config(changed))


def test_a_finished_run_stays_finished_when_an_update_adds_keys(tiny_config):
    """Records of earlier versions lack keys added since (at their defaults here), and hold keys at defaults:
    after `shards_idx` (default 0) was added, every finished run was refused as "another config"."""
    out = train(load_config(tiny_config()))
    record = json.loads((out / RUN_RECORD).read_text())
    del record["datasets"][0]["shards_idx"], record["seed"]  # an older version's record: no such keys yet
    record["datasets"][0]["revision"] = None  # recorded at its default
    (out / RUN_RECORD).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"changed: seed: 42 -> 7\)"):
        train(load_config(tiny_config()))  # seed 7 is not the default (42): a real change
    (out / RUN_RECORD).write_text(json.dumps({**record, "seed": 7}))
    assert train(load_config(tiny_config())) == out and _global_step(out) == 2


def test_resuming_from_another_models_checkpoint_is_one_error_naming_it(tiny_config, tmp_path, caplog):
    first = train(load_config(tiny_config(max_steps=2, save_steps=2, output_dir=str(tmp_path / "r4"))))
    checkpoint = first / "checkpoint-2"
    other = tiny_config(lora_r=8, resume_from_checkpoint=str(checkpoint), output_dir=str(tmp_path / "r8"))
    with caplog.at_level(logging.INFO), pytest.raises(ConfigError) as refused:
        train(load_config(other))
    message = str(refused.value)
    assert f"resume_from_checkpoint: {checkpoint} does not fit this config's model (size mismatch for" in message
    assert "\n" not in message.split("  - ", 1)[1] and f"Resuming from {checkpoint}" in caplog.text


def test_a_run_stopped_before_its_first_checkpoint_is_said_to_start_over(tiny_config, caplog):
    cfg = load_config(tiny_config())
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    (out / RUN_RECORD).write_text("{}")  # what a run killed during its first steps leaves: its record, no checkpoint
    caplog.set_level("INFO")
    train(cfg)
    assert f"{out} holds an earlier run that saved no checkpoint: starting from step 0 over it" in caplog.text
    assert _global_step(out) == 2


def test_ctrl_c_says_what_a_rerun_resumes_from(tiny_config, tmp_path):
    from llmkit.train.resume import interrupted_message

    assert interrupted_message(tmp_path / "none") == (
        f"interrupted before {tmp_path / 'none'} held a checkpoint: rerunning starts from step 0"
    )
    out = train(load_config(tiny_config(save_steps=1)))
    newest = sorted(out.glob("checkpoint-*"))[-1]
    assert interrupted_message(out) == f"interrupted: rerun the same command to resume from {newest} (step 2)"


def test_a_second_run_into_the_same_output_dir_is_refused_and_sigterm_stops_like_ctrl_c(tiny_config):
    """Two `train`s into one output_dir wrote the same checkpoints and left one's record over the other's weights;
    SIGTERM (kill, a scheduler) ended a run without a word."""
    import os
    import signal

    path = tiny_config(max_steps=100_000, save_steps=5)
    out = Path(load_config(path).output_dir)
    command = [sys.executable, "-m", "llmkit.cli", "train", str(path)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_checkpoint(first, out)
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        assert f"another `llmkit train` (pid {first.pid}) is training in {out}" in second.stderr, second.stderr
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
    assert first.returncode == 143, stderr
    assert "interrupted: rerun the same command to resume from" in stderr and "Traceback" not in stderr
    assert not (out / ".llmkit_train.lock").exists()


def test_a_stopped_fresh_run_says_to_rerun_without_fresh(tiny_config):
    """It said "rerun the same command to resume", and the same command (--fresh) deleted the checkpoints."""
    import os
    import signal

    path = tiny_config(max_steps=100_000, save_steps=5)
    out = Path(load_config(path).output_dir)
    command = [sys.executable, "-m", "llmkit.cli", "train", str(path), "--fresh"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_a_checkpoint(run, out)
        run.send_signal(signal.SIGTERM)  # Ctrl-C's path too (interrupted_exit_code)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
    assert run.returncode == 143, stderr
    said = " ".join(stderr.split())
    assert "interrupted: rerun without --fresh to resume from" in said and "with --fresh it is deleted" in said
    assert "the same command" not in said


def _wait_for_a_checkpoint(run: subprocess.Popen, out: Path) -> None:
    import time

    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.5)


def test_a_full_disk_is_named_whatever_the_error_says(tmp_path):
    from llmkit.core.files import LOW_SPACE_BYTES, disk_full

    assert "is full" in disk_full(tmp_path, OSError(28, "No space left on device"))
    unexpected = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    roomy = __import__("shutil").disk_usage(tmp_path).free >= LOW_SPACE_BYTES
    assert (disk_full(tmp_path / "not" / "yet", unexpected) is None) is roomy  # an error with room is not a full disk
    # tokenizers raises a bare Exception when saving tokenizer.json into a checkpoint; train let it through
    assert "is full" in disk_full(tmp_path, Exception("No space left on device (os error 28)"))
    assert disk_full(tmp_path, ValueError("no such key")) is None  # room or not: only writes fill a disk
    too_large = disk_full(tmp_path, OSError(27, "File too large"))  # `ulimit -f`: datasets' cache write in train
    assert "file size limit" in too_large and str(tmp_path) in too_large


def test_a_resumed_run_saves_and_logs_as_the_config_now_says(tiny_config):
    """Changing save_steps/logging_steps/eval_steps after a crash is allowed (eval_steps forced --fresh); the
    Trainer restored the old ones from the checkpoint, so the new ones did nothing."""
    import shutil

    out = train(load_config(tiny_config(max_steps=4, save_steps=1, val_set_size=0.25, eval_steps=1)))
    for name in ("checkpoint-3", "checkpoint-4", "adapter_config.json"):  # as if killed after checkpoint-2
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train(load_config(tiny_config(max_steps=4, save_steps=2, logging_steps=2, val_set_size=0.25, eval_steps=2)))
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-4"]  # not 3: every 2 steps now
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["save_steps"], state["logging_steps"], state["global_step"]) == (2, 2, 4)
    # checkpoint-2 holds its evaluation: the resumed run does not evaluate the same weights again at its start
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry] == [0, 1, 2, 4]


def test_fresh_keeps_the_old_run_when_the_new_one_cannot_start(tiny_config, tmp_path):
    """--fresh deleted the checkpoints and the published adapter first, then stopped on the new config's data: the
    finished run was gone and nothing replaced it."""
    out = train(load_config(tiny_config(max_steps=2, save_steps=1)))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    bad = tiny_config(max_steps=2, save_steps=1, datasets=[{"path": str(tmp_path / "bad.jsonl"), "type": "alpaca"}])
    with pytest.raises(DataError, match="row 2: field 'output' is missing"):
        train(load_config(bad), fresh=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    train(load_config(tiny_config(max_steps=3, save_steps=1)), fresh=True)  # a run that can start replaces it
    assert _global_step(out) == 3 and _checkpoints(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_fresh_refuses_to_resume_from_a_checkpoint_it_would_delete(tiny_config):
    out = train(load_config(tiny_config(max_steps=2, save_steps=1)))
    inside = tiny_config(max_steps=2, save_steps=1, resume_from_checkpoint=str(out / "checkpoint-1"))
    with pytest.raises(ConfigError, match=r"resume_from_checkpoint: .*checkpoint-1 is in output_dir, whose"):
        train(load_config(inside), fresh=True)
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]


def test_a_checkpoint_cut_off_by_a_full_disk_is_removed_as_the_error_is_said(tiny_config, monkeypatch):
    """The half-written checkpoint stayed until the next run, holding the space the message asked to free."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    path = tiny_config(max_steps=4, save_steps=2)
    out = Path(load_config(path).output_dir)
    real_save = torch.save

    def full_at_the_second_checkpoint(obj, f, *args, **kwargs):  # the optimizer's state, after the adapter
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            Path(f).write_bytes(b"\0" * 1000)  # what a write cut short leaves
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_the_second_checkpoint)
    result = CliRunner().invoke(app, ["train", str(path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"Error: the disk holding {out} is full" in said, result.output
    assert "rerun the same command to resume from" in said and "checkpoint-2 (step 2)" in said
    assert _checkpoints(out) == ["checkpoint-2"]  # checkpoint-4, written in part, is gone

    monkeypatch.setattr(torch, "save", real_save)
    train(load_config(path))  # room again: it resumes from checkpoint-2
    assert _global_step(out) == 4


@pytest.mark.slow
def test_a_resumed_ddp_run_ends_as_the_run_that_was_not_stopped_and_says_so_once(tiny_config, ddp_launch):
    """`make train NPROC=2` (two processes over gloo) stopped after its checkpoint of step 3 of 6 and rerun takes
    steps 4 to 6 as the run that was not stopped did, bit for bit (the losses, the published adapter): each process
    skips its own shard's rows of steps 1 to 3. Each run says 'Tokenizing ...' and its 'Data' line once (the rerun
    'Resuming' too), as one process does: each process logged its own."""
    import shutil

    path = tiny_config(max_steps=6, save_steps=3, micro_batch_size=1)
    whole = subprocess.run(ddp_launch(path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = Path(load_config(path).output_dir)
    assert whole.stderr.count("Data: ") == 1 and whole.stderr.count("Tokenizing ") == 1, whole.stderr[-3000:]
    expected = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    adapter = (out / "adapter_model.safetensors").read_bytes()
    shutil.rmtree(out / "checkpoint-6")  # as if killed after saving checkpoint-3
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
        (out / name).unlink()

    rerun = subprocess.run(ddp_launch(path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = [rerun.stderr.count(line) for line in ("Resuming from", "Data: ", "Tokenizing ")]
    assert said == [1, 1, 1], rerun.stderr[-3000:]
    history = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    losses = [[(entry["step"], entry["loss"]) for entry in log if "loss" in entry] for log in (history, expected)]
    assert losses[0] == losses[1] and [step for step, _ in losses[0]] == [1, 2, 3, 4, 5, 6]
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
