"""File helpers of the common base: the cache's root, one sha256 of a file, and writes that appear whole or not at all.

Everything is built beside its target and renamed into place, so a failure or a kill never leaves a half-written
file or folder under the target's name. Temporaries are named `.<target>.<kind>-<pid>-<random>` so that a later
run can tell which ones a killed process left behind (its pid is gone) and remove them, or restore a good target
it had moved aside (`clean_stale`). Only the standard library, and psutil where `clean_stale` needs it: this module
ships in the server image, and `llmkit.core.venvs` (the vLLM launcher) imports it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import secrets
import shutil
import string
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

LOG = logging.getLogger(__name__)
_BLOCK = 1 << 22  # 4 MiB reads: few syscalls on multi-gigabyte weights, little memory


def cache_dir() -> Path:
    """Root of the project's cache (`LLMKIT_CACHE`, default ~/.cache/llmkit).

    An empty value is unset (`LLMKIT_CACHE=` made the current folder the cache). A relative one names a folder under
    the one the command started in: it is made absolute on first use and put back in the environment, so that a
    later chdir and the processes started elsewhere (helm-run, the server, a smoke test) use that same cache.
    """
    value = os.environ.get("LLMKIT_CACHE", "")
    if not value:
        return Path.home() / ".cache" / "llmkit"
    path = user_path(value)
    if not path.is_absolute():
        path = path.absolute()
        os.environ["LLMKIT_CACHE"] = str(path)
    return path


# "" is the current folder to Path: a run writing its output there was then refused for the files it holds, or
# stopped on a traceback; said alike for the config's key and the flag that overrides it.
EMPTY_FOLDER = "an empty folder name; give a folder (./x, or . for the current one)"


def user_path(path: str | os.PathLike) -> Path:
    """A path as the user wrote it (a flag, a config key), with `~` expanded as an unquoted shell word would have
    been: a quoted "~/x" or `--out=~/x` names the home folder's x, never a folder called `~` here."""
    return Path(path).expanduser()


class CacheError(OSError):
    """The project's cache cannot be written; the message names it and `LLMKIT_CACHE`."""


def check_cache_target(path: Path) -> None:
    """`path`, under `cache_dir()`, can be made and written (CacheError otherwise): checked before minutes of work
    whose result goes there (the embedded model's conversion, a tool's venv)."""
    try:
        check_folder_target(path)
    except OSError as err:
        raise CacheError(
            f"the project's cache {cache_dir()} cannot be written ({err}): set LLMKIT_CACHE to a folder you can "
            "write in"
        ) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents, read in blocks (weights do not fit in memory twice)."""
    target = path.resolve()
    # Hub snapshots link each file to a blob named by its sha256 (git-lfs files; small files get a 40-character
    # git sha1): reuse that name instead of rereading gigabytes.
    if path.is_symlink() and target.parent.name == "blobs" and _is_sha256(target.name):
        return target.name
    with path.open("rb") as f:
        return sha256_stream(f)


def sha256_stream(stream: BinaryIO) -> str:
    """Hex sha256 of what a binary stream holds, read in blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in string.hexdigits for c in name)


def write_atomic(path: Path, data: bytes | str, *, fsync: bool = False, parents: bool = False) -> Path:
    """Write `data` (str as UTF-8) to `path` through a temp file beside it and one rename.

    Readers see the old file or the new one, never part of either; if the write fails the temp file is removed
    (a SIGKILL's leftover is removed by the next write to `path`). `fsync` also survives a power loss; `parents`
    creates the missing folders first.
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)  # makes the rename itself durable
    return path


def _create_temp(path: Path) -> tuple[int, Path]:
    # os.open with mode 0o666 rather than mkstemp's 0o600: the file gets the umask's permissions, as open() would.
    while True:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staging_dir(target: Path, kind: str) -> Iterator[Path]:
    """A temp dir beside `target` (a link's target: see `through_link`), named with our pid; removed on any exit
    (SIGKILL aside: see `clean_stale`). Missing parent folders are made, and removed again if the block fails."""
    target = through_link(target)
    made = [folder for folder in target.absolute().parents if not folder.exists()]  # the innermost first
    target.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-{os.getpid()}-", dir=target.parent))
    # mkdtemp makes it 0700; once renamed into place it is the target, which gets the umask's permissions as a
    # mkdir's would (a container's non-root user or another account reads a merged model or a prepared dataset).
    path.chmod(0o777 & ~_umask())
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        _remove_empty(made)  # a refused or failed build leaves no new folders behind either
        raise
    shutil.rmtree(path, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another process wrote there too), or gone
            return


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (the filesystem root at worst)."""
    return next(p for p in (path, *path.absolute().parents) if p.exists())


def through_link(path: Path) -> Path:
    """`path`, or where it points when it is a symbolic link: what a write to `path` replaces, so that the link
    still names the new contents (a dangling link's target too, where its folder exists)."""
    if not path.is_symlink():
        return path
    try:
        real = path.resolve(strict=False)
    except RuntimeError:  # Python 3.11 says a loop of links so
        raise OSError(f"{path} is a link in a loop of links") from None
    if not real.parent.is_dir():
        raise FileNotFoundError(f"{path} is a link to {real}, in a folder that does not exist")
    return real


def check_folder_target(path: Path) -> None:
    """`path` is, or can be made, a folder this process may write in: checked before any work, never found after."""
    existing = nearest_existing(through_link(path))
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"no permission to write in {existing}")


def check_file_target(path: Path) -> None:
    """`path` is, or can be made, a file this process may write: not a folder, in a folder as `check_folder_target`."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    check_folder_target(path.parent)


def check_replaceable(path: Path, marker: str, what: str, ignore: Iterable[Path] = ()) -> None:
    """`path` is a folder a command may replace or write over: new, empty, or one it wrote itself (it holds
    `marker`). Entries in `ignore` (a lock file, a cache the config itself placed there) do not count.

    Raises:
        FileExistsError: the folder holds anything else, named (`what` says what the marker marks: "an earlier
            merge").
        OSError: see `check_folder_target`.
    """
    check_folder_target(path)
    if not path.is_dir() or (path / marker).is_file():
        return
    ignored = {p.resolve() for p in ignore}
    others = sorted(p.name for p in path.iterdir() if p.resolve() not in ignored)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise FileExistsError(
            f"{path} holds other files (no {marker}: not {what}): {shown}; it would be written over, so give a new "
            "or empty folder, or remove it first"
        )


def swap_in(built: Path, target: Path) -> None:
    """Rename `built` (a file or a folder) to `target`, replacing what is there of the same kind.

    A file over a file is one atomic rename. Otherwise an existing target is moved aside first and deleted only
    after the swap, so a kill in between leaves it for `clean_stale` to restore. A folder never replaces a file,
    nor a file a folder: that target is somebody else's. A link is written through (`through_link`): it stays.
    """
    target = through_link(target)
    if target.exists() and built.is_dir() != target.is_dir():
        kinds = ("a folder", "a file") if target.is_dir() else ("a file", "a folder")
        raise FileExistsError(f"{target} is {kinds[0]}; not replacing it with {kinds[1]}")
    if not built.is_dir() and not target.is_dir():
        os.replace(built, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists() or target.is_symlink():
        target.rename(old)
    built.rename(target)
    _remove(old)


def clean_stale(target: Path) -> None:
    """Remove what a killed process left beside `target` (a link's target: see `through_link`); restore a good
    target it had moved aside."""
    import psutil  # here, not at the top: `cache_dir` and the sha256s are standard library only

    target = through_link(target)
    for path in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        parts = path.name.removeprefix(f".{target.name}.").split("-")
        # A dot in the kind means another target's temporary (`.run.zip.old-1` is run.zip's, not run's).
        if len(parts) < 2 or "." in parts[0] or not parts[1].isdigit() or psutil.pid_exists(int(parts[1])):
            continue
        if parts[0] == "old" and not target.exists():
            LOG.warning("Restoring %s from %s (a run was killed while swapping it)", target, path)
            path.rename(target)
        else:
            LOG.info("Removing %s, left by a killed run", path)
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


LOW_SPACE_BYTES = 256 << 20  # below this, a failed write is taken for a full disk

# How libraries that are not Python's io say errno 28 and 27: tokenizers raises a bare Exception("No space left on
# device (os error 28)"), safetensors a SafetensorError; neither is an OSError, and neither has an errno.
_SAID_AS = {errno.ENOSPC: ("No space left on device", "os error 28"), errno.EFBIG: ("File too large", "os error 27")}


def _write_errno(err: BaseException) -> int | None:
    """ENOSPC or EFBIG where `err` is one, whatever type a library raised it as; None otherwise."""
    if (code := getattr(err, "errno", None)) in _SAID_AS:
        return code
    return next((code for code, words in _SAID_AS.items() if any(word in str(err) for word in words)), None)


def disk_full(path: Path, err: BaseException) -> str | None:
    """What to say when `err` came from the disk holding `path` filling up (errno 28 as any library raises it, or
    an OSError or RuntimeError while under LOW_SPACE_BYTES are free: torch reports a full disk as "unexpected pos"),
    or from a write past the process's file size limit (errno 27, `ulimit -f`); None otherwise."""
    code = _write_errno(err)
    if code == errno.EFBIG:
        import resource  # here: Unix only, and only once a write failed

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        written = getattr(err, "filename", None) or f"a file written for {path}"
        size = "" if limit == resource.RLIM_INFINITY else f" of {limit:,} bytes"
        return f"{written} reached this process's file size limit{size} (`ulimit -f`)"
    free = shutil.disk_usage(nearest_existing(path)).free
    if code != errno.ENOSPC and not (isinstance(err, (OSError, RuntimeError)) and free < LOW_SPACE_BYTES):
        return None
    return f"the disk holding {path} is full ({free / 2**20:.0f} MiB free)"


@contextmanager
def said_if_it_did_not_fit(path: Path, what: str, error: type[Exception] = OSError) -> Iterator[None]:
    """A full disk (or file size limit) met inside, raised as `error` in `disk_full`'s words for a write of `what` to
    `path` whose staging folder is gone: nothing of it is left (merge, submission, random-model). Any exception is
    looked at: safetensors and tokenizers raise a full disk as no OSError; the others go on as they were."""
    try:
        yield
    except Exception as err:
        if full := disk_full(path, err):
            raise error(f"{full}: {what} did not fit; nothing of it is left") from None
        raise
