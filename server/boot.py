"""Run the server from vLLM's venv, where the project is not installed: `<venv>/bin/python .../server/boot.py ARGS`.

The launcher (`vllm_venv.exec_server`) passes where the running project's packages live, in LLMKIT_PACKAGES
(`{"llmkit": folder, "llmkit.server": folder}`: the folders pyproject's package-dir maps, taken from the live
import system, so an editable and a plain install both work). They are registered here, then the server starts.
Standard library only until then.
"""

import importlib.util
import json
import os
import sys

# This file's folder, server/, is a package folder, not a place for top-level modules. (Not just sys.path[0]: vLLM
# spawns its engine process, which runs this file again with the parent's sys.path.)
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [path for path in sys.path if os.path.abspath(path or os.curdir) != _here]
for name, folder in json.loads(os.environ["LLMKIT_PACKAGES"]).items():  # parents first
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)

if __name__ == "__main__":
    from llmkit.server.__main__ import main

    main(sys.argv[1:])
