"""Deterministic zip files: the same folder always gives the same bytes."""

from __future__ import annotations

import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

from huggingface_hub.utils import tqdm  # off with HF_HUB_DISABLE_PROGRESS_BARS: the CLI piped (cli._logging)

from llmkit.submit.manifest import is_weight_file

_ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can hold


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) if set, else 1980-01-01 00:00:00 UTC; never earlier than that."""
    return max(int(os.environ.get("SOURCE_DATE_EPOCH", _ZIP_EPOCH)), _ZIP_EPOCH)


def zip_timestamp() -> tuple[int, int, int, int, int, int]:
    """source_date_epoch() as a zip entry's date and time, in UTC."""
    return time.gmtime(source_date_epoch())[:6]


def write_zip(folder: Path, zip_path: Path) -> None:
    """Zip every file under `folder`, sorted by path, with fixed timestamps and permissions (rw-r--r--).

    Weight files are stored, not deflated: compressing floating-point weights saves little and takes long. A link
    to a file is zipped as a regular file holding its target's bytes, never as a link (which unzip would recreate,
    and verify-submission refuses).
    """
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for _, p in files)
    stamp = zip_timestamp()
    with (
        zipfile.ZipFile(zip_path, "w") as archive,
        tqdm(total=total, unit="B", unit_scale=True, desc=f"Writing {zip_path.name}", disable=total < 1 << 27) as bar,
    ):
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.create_system = 3  # unix, so the permission bits below are read
            info.external_attr = (stat.S_IFREG | 0o644) << 16  # a regular file, whatever `path` is
            info.compress_type = zipfile.ZIP_STORED if is_weight_file(name) else zipfile.ZIP_DEFLATED
            info.file_size = path.stat().st_size  # lets zipfile choose zip64 up front for files over 2 GiB
            with path.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            bar.update(info.file_size)
