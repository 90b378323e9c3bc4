"""llmkit decontaminate: instances built by crfm-helm itself, a planted instance found (long and short ones), the
shipped skill config clean on its own scenario, the command's exit code and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from llmkit.config.schema import load_config
from llmkit.core.assets import CONFIGS_DIR
from llmkit.data import row_texts
from llmkit.helm_eval import confgen
from llmkit.helm_eval import decontaminate as decontaminate_module
from llmkit.helm_eval.decontaminate import MIN_WORDS, decontaminate, helm_instances, windows, words
from llmkit.helm_eval.setup import HELM_VERSION


def _conf(tmp_path):
    tasks = confgen.TaskList(
        families=[
            confgen.TaskFamily(name="vs", scenario="synthetic_reasoning", args={"mode": "variable_substitution"}),
            confgen.TaskFamily(name="mcqa", scenario="simple_mcqa"),
        ]
    )
    return confgen.write_conf(confgen.generate(tasks, budget=10), tmp_path / "decon.conf")


@pytest.fixture(scope="module")
def built(helm_venv, tmp_path_factory):
    """A folder holding `_conf` and the instances crfm-helm builds for it (cached there): the tests that read them
    share one build (6.5 CPU s)."""
    folder = tmp_path_factory.mktemp("decon")
    helm_instances(_conf(folder), folder)
    return folder


def _config(tmp_path, rows):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in rows))
    config = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "learning_rate": 1e-4}
    config["datasets"] = [{"path": str(data), "type": "completion"}]
    path = tmp_path / "planted.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_windows_and_words():
    assert words('Rules: X + Y | Substitutions: X by " red "') == [
        "rules",
        "x",
        "y",
        "substitutions",
        "x",
        "by",
        "red",
    ]
    assert list(windows(["a", "b", "c"], 2)) == [("a", "b"), ("b", "c")]
    assert list(windows(["a", "b"], 13)) == [("a", "b")]  # shorter than n: the whole text


def test_an_overlap_through_a_reference_is_found(tmp_path, monkeypatch):
    """An instance's text is its input, and its input followed by each correct reference."""
    question = " ".join(f"q{i}" for i in range(20))
    instance = {"run": "r", "id": "id1", "split": "test", "input": question, "references": ["a0 a1 a2 a3 a4"]}
    monkeypatch.setattr(decontaminate_module, "helm_instances", lambda conf_path, work_dir: [instance])
    tail = " ".join(question.split()[-8:]) + " a0 a1 a2 a3 a4"  # 13 words, 8 of them from the input
    report = decontaminate([("d", 0, "clean row"), ("d", 1, tail)], "c.yml", tmp_path / "x.conf", tmp_path)
    assert [(hit.instance_id, hit.row, hit.words) for hit in report.overlaps] == [("id1", 1, tail)]
    assert decontaminate([("d", 0, tail.rsplit(" ", 1)[0])], "c.yml", tmp_path / "x.conf", tmp_path).clean


def test_an_instance_of_a_few_words_is_not_checked_but_counted(tmp_path, monkeypatch):
    """simple_classification's instances are one number ("21"): every row mentioning it overlapped, and the shipped
    default config was reported contaminated 79 times over."""
    short = {"run": "r", "id": "n21", "split": "test", "input": "21", "references": ["Odd"]}
    eight = " ".join(f"w{i}" for i in range(8))
    whole = {"run": "r", "id": "w8", "split": "test", "input": eight, "references": []}
    monkeypatch.setattr(decontaminate_module, "helm_instances", lambda conf_path, work_dir: [short, whole])
    rows = [("d", 0, "Is 21 even or odd? 21 odd"), ("d", 1, f"say {eight} now")]
    report = decontaminate(rows, "c.yml", tmp_path / "x.conf", tmp_path)
    assert [hit.instance_id for hit in report.overlaps] == ["w8"] and report.too_short == 1
    assert "✗ 1 of 2 HELM eval instances (1 under 8 words not checked) share a 13-word window" in report.sentence(
        tmp_path / "r.json"
    )
    # a window shorter than 8 words: instances of that many words are checked (all were "too short", and clean)
    five = decontaminate([("d", 0, "say w3 w4 w5 w6 w7 now")], "c.yml", tmp_path / "x.conf", tmp_path, ngram=5)
    assert [hit.instance_id for hit in five.overlaps] == ["w8"] and five.too_short == 1 and five.min_words == 5


def test_planted_instances_are_found_and_the_skill_config_is_clean(built, tmp_path):
    conf = built / "decon.conf"
    instances = helm_instances(conf, built)
    vs = [i for i in instances if i["run"].startswith("synthetic_reasoning")]
    mcqa = [i for i in instances if i["run"].startswith("simple_mcqa")]
    assert len(vs) == 10_000 and {i["split"] for i in vs} == {"valid", "test"}  # every eval instance, not 10
    assert mcqa and all(i["references"] for i in mcqa)

    long_one, short_one = vs[1234], mcqa[3]
    rows = [
        "Nothing of HELM here: " + "plain words " * 20,
        f"Some context. {long_one['input']}\nTarget: {long_one['references'][0]} and more.",
        f"Q: {short_one['input']} A: {short_one['references'][0]}.",
    ]
    report = decontaminate(row_texts(load_config(_config(tmp_path, rows))), "planted.yml", conf, built)
    found = {(hit.instance_id, hit.row) for hit in report.overlaps}
    assert (long_one["id"], 1) in found and all(hit.row != 2 for hit in report.overlaps)
    assert not report.clean and report.training_rows == 3
    # simple_mcqa's instances are a few words each ("21" and its answer): not checked, and counted as such
    assert {run.run.split(":")[0]: (run.instances, run.too_short) for run in report.runs} == {
        "synthetic_reasoning": (10_000, 0),
        "simple_mcqa": (len(mcqa), len(mcqa)),
    }
    assert len(words(f"{short_one['input']} {short_one['references'][0]}")) < MIN_WORDS

    skill = CONFIGS_DIR / "smollm2-135m-skill.yml"
    shipped = decontaminate(row_texts(load_config(skill)), str(skill), conf, built)
    assert shipped.clean and shipped.training_rows == 1000, shipped.overlaps[:3]


def test_command_exits_1_and_names_the_overlapping_row(built, tmp_path):
    conf = built / "decon.conf"
    [instance] = [i for i in helm_instances(conf, built) if i["id"] == "id10001"]
    config = _config(tmp_path, ["clean row", f"{instance['input']} => {instance['references'][0]}"])
    command = [sys.executable, "-X", "importtime", "-m", "llmkit.cli", "decontaminate", str(config)]
    command += ["--conf", str(conf)]
    env = {**os.environ, "COLUMNS": "250"}  # rich folds table cells at the terminal's width
    result = subprocess.run([*command, "--out", str(built)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import ")}
    assert "torch" not in imported  # rows are read without the data pipeline, and its torch (4 s of start-up)
    assert "id10001" in result.stdout and "rows.jsonl:1" in result.stdout
    assert "✗ 1 of" in result.stdout
    [report] = (built / "reports").glob("decontaminate-*.json")
    assert json.loads(report.read_text())["overlaps"][0]["row"] == 1


def test_a_conf_whose_data_cannot_be_downloaded_says_it_needs_the_internet(helm_venv, tmp_path):
    """Offline, crfm-helm cannot fetch gsm's data: one message naming the scenario and the offline confs, as
    helm-eval says it, not urllib's traceback. A proxy that refuses every connection makes this offline anywhere."""
    tasks = confgen.TaskList(families=[confgen.TaskFamily(name="gsm", scenario="gsm")])
    conf = confgen.write_conf(confgen.generate(tasks, budget=1), tmp_path / "gsm.conf")
    config = _config(tmp_path, ["clean row"])
    command = [sys.executable, "-m", "llmkit.cli", "decontaminate", str(config), "--conf", str(conf)]
    refused = dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), "http://127.0.0.1:9")
    env = {key: value for key, value in os.environ.items() if key.lower() != "no_proxy"} | refused
    result = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "Error: crfm-helm could not download the datasets of gsm: these scenarios need the internet (only "
    ), result.stderr
    assert "try --conf quick" in result.stderr and "Last download error: " in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2


def test_an_unknown_run_spec_is_one_line(helm_venv, tmp_path):
    """It was HELM's traceback from reading the instances ("ValueError: Unknown run spec name"), as helm-eval's was."""
    conf = tmp_path / "unknown.conf"
    conf.write_text('entries: [{description: "no_such_scenario:model=neurips/local", priority: 1}]\n')
    config = _config(tmp_path, ["row"])
    command = [sys.executable, "-m", "llmkit.cli", "decontaminate", str(config), "--conf", str(conf)]
    result = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = f"Error: {conf}: HELM {HELM_VERSION} has no run spec named no_such_scenario"
    assert result.stderr.strip().splitlines() == [expected]


def test_report_tables_print_brackets_as_written():
    from rich.console import Console

    from llmkit.helm_eval.decontaminate import DecontaminationReport, Overlap, RunOverlap, report_tables

    run = "mmlu:subject=x[v2],model=neurips_local"
    report = DecontaminationReport(
        config="cfg[v2].yml",
        conf="quick",
        ngram=8,
        training_rows=3,
        runs=[RunOverlap(run=run, instances=10, overlapping=1)],
        overlaps=[Overlap(run=run, instance_id="id7", split="test", source="rows[v2].jsonl", row=2, words="a [b] c")],
    )
    console = Console(record=True, width=300)
    for table in report_tables(report):
        console.print(table)
    text = console.export_text()
    assert "cfg[v2].yml" in text and "rows[v2].jsonl:2" in text and "a [b] c" in text and "x[v2]" in text
