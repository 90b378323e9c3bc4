"""The conf generator: the open task list must reproduce the challenge's open-evaluation suite."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.core.challenge import OPEN_SUITE_AUGMENTED_INSTANCES, OPEN_SUITE_INSTANCES, OPEN_SUITE_RUNS
from llmkit.helm_eval import confgen
from llmkit.helm_eval.run import OFFLINE_SCENARIOS

# The challenge's own conf, kept in the repository (its header says where it came from).
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "run_specs_full_coarse_600_budget.conf"


def _entry_set(descriptions):
    return {confgen.normalize_description(d) for d in descriptions}


def descriptions(conf_text: str) -> list[str]:
    """The run-entry descriptions of a conf as written (HELM's own parser reads them in test_run.py)."""
    return re.findall(r'description:\s*"([^"]*)"', conf_text)


def test_open_task_list_reproduces_the_reference_conf(tmp_path):
    reference = descriptions(REFERENCE.read_text())
    path = confgen.write_conf(confgen.generate(confgen.load_task_list("open")), tmp_path / "open.conf")
    generated = descriptions(path.read_text())  # read back what HELM would read
    assert len(generated) == len(reference) == OPEN_SUITE_RUNS == 88
    assert _entry_set(generated) == _entry_set(reference)


def test_budget_is_apportioned_over_families_then_runs():
    tasks = confgen.load_task_list("open")
    entries = confgen.generate(tasks)
    assert sum(e.max_eval_instances for e in entries) == tasks.budget == OPEN_SUITE_INSTANCES == 600
    # HELM sends perturbed copies of these too (the eval-time projection counts them)
    augmented = [e for e in entries if "data_augmentation=canonical" in e.description]
    assert sum(e.max_eval_instances for e in augmented) == OPEN_SUITE_AUGMENTED_INSTANCES == 216
    half = confgen.generate(tasks, budget=300)
    assert sum(e.max_eval_instances for e in half) == 300
    capped = confgen.generate(tasks, cap=2)
    assert max(e.max_eval_instances for e in capped) == 2 and len(capped) == 88


def test_apportion_and_even_split():
    assert confgen.apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert confgen.apportion(600, [18, 19]) == [292, 308]
    # equal remainders (144/264 each for the first and the sixth): the earlier weight gets the instance; float
    # quotas made them differ in the last bit and gave it to the sixth
    assert confgen.apportion(216, [8, 49, 10, 60, 26, 30, 46, 35]) == [7, 40, 8, 49, 21, 24, 38, 29]
    entries = confgen.generate(
        confgen.TaskList(families=[confgen.TaskFamily(name="f", scenario="s", share=1, args={"k": ["a", "b", "c"]})]),
        budget=8,
    )
    assert [e.max_eval_instances for e in entries] == [2, 3, 3]  # the remainder goes to the last runs
    assert entries[0].description == "s:model=neurips/local,k=a,max_eval_instances=2"


def test_plain_yaml_numbers_and_booleans_are_args_as_helm_writes_them(tmp_path):
    """`[2, 3]` was three "Input should be a valid string" lines: HELM reads every arg as text anyway."""
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("families:\n  - {name: d, scenario: dyck_language, args: {num_parenthesis_pairs: [2, 3]}}\n")
    quoted = "families:\n  - {name: d, scenario: dyck_language, args: {num_parenthesis_pairs: ['2', '3']}}\n"
    assert confgen.load_task_list(tasks) == confgen.TaskList.model_validate(yaml.safe_load(quoted))
    family = confgen.TaskFamily(name="f", scenario="s", args={"p": 0.5, "cot": [True, False]})  # HELM: cot=false
    assert family.run_args() == [{"p": "0.5", "cot": "true"}, {"p": "0.5", "cot": "false"}]
    with pytest.raises(ValueError, match="k: '2' listed twice would run the same entry twice"):
        confgen.TaskFamily(name="f", scenario="s", args={"k": [2, "2"]})


def test_a_cap_keeps_an_entry_that_asks_for_fewer():
    descriptions = ["s:k=a,max_eval_instances=2", "s:k=b,max_eval_instances=50", "s:k=c"]
    capped = [e.description for e in confgen.capped_entries(descriptions, 5)]
    assert capped == [f"s:model=neurips/local,k={k},max_eval_instances={n}" for k, n in [("a", 2), ("b", 5), ("c", 5)]]


def test_quick_suite_runs_offline():
    scenarios = {
        confgen.normalize_description(e.description)[0] for e in confgen.generate(confgen.load_task_list("quick"))
    }
    assert "simple_mcqa" in scenarios
    assert scenarios <= OFFLINE_SCENARIOS


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(confgen.ConfError, match="no task list 'nope'.*known: open, quick"):
        confgen.load_task_list("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("families:\n  - name: x\n    scenario: mmlu\n    args: {model: other}\n")
    with pytest.raises(confgen.ConfError, match=r"(?s)bad.yaml.*- families\[0\]\.args: .*set by the generator"):
        confgen.load_task_list(bad)
    bad.write_text("families:\n  - name: x\n    scenario: mmlu\n    args: {subject: []}\n")  # was a ZeroDivisionError
    with pytest.raises(confgen.ConfError, match=r"args: subject: an empty list makes no run; give at least one value"):
        confgen.load_task_list(bad)
    twice = "families:\n  - {name: x, scenario: mmlu, args: {subject: [a]}}\n"
    twice += "  - {name: y, scenario: mmlu, args: {subject: a}}\n"  # the same run, from another family
    bad.write_text(twice)
    with pytest.raises(confgen.ConfError, match=r"families 'x' and 'y' both run mmlu:subject=a; keep one"):
        confgen.generate(confgen.load_task_list(bad))
    same_name = "budget: 5\nfamilies:\n  - {name: a, scenario: simple_mcqa}\n  - {name: b, scenario: dyck_language}\n"
    bad.write_text(same_name + "  - {name: a, scenario: simple_mcqa}\n")  # one run under one name: it ran twice
    with pytest.raises(confgen.ConfError, match=r"families\[0\] and families\[2\] are both named 'a'; give each its"):
        confgen.load_task_list(bad)
    bad.write_text("families:\n  - name: x\n    scenario: mmlu\n    args: {subject: [a, b, 'a']}\n")
    with pytest.raises(confgen.ConfError, match=r"args: subject: 'a' listed twice would run the same entry twice"):
        confgen.load_task_list(bad)
    bad.write_text('families:\n  - name: x\n    scenario: mmlu\n    args: {subject: ["a,b", "q\\"z"]}\n')
    with pytest.raises(confgen.ConfError, match=r"(?s)subject='a,b': a name or value cannot hold , = or \""):
        confgen.load_task_list(bad)  # HELM would read a,b as two args, and the quote breaks the conf
    # HELM reads a name up to ':', and helm-run found this one unknown only once the server had started
    bad.write_text('families:\n  - {name: x, scenario: "bad scenario:x"}\n  - {name: y, scenario: "mmlu,k=v"}\n')
    said = r"\.scenario: one HELM run spec name \(mmlu, big_bench, ...\), with no space and none of : , = or \""
    with pytest.raises(confgen.ConfError, match=rf"(?s)\[0\]{said} \(got 'bad scenario:x'\).*\[1\]{said} \(got 'mm"):
        confgen.load_task_list(bad)
    bad.write_text("families:\n  - name: x\n    scenario: mmlu\n    shares: 2\n")
    with pytest.raises(confgen.ConfError, match=r"families\[0\]\.shares: Extra inputs are not permitted \(got 2\)"):
        confgen.load_task_list(bad)
    bad.write_bytes(b"families: caf\xe9\n")
    with pytest.raises(confgen.ConfError, match=r"bad.yaml:\n  - not UTF-8 text \(byte 0xe9 at offset 13\)"):
        confgen.load_task_list(bad)
    with pytest.raises(confgen.ConfError, match="budget of 10 instances cannot cover the 88 runs"):
        confgen.generate(confgen.load_task_list("open"), budget=10)
    with pytest.raises(confgen.ConfError, match="budget of 0 instances cannot cover the 10 runs"):
        confgen.generate(confgen.load_task_list("quick"), budget=0)  # 0 is not "the task list's own"
    open_suite = confgen.load_task_list("open")
    least, exact = confgen.least_budget(open_suite)
    assert exact and confgen.generate(open_suite, budget=least) and least > 88  # 88 runs, shared unevenly
    with pytest.raises(confgen.ConfError, match=rf"budget of {least - 1}: family .* give at least {least}: every bu"):
        confgen.generate(open_suite, budget=least - 1)
    with pytest.raises(confgen.ConfError, match="at most 0 instances per run leaves nothing to evaluate"):
        confgen.generate(confgen.load_task_list("quick"), cap=0)


def test_a_name_or_arg_that_would_change_the_conf_or_the_run_is_refused(tmp_path):
    """A newline in a name made the rest of it live HOCON after `# `; "induction " failed only inside helm-run."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "families:\n"
        '  - {name: "a\\nentries: [ {description: \\"x\\"}", scenario: simple_mcqa}\n'
        '  - {name: "tab\\there", scenario: dyck_language}\n'
        '  - {name: sr, scenario: synthetic_reasoning, args: {mode: [pattern_match, "induction "]}}\n'
        '  - {name: lead, scenario: synthetic_reasoning_natural, args: {" difficulty": easy}}\n'
        '  - {name: cr, scenario: mmlu, args: {subject: "a\\rb"}}\n'
    )
    result = CliRunner().invoke(app, ["helm-conf", str(bad), "--out", str(tmp_path / "run.conf")])
    unprintable = "cannot hold a newline, tab or other non-printing character"
    spaced = (
        "a name or value cannot start or end with a space, nor hold a newline, tab or other non-printing character"
    )
    assert result.exit_code == 1 and result.output.splitlines()[1:] == [
        f"  - families[0].name: a family name {unprintable} (got 'a\\nentries: [ {{description: \"x\"}}')",
        f"  - families[1].name: a family name {unprintable} (got 'tab\\there')",
        f"  - families[2].args: family 'sr': 'mode'='induction ': {spaced}",
        f"  - families[3].args: family 'lead': ' difficulty'='easy': {spaced}",
        f"  - families[4].args: family 'cr': 'subject'='a\\rb': {spaced}",
    ], result.output
    assert not (tmp_path / "run.conf").exists()
    bad.write_text('families:\n  - {name: "plain name, with: marks", scenario: mmlu, args: {subject: ""}}\n')
    assert confgen.load_task_list(bad).families[0].run_args() == [{"subject": ""}]  # still allowed


def test_the_least_budget_is_counted_fast_and_only_when_a_budget_falls_short(tmp_path):
    """Shares of 10^9 and 1 kept `helm-conf` counting budgets up one at a time: still running after 60 s."""
    tasks = tmp_path / "hugeshare.yaml"
    family = "  - {name: big, scenario: simple_mcqa, share: 1000000}\n  - {name: small, scenario: dyck_language}\n"
    tasks.write_text("families:\n" + family)
    started = time.monotonic()  # 7.6 s here, when the least budget was counted for an error not raised
    entries = confgen.generate(confgen.load_task_list(tasks), budget=600_000)
    assert time.monotonic() - started < 1 and sum(e.max_eval_instances for e in entries) == 600_000
    # The least, not one that covers: small's remainder b / (10^9 + 1) must beat big's, 1 - b / (10^9 + 1); the
    # search named 1000000001 (where small's quota is 1) as too uneven to go through
    tasks.write_text("budget: 5\nfamilies:\n" + family.replace("1000000", "1000000000"))
    command = [sys.executable, "-m", "llmkit.cli", "helm-conf", str(tasks), "--out", str(tmp_path / "run.conf")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stderr.endswith(
        "Error: a budget of 5: family 'small' gets 0 instances for its 1 runs; give at least 500000001: every "
        "budget from 500000001 on covers every run of this task list\n"
    ), result.stderr
    for budget, small in [(500_000_000, 0), (500_000_001, 1)]:
        assert confgen.apportion(budget, [10**9, 1])[1] == small
    tasks.write_text("budget: 5\nfamilies:\n" + family.replace("1000000", "1000"))
    with pytest.raises(confgen.ConfError, match="give at least 501: every budget from 501 on covers every run"):
        confgen.generate(confgen.load_task_list(tasks))
    # Largest remainder is not monotone: with [29, 30, 7, 17] over [2, 3, 2, 1] runs, 18 covers every run and 19
    # does not, so "give at least 18" (the search's first budget that covers) was wrong for 19
    for shares, runs in [([29, 30, 7, 17], [2, 3, 2, 1]), ([3, 1, 7], [1, 3, 2]), ([18, 19, 2], [5, 2, 1])]:
        families = [
            confgen.TaskFamily(name=f"f{i}", scenario=f"s{i}", share=share, args={"k": list(map(str, range(n)))})
            for i, (share, n) in enumerate(zip(shares, runs, strict=True))
        ]
        short = [b for b in range(1000) if not all(map(int.__ge__, confgen.apportion(b, shares), runs))]
        assert confgen.least_budget(confgen.TaskList(families=families)) == (short[-1] + 1, True)  # one at a time
        if shares == [29, 30, 7, 17]:
            assert short[-3:] == [16, 17, 19]
            with pytest.raises(confgen.ConfError, match="budget of 19: .* give at least 20: every budget from 20 on"):
                confgen.generate(confgen.TaskList(families=families), budget=19)
    # Three shares of 1 beside 405648381: the search, budget by budget down from the bound over which all cover,
    # met no short one in its 50,000 and named the lowest it tried as "too uneven"; the last short budget is a
    # quarter of the sum past 4 times it (f0's 5th instance: its remainder must reach f3's, W - 3 x), 200 million
    # budgets under that bound (a full count of them all, with numpy, agreed)
    families = _families([1, 1, 1, 405648381], [5, 1, 1, 6])
    assert confgen.least_budget(families) == (4 * 405648384 + 405648384 // 4, True)
    assert confgen.apportion(1724005631, [1, 1, 1, 405648381])[0] == 4
    assert confgen.apportion(1724005632, [1, 1, 1, 405648381])[0] == 5
    with pytest.raises(confgen.ConfError, match="give at least 1724005632: every budget from 1724005632 on covers"):
        confgen.generate(families, budget=5)
    # Uneven several ways at once, the search runs past its allowance: a budget from which all were checked
    families = _families([1, 285970257, 3, 27322287, 70, 453244222, 4, 3], [4, 4, 8, 5, 1, 7, 9, 2])
    started = time.monotonic()
    lowest, exact = confgen.least_budget(families)
    assert not exact and time.monotonic() - started < 5
    too_uneven = f"every budget from {lowest} on covers every run of this task list (its shares are too uneven to"
    with pytest.raises(confgen.ConfError, match=re.escape(too_uneven)):
        confgen.generate(families, budget=5)


def _families(shares: list[int], runs: list[int]) -> confgen.TaskList:
    return confgen.TaskList(
        families=[
            confgen.TaskFamily(name=f"f{i}", scenario=f"s{i}", share=share, args={"k": list(map(str, range(n)))})
            for i, (share, n) in enumerate(zip(shares, runs, strict=True))
        ]
    )


@pytest.mark.parametrize("seed", range(4))
def test_the_least_budget_is_one_past_the_last_short_one(seed):
    """Against a count of every budget up to the one over which every family's quota covers its runs: random
    shares, and shares near half their sum (the search then goes over every other budget)."""
    rng = random.Random(seed)
    for case in range(150):
        if case % 3:
            shares = [rng.randint(1, rng.choice([3, 10, 40])) for _ in range(rng.randint(1, 6))]
        else:
            half = rng.randint(100, 1000)
            shares = [1, half, half + rng.randint(0, 3), rng.randint(1, 9)]
        runs = [rng.randint(1, 6) for _ in shares]
        every = range(max(-(-n * sum(shares) // share) for n, share in zip(runs, shares, strict=True)) + 1)
        short = [b for b in every if not all(map(int.__ge__, confgen.apportion(b, shares), runs))]
        assert confgen.least_budget(_families(shares, runs)) == (short[-1] + 1, True), (shares, runs)


def test_an_out_it_cannot_write_is_one_error_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    says = {
        "a-file/run.conf": f"Error: --out: {tmp_path / 'a-file'} is a file, not a folder\n",
        "a-folder": f"Error: --out: {tmp_path / 'a-folder'} is a folder, not a file\n",
    }
    for out, message in says.items():
        result = CliRunner().invoke(app, ["helm-conf", "quick", "--budget", "20", "--out", str(tmp_path / out)])
        assert result.exit_code == 1 and result.output == message, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"] and not any(
        tmp_path.glob("a-folder/*")
    )
    ok = CliRunner().invoke(app, ["helm-conf", "quick", "--budget", "20", "--out", str(tmp_path / "new" / "run.conf")])
    assert ok.exit_code == 0 and descriptions((tmp_path / "new" / "run.conf").read_text())


def test_out_writes_over_its_own_conf_only(tmp_path):
    """`--out victim.yml` wrote over any file (a training config, a text file) without a word."""
    runs = {}
    for name in ["victim.yml", "notes.conf"]:
        (tmp_path / name).write_text("base_model: gpt2\n")
        command = [sys.executable, "-m", "llmkit.cli", "helm-conf", "quick", "--out", str(tmp_path / name)]
        runs[name] = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert runs[name].returncode == 1 and runs[name].stderr == (
            f"Error: --out: {tmp_path / name} is a file helm-conf did not write (its first line is not helm-conf's "
            "header); give a new path, or remove it first\n"
        ), runs[name].stderr
        assert (tmp_path / name).read_text() == "base_model: gpt2\n"
    # its own conf, one printed to a file, and an empty file are written over, whole
    (tmp_path / "printed.conf").write_text(CliRunner().invoke(app, ["helm-conf", "quick", "--budget", "20"]).output)
    (tmp_path / "empty.conf").write_text("")
    for name in ["printed.conf", "empty.conf", "printed.conf"]:
        result = CliRunner().invoke(app, ["helm-conf", "quick", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        written = (tmp_path / name).read_text()
        assert written.startswith(confgen.CONF_HEADER + "\n") and descriptions(written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.conf", "notes.conf", "printed.conf", "victim.yml"]


def test_helm_eval_rewrites_the_confs_in_its_own_folder_whoever_wrote_them(tmp_path):
    """helm-eval and decontaminate write <out>/confs/<suite>.conf: one an older version wrote there, without the
    header, is an earlier run's, rewritten (refused, a rerun of decontaminate into its --out was a traceback)."""
    from llmkit.helm_eval.run import prepare_conf

    (tmp_path / "confs").mkdir()
    (tmp_path / "confs" / "again.conf").write_text('entries: [{description: "mmlu:subject=anatomy", priority: 1}]\n')
    written = prepare_conf("quick", tmp_path, "again", budget=20).read_text()
    assert written.startswith(confgen.CONF_HEADER + "\n") and "anatomy" not in written


def test_an_empty_or_list_task_list_is_said_as_a_config_would_be(tmp_path):
    """pydantic's "Input should be a valid dictionary or instance of TaskList" where a config's loader said the file
    is empty, or got a list (llmkit.core.yaml_files reads all three kinds of file)."""
    for text, said in {
        "": "the file is empty: a task list is a mapping of keys to values (families: ...)",
        "- a\n- b\n": "expected a mapping of keys to values (families: ...), got a list",
    }.items():
        (tmp_path / "tasks.yml").write_text(text)
        result = CliRunner().invoke(app, ["helm-conf", str(tmp_path / "tasks.yml")])
        assert result.exit_code == 1 and result.output == (
            f"Error: invalid task list {tmp_path / 'tasks.yml'}:\n  - {said}\n"
        ), result.output


def test_a_conf_file_given_as_a_task_list_says_where_it_goes():
    result = CliRunner().invoke(app, ["helm-conf", str(REFERENCE)])  # not its HOCON's YAML parser error
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {REFERENCE} is already a HELM conf; helm-conf makes one from a task list (open, quick, skill, or "
        "a .yaml file): give the .conf to `llmkit helm-eval --conf`\n"
    )


def test_a_cap_lowers_the_counts_a_conf_file_sets_itself(tmp_path):
    """helm-run's --max-eval-instances leaves entries that carry a count alone: every entry of the challenge's conf."""
    from llmkit.helm_eval.run import prepare_conf

    reference = descriptions(REFERENCE.read_text())
    capped = descriptions(prepare_conf(REFERENCE, tmp_path, "smoke", cap=3).read_text())
    assert len(capped) == len(reference) == 88
    for original, entry in zip(reference, capped, strict=True):
        scenario, args = confgen.split_description(original)
        capped_scenario, capped_args = confgen.split_description(entry)
        assert capped_scenario == scenario
        assert capped_args.pop("max_eval_instances") == str(min(int(args.pop("max_eval_instances")), 3))
        assert capped_args == args  # model, subtask= (empty) and every other arg kept
    assert prepare_conf(REFERENCE, tmp_path, "as-is") == REFERENCE.resolve()  # no cap: the file itself


def test_a_tilde_in_out_is_the_home_folder(tmp_path, monkeypatch):
    """A quoted `--out "~/run.conf"` was written into a folder named `~` in the cwd."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    result = CliRunner().invoke(app, ["helm-conf", "quick", "--budget", "20", "--out", "~/confs/run.conf"])
    assert result.exit_code == 0, result.output
    assert descriptions((tmp_path / "home" / "confs" / "run.conf").read_text())
    assert not any((tmp_path / "cwd").iterdir())
