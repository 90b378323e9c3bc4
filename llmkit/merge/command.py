"""`llmkit merge`: turn the command line into one merge (config, adapter or weighted), run it, publish it.

llmkit merge axolotl_configs/smollm2-135m-qlora.yml            # <output_dir>/merged
llmkit merge --adapter runs/a --out runs/a-merged [--base HuggingFaceTB/SmolLM2-135M-Instruct]
llmkit merge --weighted fusion.yml --out runs/fused              # see llmkit/merge/weighted.py
llmkit merge CONFIG --hub-model-id me/model-merged --dry-run     # list what would be uploaded (offline)
"""

from __future__ import annotations

import re
from pathlib import Path

from llmkit.core.errors import UsageError
from llmkit.core.files import user_path
from llmkit.merge.fold import MergeReport, merge_adapter, merge_from_config

# The flags that set these keys of a weighted merge: the flags' errors name them.
_FLAGS = {"combination_type": "--combination", "density": "--density", "weight": "--weight"}
_FLAG_KEYS = re.compile(r"\b(?:(combination_type|density)|adapters\[\d+\]\.(weight))\b")


def merge_command(
    config: str | None = None,
    *,
    base: str | None = None,
    adapters: list[str] | None = None,
    weights: list[float] | None = None,
    combination: str = "linear",
    density: float | None = None,
    weighted: str | None = None,
    out: str | None = None,
    hub_model_id: str | None = None,
    dry_run: bool = False,
    **options,
) -> tuple[MergeReport, list[dict] | None]:
    """Run the merge the arguments describe; `options` go to `merge_adapter` (dtype, nf4_roundtrip, verify, ...).

    Returns:
        The merge report, and the files uploaded to (or, with dry_run, listed for) `hub_model_id`.
    """
    adapters = [str(user_path(adapter)) for adapter in adapters or []]  # `~` too in the default <adapter>/merged
    out = user_path(out) if out else None
    weighted = str(user_path(weighted)) if weighted else None
    if dry_run and not hub_model_id:
        raise UsageError("--dry-run lists what --hub-model-id would upload; give --hub-model-id too")
    beside_weighted = {
        "CONFIG": config,
        "--base": base,
        "--adapter": adapters,
        "--weight": weights is not None,
        "--combination": combination != "linear",
        "--density": density is not None,
    }
    if weighted and (given := [flag for flag, value in beside_weighted.items() if value]):
        raise UsageError(
            f"--weighted {weighted} describes the whole merge (base_model, combination_type, density, adapters and "
            f"their weights): {', '.join(given)} would be ignored beside it; write them into the file"
        )
    # one adapter with --weight (or --combination, --density) is a weighted merge of one: the adapter scaled
    weighting = weights is not None or combination != "linear" or density is not None
    if weighted or len(adapters) > 1 or (adapters and weighting):
        report = _weighted(base, adapters, weights, combination, density, weighted, out, options)
    elif weighting:
        raise UsageError("--weight, --combination and --density apply to --adapter folders: give --adapter DIR")
    elif config:
        from llmkit.config.schema import load_config

        adapter = adapters[0] if adapters else None
        report = merge_from_config(load_config(config), base=base, adapter=adapter, out=out, **options)
    elif adapters:
        report = merge_adapter(base, adapters[0], out or Path(adapters[0]) / "merged", **options)
    else:
        raise UsageError("Nothing to merge: give a CONFIG, --adapter DIR, or --weighted FILE")
    uploaded = None
    if hub_model_id:
        from llmkit.merge.publish import upload_folder

        uploaded = upload_folder(report.out_dir, hub_model_id, dry_run=dry_run)
    return report, uploaded


def _weighted(base, adapters, weights, combination, density, weighted, out, options) -> MergeReport:
    from llmkit.merge.weighted import load_weighted, merge_weighted

    if out is None:
        raise UsageError("A weighted merge needs --out (where the combined model goes)")
    if weighted:
        spec = load_weighted(weighted)
    else:
        if weights and len(weights) != len(adapters):
            raise UsageError(f"{len(adapters)} --adapter but {len(weights)} --weight: give one weight per adapter")
        entries = [{"path": a, "weight": w} for a, w in zip(adapters, weights or [1.0] * len(adapters), strict=True)]
        spec = _flags_spec(base_model=base, combination_type=combination, density=density, adapters=entries)
    return merge_weighted(spec, out, **options)


def _flags_spec(**fields):
    """The WeightedMerge the flags describe; a problem is one line naming the flag (`--combination: ...`)."""
    from pydantic import ValidationError

    from llmkit.core.errors import problems
    from llmkit.merge.weighted import WeightedMerge

    try:
        return WeightedMerge(**fields)
    except ValidationError as err:
        lines = (_FLAG_KEYS.sub(lambda m: _FLAGS[m[1] or m[2]], line) for line in problems(err))
        raise UsageError("\n".join(lines)) from None


def print_report(report: MergeReport, uploaded: list[dict] | None, hub_model_id: str | None, console) -> None:
    """What `llmkit merge` ends with: a rich table of how the merge checked out and what was (or would be)
    uploaded, then the merged folder, the base and the adapter one per line, whole (a table folds a long path over
    lines that cannot be copied; a soft-wrapped line rich never breaks)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, title="Merged model" + (" (unchanged, skipped)" if report.skipped else ""))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("dtype", report.dtype + (", 4-bit round-trip of targeted weights" if report.nf4_roundtrip else ""))
    table.add_row("size", f"{report.size_bytes / 1e6:,.1f} MB in {len(report.files)} files")
    table.add_row("time", f"{report.seconds:.1f} s" + (" (when it was merged)" if report.skipped else ""))
    check = report.verification
    if check:
        tolerance = check["tolerance"]
        table.add_row(
            "largest logit difference", f"{check['max_logit_diff']:.3g} (tolerance {tolerance['max_logit_diff']})"
        )
        table.add_row(
            "greedy-token agreement",
            f"{check['token_agreement']:.1%} of {check['positions']} positions "
            f"(at least {tolerance['min_token_agreement']:.0%})",
        )
    else:
        table.add_row("verification", "skipped (--no-verify)")
    if uploaded is not None:
        total = sum(f["bytes"] for f in uploaded) / 1e6
        table.add_row(
            escape(f"hub {hub_model_id}"),
            escape(f"{len(uploaded)} files, {total:,.1f} MB: " + ", ".join(f["path"] for f in uploaded)),
        )
    console.print(table)
    for label, path in {"merged model": report.out_dir, "base": report.base, "adapter": report.adapter}.items():
        console.print(f"{label}: {path}", soft_wrap=True, markup=False, highlight=False)
