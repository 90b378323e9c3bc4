"""Peak memory of `llmkit merge` on the embedded default model, against the merged model's size (`make bench`).

`run(out_dir)` merges a LoRA adapter shaped like the default config's (r 16, alpha 32, every linear layer) into
SmolLM2-135M, each merge in a fresh child process that reports its own peak resident set size (VmHWM), once
without and once with verification. The bound: the merge's peak stays under 3x the merged model's size.
Verification loads the models through transformers, which maps the whole (float32, for the embedded base)
checkpoint while loading; its peak is reported beside the merge's, not held to the bound.
`run(out_dir, model=DIR)` does the same on another base (e.g. one `llmkit random-model` wrote).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEAK_BOUND = 3.0  # peak RSS / merged model size


def _synthetic_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter with non-zero B (seeded), so the merge has real work to do; no training needed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")  # only lora_B is written
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.save_pretrained(out)
    return out


def _measure(adapter: Path, out: Path, verify: bool) -> dict:
    command = [sys.executable, "-m", "llmkit.merge.bench", str(adapter), str(out), "verify" if verify else "no"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"merge benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(out_dir: Path, model: str | None = None) -> dict:
    """Merge with and without verification; return (and write to out_dir/merge.json) peaks and ratios.

    Args:
        model: hub id or folder merged into instead of the embedded default.
    """
    from llmkit.core.models import resolve_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-merge-") as scratch:
        base = resolve_model(model)
        adapter = _synthetic_adapter(base.path, Path(scratch) / "adapter")
        results: dict = {"model": base.model_id}
        for verify in (False, True):
            merged = Path(scratch) / f"merged-{verify}"
            child = _measure(adapter, merged, verify)
            size = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
            above_imports = child["peak_rss_bytes"] - child["rss_after_imports_bytes"]
            results["with_verify" if verify else "merge_only"] = {
                **child,
                "merged_bytes": size,
                "peak_ratio": round(child["peak_rss_bytes"] / size, 2),
                "peak_above_imports_ratio": round(above_imports / size, 2),
                "within_bound": child["peak_rss_bytes"] < PEAK_BOUND * size,
            }
    results["bound"] = PEAK_BOUND
    (out_dir / "merge.json").write_text(json.dumps(results, indent=2) + "\n")
    _print(results)
    return results


def _print(results: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Merging a LoRA adapter into {escape(results['model'])}: peak memory (bound {PEAK_BOUND}x)")
    for column in ("merge", "merged size", "peak", "peak / merged size", "above the imports", "seconds"):
        table.add_column(column)
    for name in ("merge_only", "with_verify"):
        row = results[name]
        verdict = "" if name == "with_verify" else (" (within)" if row["within_bound"] else " (OVER the bound)")
        table.add_row(
            name.replace("_", " "),
            f"{row['merged_bytes'] / 1e6:.0f} MB",
            f"{row['peak_rss_bytes'] / 1e6:.0f} MB",
            f"{row['peak_ratio']:.2f}x{verdict}",
            f"{row['peak_above_imports_ratio']:.2f}x",
            f"{row['seconds']}",
        )
    Console().print(table)


def _peak_rss() -> int:
    # VmHWM, the process's own high-water mark. getrusage's ru_maxrss would keep the parent's peak across the
    # fork + exec that started this child.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (the merge benchmark needs Linux)")


def _child(adapter: str, out: str, verify: str) -> None:
    from llmkit.merge.fold import merge_adapter  # torch, transformers, peft, safetensors: the import baseline

    after_imports = _peak_rss()
    started = time.monotonic()
    merge_adapter(None, adapter, out, dtype="bfloat16", verify=verify == "verify")
    peak = _peak_rss()
    print(  # noqa: T201 (the child's report, read by the parent from its stdout)
        json.dumps(
            {
                "peak_rss_bytes": peak,
                "rss_after_imports_bytes": after_imports,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    _child(*sys.argv[1:4])
