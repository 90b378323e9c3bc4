"""Reading HELM's output files and laying out the score table."""

from __future__ import annotations

import json

import pytest

from llmkit.helm_eval.summary import (
    Difference,
    RunScore,
    SuiteScores,
    bar_chart,
    chart_figure,
    difference,
    load_suite,
    markdown_table,
    paired_bootstrap,
    table_rows,
)


def _write_run(suite_dir, name, groups, stats, request_times):
    run_dir = suite_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "run_spec.json").write_text(json.dumps({"name": name, "groups": groups}))
    # The valid split's stats come first, with other values: the report reads the test split's.
    stat_list = [{"name": {"name": key, "split": "valid"}, "count": 1, "mean": 99.0} for key in stats]
    stat_list += [{"name": {"name": key, "split": "test"}, "count": 1, "mean": value} for key, value in stats.items()]
    stat_list.append({"name": {"name": "exact_match", "split": "test", "perturbation": {"name": "x"}}, "mean": 0.0})
    (run_dir / "stats.json").write_text(json.dumps(stat_list))
    states = [{"result": {"request_time": t}} for t in request_times]
    (run_dir / "scenario_state.json").write_text(json.dumps({"request_states": states}))


def test_main_metric_is_the_most_specific_groups_that_the_run_has(tmp_path):
    suite_dir = tmp_path / "runs" / "s"
    schema = {
        "run_groups": [
            {"name": "synthetic_reasoning", "environment": {"main_name": "quasi_exact_match", "main_split": "test"}},
            {
                "name": "synthetic_reasoning_natural",
                "environment": {"main_name": "f1_set_match", "main_split": "test"},
            },
        ]
    }
    suite_dir.mkdir(parents=True)
    (suite_dir / "schema.json").write_text(json.dumps(schema))
    stats = {"f1_set_match": 0.25, "quasi_exact_match": 0.0, "num_instances": 2}
    _write_run(suite_dir, "natural", ["synthetic_reasoning", "synthetic_reasoning_natural"], stats, [1.0, 3.0])
    _write_run(suite_dir, "mcqa", ["simple_mcqa"], {"exact_match": 0.5, "num_instances": 2}, [2.0, 2.0])
    rows = {row.run: row for row in load_suite(tmp_path, "s").rows}
    assert (rows["natural"].metric, rows["natural"].score, rows["natural"].mean_request_s) == (
        "f1_set_match",
        0.25,
        2.0,
    )
    assert (rows["mcqa"].metric, rows["mcqa"].score, rows["mcqa"].requests) == ("exact_match", 0.5, 2)


def test_before_helm_summarize_the_main_metric_comes_from_helms_own_schema(tmp_path, helm_venv):
    """Ctrl-C before helm-summarize wrote schema.json: every run was scored on exact_match, a "-" for dyck and
    synthetic_reasoning_natural, which HELM scores on other metrics."""
    suite_dir = tmp_path / "runs" / "s"
    stats = {"exact_match_indicator": 1.0, "num_instances": 1}
    _write_run(suite_dir, "dyck", ["dyck_language"], stats, [1.0])
    stats = {"f1_set_match": 0.25, "quasi_exact_match": 0.0, "num_instances": 2}
    _write_run(suite_dir, "natural", ["synthetic_reasoning", "synthetic_reasoning_natural"], stats, [1.0, 3.0])
    assert not (suite_dir / "schema.json").exists()
    rows = {row.run: (row.metric, row.score) for row in load_suite(tmp_path, "s").rows}
    assert rows == {"dyck": ("exact_match_indicator", 1.0), "natural": ("f1_set_match", 0.25)}


def _suite(label, scores):
    rows = [
        RunScore(
            run=f"{run}:model=neurips_local,max_eval_instances=4",
            metric="exact_match",
            score=score,
            instances=4,
            requests=4,
            mean_request_s=0.5,
        )
        for run, score in scores.items()
    ]
    return SuiteScores(suite=label, label=label, runs_dir="/x", rows=rows)


def test_comparison_puts_scores_side_by_side_with_the_change():
    header, body = table_rows(
        [_suite("base", {"simple_mcqa": 0.25, "dyck": 1.0}), _suite("tuned", {"simple_mcqa": 1.0})]
    )
    assert header[:5] == ["run", "metric", "score [1]", "score [2]", "Δ [2]−[1] [95% CI]"]
    assert body[0][:5] == ["simple_mcqa", "exact_match", "0.250", "1.000", "+0.750"]
    assert body[1][:5] == ["dyck", "exact_match", "1.000", "–", "–"]  # a run only one side has
    assert markdown_table([_suite("base", {"a": 0.5}), _suite("tuned", {"a": 0.5})]).startswith("[1] base; [2] tuned")


def test_the_chart_labels_every_bar_and_keeps_the_legend_off_the_axis(tmp_path):
    """A score of 0 drew no bar and no number, as if the run were missing; the legend was drawn over "main metric"."""
    import matplotlib.pyplot as plt

    suites = [_suite("base", {"simple_mcqa": 1.0, "dyck": 0.0, "cls": 0.25}), _suite("tuned", {"dyck": 0.0})]
    fig = chart_figure(suites, "HELM main metric per run: t")
    try:
        fig.canvas.draw()
        [ax] = fig.axes
        assert [text.get_text() for text in ax.texts] == ["1.000", "0.000", "0.250", "not run", "0.000", "not run"]
        renderer = fig.canvas.get_renderer()
        assert ax.xaxis.label.get_text() == "main metric"
        assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.xaxis.get_tightbbox(renderer))
    finally:
        plt.close(fig)
    assert bar_chart(suites, tmp_path / "t.png", "t").read_bytes()[:4] == b"\x89PNG"


def test_paired_bootstrap_interval():
    ids = [f"id{i}" for i in range(200)]
    same = dict.fromkeys(ids, 1.0)
    assert paired_bootstrap(same, same) == Difference(delta=0.0, low=0.0, high=0.0, instances=200)
    base = {key: float(i % 2) for i, key in enumerate(ids)}  # 0.5
    # 40 instances gained, 10 lost: +0.15, and a 95% interval that stays above zero
    tuned = {
        key: 1.0 if i % 2 == 0 and i < 80 else (0.0 if i % 2 and i < 20 else base[key]) for i, key in enumerate(ids)
    }
    found = paired_bootstrap(base, tuned)
    assert found.delta == pytest.approx(0.15) and 0 < found.low < 0.15 < found.high < 0.3
    # the 2.5th and 97.5th percentiles for seed 0 (the 5th and 95th would be about 0.095 and 0.205)
    assert (found.low, found.high) == (pytest.approx(0.085), pytest.approx(0.215))
    # as many gained as lost: the interval holds zero
    mixed = {key: 1.0 - value if i < 60 else value for i, (key, value) in enumerate(base.items())}
    found = paired_bootstrap(base, mixed)
    assert found.delta == pytest.approx(0.0) and found.low < 0 < found.high
    # only the instances both scored are paired
    assert paired_bootstrap(base, {"id0": 1.0, "other": 1.0}).instances == 1
    # too few pairs for a bootstrap: the change, and no interval that would look firm
    few = paired_bootstrap(base, dict.fromkeys(ids[:9], 1.0))
    assert (few.low, few.high, few.instances) == (None, None, 9) and few.delta == pytest.approx(5 / 9)
    assert few.text() == "+0.556 (n=9, no interval)"
    assert paired_bootstrap(base, dict.fromkeys(ids[:10], 1.0)).low is not None
    assert paired_bootstrap(base, {"other": 1.0}) is None


def test_per_instance_scores_are_read_and_paired_in_the_table(tmp_path):
    def write(suite: str, correct: set[int], count: int) -> None:
        suite_dir = tmp_path / "runs" / suite
        suite_dir.mkdir(parents=True)
        stats = {"exact_match": len(correct) / count, "num_instances": count}
        _write_run(suite_dir, "mcqa", ["simple_mcqa"], stats, [1.0])
        per_instance = [
            {
                "instance_id": f"id{i}",
                "train_trial_index": 0,
                "stats": [{"name": {"name": "exact_match", "split": "test"}, "count": 1, "mean": float(i in correct)}],
            }
            for i in range(count)
        ]
        (suite_dir / "mcqa" / "per_instance_stats.json").write_text(json.dumps(per_instance))

    write("base", {0, 4, 8}, 12)
    write("tuned", {0, 1, 2, 4, 5, 6, 8, 9, 10}, 12)
    suites = [load_suite(tmp_path, name) for name in ("base", "tuned")]
    assert suites[1].rows[0].per_instance == {f"id{i}": float(i % 4 != 3) for i in range(12)}
    header, [row] = table_rows(suites)
    assert header[4] == "Δ [2]−[1] [95% CI]"
    assert row[4].startswith("+0.500 [") and row[4] == difference(suites[0].rows[0], suites[1].rows[0]).text()
    # a run of 4 instances: the change without an interval
    write("base4", {0}, 4)
    write("tuned4", {0, 1, 2}, 4)
    _, [row] = table_rows([load_suite(tmp_path, name) for name in ("base4", "tuned4")])
    assert row[4] == "+0.500 (n=4, no interval)"


def test_a_narrow_terminal_folds_run_names_instead_of_cutting_them():
    from rich.console import Console

    from llmkit.helm_eval.summary import rich_table

    runs = [f"synthetic_reasoning:mode={mode}" for mode in ("pattern_match", "variable_substitution")]
    console = Console(width=60, record=True)
    console.print(rich_table([_suite("base", dict.fromkeys(runs, 0.5))], title="t"))
    first_column = "".join(line.split("│")[1].strip() for line in console.export_text().splitlines() if "│" in line)
    assert all(run in first_column for run in runs) and "…" not in first_column


def test_a_comparison_fits_an_80_column_terminal_with_every_number_whole():
    """Piped at 80 columns, all 8 columns folded into 9-character strips: `s/requ|est`, `+0.000|(n=3,|no|interva|l)`
    and 7 lines a run, about 60 lines for 10 runs."""
    from rich.console import Console

    from llmkit.helm_eval.summary import rich_table

    runs = [
        "simple_mcqa",
        *[f"synthetic_reasoning:mode={mode}" for mode in ("pattern_match", "variable_substitution")],
    ]
    runs += [f"dyck_language:num_parenthesis_pairs={n}" for n in range(2, 9)]

    def suite(label: str, count: int, shift: int) -> SuiteScores:
        rows = [
            RunScore(
                run=f"{run}{',' if ':' in run else ':'}model=neurips_local,max_eval_instances={count}",
                metric="quasi_exact_match",
                score=0.5,
                instances=count,
                requests=count,
                mean_request_s=12.34,
                per_instance={f"id{k}": float((k + shift) % 2) for k in range(count)},
            )
            for run in runs
        ]
        return SuiteScores(suite=label, label=label, runs_dir="/x", rows=rows)

    for count in (3, 20):  # no interval (under 10 paired instances), and one
        suites = [suite("outputs/base", count, 0), suite("outputs/tuned/merged", count, 1)]
        console = Console(width=80, record=True)
        console.print(rich_table(suites, title="HELM: outputs/base vs outputs/tuned/merged on quick.conf"))
        lines = console.export_text().splitlines()
        assert max(map(len, lines)) <= 80 and len(lines) <= 3 * len(runs) + 10, "\n".join(lines)
        cells = [cell.strip() for line in lines if line.startswith("│") for cell in line.strip("│").split("│")]
        delta = difference(suites[0].rows[0], suites[1].rows[0]).text()
        change, interval = {3: ("+0.333", "(n=3, no CI)"), 20: ("+0.000", "[-0.400, +0.400]")}[count]
        assert delta.startswith(change) and f"| {delta} |" in markdown_table(suites)  # the report keeps its text
        numbers = {cell for cell in cells if cell and cell[0] in "0123456789+-[("}
        assert numbers == {"0.500", str(count), change, interval}, numbers  # none cut across two lines
    assert "[1] outputs/base: 12.34 s/request; [2] outputs/tuned/merged: 12.34 s/request" in " ".join(lines)
    console = Console(width=160, record=True)  # wide enough for a s/request column per model
    console.print(rich_table(suites, title="t"))
    lines = console.export_text().splitlines()
    assert "s/request" in lines[2] and lines[5].split("│")[-3:-1] == [" 12.34     ", " 12.34     "], "\n".join(lines)
    assert len(lines) == 2 * len(runs) + 7 and lines[-1].strip() == "[1] outputs/base; [2] outputs/tuned/merged"


def test_model_labels_with_brackets_are_printed_as_written():
    """A label is a model's folder or hub id: rich read `[v2]` in `runs/m[v2]` as markup and dropped it."""
    from rich.console import Console

    from llmkit.helm_eval.summary import rich_table

    suites = [_suite("runs/m[v2]", {"simple_mcqa": 0.25}), _suite("runs/m[v3]", {"simple_mcqa": 0.5})]
    console = Console(width=400, record=True)
    console.print(rich_table(suites, title="HELM: runs/m[v2] vs runs/m[v3]"))
    text = console.export_text()
    assert "HELM: runs/m[v2] vs runs/m[v3]" in text and "[1] runs/m[v2]; [2] runs/m[v3]" in text
