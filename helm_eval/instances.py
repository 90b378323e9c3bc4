"""Dump the eval instances of every run entry in a HELM conf as JSON lines; runs inside HELM's own venv.

    <helm venv>/bin/python helm_eval/instances.py CONF OUT.jsonl BENCHMARK_OUTPUT

Used by `llmkit decontaminate`: crfm-helm builds each scenario exactly as helm-run does (the same run specs,
the same get_instances), and every instance of the eval splits is written, not only the ones a capped run samples.
This file imports crfm-helm, never llmkit (whose dependencies are not in HELM's venv).
"""

import json
import sys

from helm.benchmark.config_registry import register_builtin_configs_from_helm_package
from helm.benchmark.presentation.run_entry import read_run_entries
from helm.benchmark.run import run_entries_to_run_specs
from helm.benchmark.runner import set_benchmark_output_path
from helm.benchmark.scenarios.scenario import (
    CORRECT_TAG,
    EVAL_SPLITS,
    create_scenario,
    get_scenario_cache_path,
    with_instance_ids,
)


def main(conf_path: str, out_path: str, benchmark_output: str) -> None:
    register_builtin_configs_from_helm_package()
    set_benchmark_output_path(benchmark_output)
    run_specs = run_entries_to_run_specs(read_run_entries([conf_path]).entries)
    done = set()  # run specs of one scenario that differ only in the model share its instances
    with open(out_path, "w", encoding="utf-8") as out:
        for run_spec in run_specs:
            key = json.dumps([run_spec.scenario_spec.class_name, run_spec.scenario_spec.args], sort_keys=True)
            if key in done:
                continue
            done.add(key)
            scenario = create_scenario(run_spec.scenario_spec)
            cache = get_scenario_cache_path(benchmark_output, scenario.name)  # where a scenario downloads its data
            instances = with_instance_ids(scenario.get_instances(cache))
            for instance in instances:
                if instance.split not in EVAL_SPLITS:
                    continue
                references = [ref.output.text for ref in instance.references if CORRECT_TAG in ref.tags]
                row = {"run": run_spec.name, "split": instance.split, "id": instance.id, "input": instance.input.text}
                out.write(json.dumps({**row, "references": references}) + "\n")
            print(f"{run_spec.name}: {len(instances)} instances", file=sys.stderr)  # noqa: T201 (progress, in HELM's venv)


if __name__ == "__main__":
    main(*sys.argv[1:4])
