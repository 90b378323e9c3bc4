"""The datasets the project ships in axolotl_configs/data/, each the output of its generator in llmkit.data.

    llmkit default-dataset [--check]      (or: python -m llmkit.data.shipped [--check])

A committed file must stay byte-for-byte its generator's output: `--check` says which file differs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from llmkit.core.files import write_atomic
from llmkit.data import default_dataset, skill_dataset
from llmkit.data.rows import InputOutputRow


def generators() -> dict[Path, Callable[[], list[InputOutputRow]]]:
    """Shipped file → the function that makes its rows (paths read at call time, so a test can move them)."""
    return {
        default_dataset.DATASET_FILE: default_dataset.generate_rows,
        skill_dataset.DATASET_FILE: skill_dataset.generate_rows,
    }


def render(rows: list[InputOutputRow]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(check: bool = False) -> int:
    """Write every shipped dataset, or with `check` only compare them; 1 when a file differs."""
    differs = 0
    for path, generate in generators().items():
        text = render(generate())
        if check:
            ok = path.is_file() and path.read_text(encoding="utf-8") == text
            differs += not ok
            print(f"{path}: {'matches the generator' if ok else 'differs from the generator'}")  # noqa: T201
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"wrote {write_atomic(path, text)}")  # noqa: T201
    return 1 if differs else 0


if __name__ == "__main__":
    raise SystemExit(main(check="--check" in sys.argv[1:]))
