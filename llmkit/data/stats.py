"""What preparing the data did: rows read, kept and dropped per dataset, the split and the packing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.table import Table

CacheState = Literal["off", "hit", "miss"]


@dataclass
class DatasetStats:
    source: str
    type: str
    rows: int  # rows read
    kept: int  # tokenized rows (or completion chunks) kept
    dropped_overlong: int = 0  # longer than sequence_len
    dropped_untrained: int = 0  # no token left to learn from (everything masked)


@dataclass
class DataStats:
    datasets: list[DatasetStats] = field(default_factory=list)
    eval_datasets: list[DatasetStats] = field(default_factory=list)  # test_datasets
    train_rows: int = 0
    eval_rows: int = 0
    train_sequences: int = 0  # after packing; equals train_rows without it
    packing_efficiency: float | None = None  # real tokens / (sequences x sequence_len)
    cache: CacheState = "off"
    warnings: list[str] = field(default_factory=list)  # logged while the rows were built; said again on reuse

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DataStats:
        raw = json.loads(text)  # written by `to_json`
        lists = {key: [DatasetStats(**d) for d in raw.get(key, [])] for key in ("datasets", "eval_datasets")}
        return cls(**{**raw, **lists})


def stats_table(stats: DataStats) -> Table:
    """The data summary as a rich table: rows read, kept and dropped per dataset, then the totals (dataset paths and
    types escaped, not read as rich markup)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Training data (prepared-dataset cache: {stats.cache})")
    for column in ("dataset", "type", "rows", "kept", "too long", "all masked"):
        # the dataset's path folds over lines rather than losing its file name to an ellipsis
        left = column in ("dataset", "type")
        table.add_column(column, justify="left" if left else "right", overflow="fold" if left else "ellipsis")
    rows = [(d, d.type) for d in stats.datasets] + [(d, f"{d.type} (eval)") for d in stats.eval_datasets]
    for d, kind in rows:
        counts = (d.rows, d.kept, d.dropped_overlong, d.dropped_untrained)
        table.add_row(escape(d.source), escape(kind), *(str(n) for n in counts))
    packing = f", packed into {stats.train_sequences} sequences" if stats.packing_efficiency is not None else ""
    fill = f" ({stats.packing_efficiency:.0%} full)" if stats.packing_efficiency is not None else ""
    table.caption = f"train {stats.train_rows} rows{packing}{fill}, eval {stats.eval_rows} rows"
    return table
