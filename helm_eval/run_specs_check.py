"""Check a HELM conf's run entries against crfm-helm's own run specs; runs inside HELM's own venv.

    <helm venv>/bin/python helm_eval/run_specs_check.py CONF

Used by `llmkit helm-eval` before it starts a server: helm-run finds an unknown run spec name, or an arg its run
spec function does not take, only once the server is up, and says so with a traceback. The conf is read as helm-run
reads it (HOCON, then each description split into a name and args), and each name is looked up in HELM's registry
of run spec functions (with the plugins helm-run loads). Prints one JSON object: {"unknown": [names], "bad_args":
[description: problem], "descriptions": [the entries' descriptions, as HELM reads them]}. This file imports crfm-helm,
never llmkit (whose dependencies are not in HELM's venv).
"""

import contextlib
import inspect
import json
import sys

from helm.benchmark.presentation.run_entry import read_run_entries
from helm.benchmark.run import load_entry_point_plugins
from helm.benchmark.run_expander import RUN_EXPANDERS
from helm.benchmark.run_spec import get_run_spec_function
from helm.common.object_spec import parse_object_spec


def main(conf_path: str) -> None:
    unknown, bad_args, descriptions = set(), [], []
    with contextlib.redirect_stdout(sys.stderr):  # HELM logs to stdout, which carries the answer alone
        load_entry_point_plugins()
        for entry in read_run_entries([conf_path]).entries:
            descriptions.append(entry.description)
            spec = parse_object_spec(entry.description)
            function = get_run_spec_function(spec.class_name)
            if function is None:
                unknown.add(spec.class_name)
                continue
            args = {key: value for key, value in spec.args.items() if key not in RUN_EXPANDERS}  # as helm-run peels
            signature = inspect.signature(function)
            try:
                signature.bind_partial(**args)  # an arg it does not take first: a misspelt one is also one it lacks
                signature.bind(**args)
            except TypeError as err:
                bad_args.append(f"{entry.description}: {err}")
    # the answer, which the parent reads from this script's stdout
    print(json.dumps({"unknown": sorted(unknown), "bad_args": bad_args, "descriptions": descriptions}))  # noqa: T201


if __name__ == "__main__":
    main(sys.argv[1])
