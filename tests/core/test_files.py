"""The common base's file helpers on real files: one sha256, writes that appear whole or not at all, and cleanup of
what a killed process left behind."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmkit
from llmkit.core.assets import DEFAULT_CONFIG
from llmkit.core.files import check_folder_target, clean_stale, sha256_file, staging_dir, swap_in, write_atomic


def _dead_pid() -> int:
    """The pid of a process that has exited: what a killed run's temporaries are named with."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_writes_text_and_bytes_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "report.md"
    write_atomic(path, "old\n")
    assert write_atomic(path, b"new \xe2\x9c\x93\n") == path
    assert path.read_text() == "new \u2713\n" and _names(tmp_path) == ["report.md"]


def test_write_atomic_leaves_the_old_file_and_no_temporary_when_the_write_fails_midway(tmp_path):
    path = tmp_path / "run.conf"
    path.write_text("the good conf\n")
    # A real failure after part of the data is on disk: the file-size limit stops the write at 1,000 bytes.
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from llmkit.core.files import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # EFBIG as an OSError instead of a kill
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        "    write_atomic(Path(sys.argv[1]), b'x' * 100_000)\n"
        "except OSError as err:\n"
        "    print(err.errno)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "27"  # EFBIG: the write really failed midway
    assert path.read_text() == "the good conf\n" and _names(tmp_path) == ["run.conf"]


def test_write_atomic_removes_a_killed_writers_temporary_and_keeps_a_live_ones(tmp_path):
    path = tmp_path / "scores.json"
    killed = tmp_path / f".scores.json.tmp-{_dead_pid()}-abcd1234"
    live = tmp_path / f".scores.json.tmp-{os.getpid()}-abcd1234"  # a writer that is still at work
    killed.write_text("half")
    live.write_text("half")
    write_atomic(path, "{}")
    assert _names(tmp_path) == [live.name, "scores.json"]


def test_write_atomic_gives_the_file_the_umasks_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "conf", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "conf").stat().st_mode & 0o777 == 0o644  # as open() would, not a temp file's 0o600


def test_sha256_file_equals_hashlibs_on_a_file_of_several_blocks(tmp_path):
    path = tmp_path / "weights.bin"
    data = os.urandom(9 * 1024 * 1024 + 17)  # more than two 4 MiB reads, and a partial last one
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "weights.bin") == sha256_file(path)


def test_sha256_file_reads_a_hub_snapshot_files_hash_from_its_blob_name(tmp_path):
    blob_name = hashlib.sha256(b"the real weights").hexdigest()
    blob = tmp_path / "blobs" / blob_name
    blob.parent.mkdir()
    blob.write_bytes(b"not read: the name is trusted")  # so a matching result proves the file was not read
    snapshot = tmp_path / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blob)
    assert sha256_file(snapshot / "model.safetensors") == blob_name


def test_sha256_file_reads_files_whose_blob_name_is_not_a_sha256(tmp_path):
    # Small hub files (config.json) are stored under their 40-character git sha1, not their sha256.
    blob = tmp_path / "blobs" / ("a" * 40)
    blob.parent.mkdir()
    blob.write_bytes(b"{}")
    (tmp_path / "config.json").symlink_to(blob)
    plain_link = tmp_path / "elsewhere"
    plain_link.mkdir()
    (plain_link / ("b" * 64)).write_bytes(b"{}")
    (tmp_path / "other.json").symlink_to(plain_link / ("b" * 64))  # a sha256-like name outside `blobs/`
    expected = hashlib.sha256(b"{}").hexdigest()
    assert sha256_file(tmp_path / "config.json") == expected == sha256_file(tmp_path / "other.json")


def test_staging_dir_is_removed_when_the_build_fails(tmp_path):
    with pytest.raises(RuntimeError), staging_dir(tmp_path / "merged", "tmp") as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("the build failed")
    assert _names(tmp_path) == []


def test_staging_dir_makes_missing_parents_and_removes_them_when_the_build_fails(tmp_path):
    """A refused merge (or random model) left the new empty parent folders of its --out behind."""
    (tmp_path / "runs").mkdir()
    with pytest.raises(RuntimeError), staging_dir(tmp_path / "runs" / "new" / "deeper" / "merged", "tmp"):
        assert (tmp_path / "runs" / "new" / "deeper").is_dir()
        raise RuntimeError("the base does not fit the adapter")
    assert _names(tmp_path) == ["runs"] and _names(tmp_path / "runs") == []
    with staging_dir(tmp_path / "runs" / "new" / "merged", "tmp") as tmp:
        swap_in(tmp, tmp_path / "runs" / "new" / "merged")
    assert (tmp_path / "runs" / "new" / "merged").is_dir()


def test_a_staging_dir_renamed_into_place_has_a_mkdirs_permissions(tmp_path):
    """mkdtemp's 0700 made merged models and prepared datasets unreadable to any other user (a container's)."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        with staging_dir(tmp_path / "merged", "tmp") as tmp:
            swap_in(tmp, tmp_path / "merged")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o755


def test_swap_in_replaces_a_folder_and_a_file(tmp_path):
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "old.safetensors").write_bytes(b"old")
    (tmp_path / "run.zip").write_bytes(b"old zip")
    with staging_dir(tmp_path / "merged", "tmp") as tmp:
        (tmp / "built").mkdir()
        (tmp / "built" / "new.safetensors").write_bytes(b"new")
        (tmp / "built.zip").write_bytes(b"new zip")
        swap_in(tmp / "built", tmp_path / "merged")
        swap_in(tmp / "built.zip", tmp_path / "run.zip")
    assert _names(tmp_path) == ["merged", "run.zip"]
    assert _names(tmp_path / "merged") == ["new.safetensors"] and (tmp_path / "run.zip").read_bytes() == b"new zip"


def test_an_output_folder_never_replaces_a_file_and_the_file_is_named_first(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    check_folder_target(tmp_path / "merged" / "deeper")  # to be made: fine
    for target in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "merged"):
        with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'notes.txt'} is a file, not a folder"):
            check_folder_target(target)
    with staging_dir(tmp_path / "notes.txt", "tmp") as tmp:
        (tmp / "built").mkdir()
        with pytest.raises(FileExistsError, match="notes.txt is a file; not replacing it with a folder"):
            swap_in(tmp / "built", tmp_path / "notes.txt")
        (tmp / "built.zip").write_bytes(b"zip")
        with pytest.raises(FileExistsError, match="is a folder; not replacing it with a file"):
            swap_in(tmp / "built.zip", tmp / "built")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_output_folder_needs_write_permission_where_it_would_be_made(tmp_path, monkeypatch):
    # os.access stands in for a read-only folder: root, which these tests may run as, may write anywhere.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    check_folder_target(tmp_path / "open" / "merged")
    for target in (locked, locked / "merged" / "deeper"):  # the nearest folder that exists is the one checked
        with pytest.raises(PermissionError, match=f"no permission to write in {locked}$"):
            check_folder_target(target)


def test_clean_stale_restores_a_target_moved_aside_and_removes_a_killed_runs_folder(tmp_path):
    dead = _dead_pid()
    aside = tmp_path / f".merged.old-{dead}"
    aside.mkdir()
    (aside / "model.safetensors").write_bytes(b"good")
    (tmp_path / f".merged.tmp-{dead}-x1y2").mkdir()
    (tmp_path / f".merged.zip.old-{dead}").write_bytes(b"merged.zip's, not merged's")
    clean_stale(tmp_path / "merged")
    assert _names(tmp_path) == [f".merged.zip.old-{dead}", "merged"]
    assert (tmp_path / "merged" / "model.safetensors").read_bytes() == b"good"


@pytest.mark.parametrize("command", [["validate", str(DEFAULT_CONFIG)], ["preprocess", str(DEFAULT_CONFIG)]])
def test_a_cache_that_cannot_be_written_is_one_line_naming_llmkit_cache(tmp_path, command):
    """The embedded model is converted into the cache on first use: a read-only or misplaced LLMKIT_CACHE was a
    traceback from validate, preprocess and train."""
    (tmp_path / "file").write_text("")
    env = {**os.environ, "LLMKIT_CACHE": str(tmp_path / "file" / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "llmkit.cli", *command], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"Error: the project's cache {tmp_path / 'file' / 'cache'} cannot be written ({tmp_path / 'file'} is a file, "
        "not a folder): set LLMKIT_CACHE to a folder you can write in"
    )


def test_an_empty_llmkit_cache_is_unset_and_a_relative_one_is_the_starting_folders(tmp_path):
    """`LLMKIT_CACHE=` made the current folder the cache (517 MB of ./models), and a relative value a new cache in
    every folder a command ran in, or chdir'd to. Each cache here is blocked by a file, so that validate stops
    at once, naming the cache it would have written: the current folder's `models` file stood for the old cache."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "models").write_text("")  # `.` as the cache: validate would have said "work/models is a file"
    (work / "file").write_text("")
    (home / ".cache").write_text("")
    env = {**os.environ, "HOME": str(home), "HF_HOME": str(Path.home() / ".cache" / "huggingface")}
    env["HF_HUB_OFFLINE"] = "1"
    says = {
        "": f"{home / '.cache' / 'llmkit'} cannot be written ({home / '.cache'} is a file",
        "file/cache": f"{work / 'file' / 'cache'} cannot be written ({work / 'file'} is a file",
    }
    for value, said in says.items():
        done = subprocess.run(
            [sys.executable, "-m", "llmkit.cli", "validate", str(DEFAULT_CONFIG)],
            capture_output=True,
            text=True,
            env={**env, "LLMKIT_CACHE": value},
            cwd=work,
            timeout=300,
        )
        assert done.returncode == 1 and done.stderr.startswith(f"Error: the project's cache {said}"), done.stderr
    assert sorted(p.name for p in work.iterdir()) == ["file", "models"]


def test_a_relative_llmkit_cache_stays_where_it_was_first_read(tmp_path, monkeypatch):
    """The cache of a relative LLMKIT_CACHE moved with every chdir, and a process started elsewhere had its own."""
    from llmkit.core.files import cache_dir

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("LLMKIT_CACHE", "cache")
    assert cache_dir() == tmp_path / "a" / "cache"
    monkeypatch.chdir(tmp_path / "b")
    assert cache_dir() == tmp_path / "a" / "cache"
    child = subprocess.run(
        [sys.executable, "-c", "from llmkit.core.files import cache_dir; print(cache_dir())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout == f"{tmp_path / 'a' / 'cache'}\n", child.stderr


@pytest.mark.slow
def test_piped_the_embedded_models_conversion_draws_no_progress_bar(tmp_path):
    """Piped (CI, `| tee`), every command's first use of the embedded model redrew transformers' "Converting and
    de-quantizing GGUF tensors" bar with carriage returns: its GGUF loader's plain tqdm ignores the CLI's switch."""
    env = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    env.update(LLMKIT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "llmkit.cli", "validate", str(DEFAULT_CONFIG)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Converting the embedded model" in done.stderr and (tmp_path / "cache" / "models").is_dir()
    assert "\r" not in done.stderr and "GGUF tensors" not in done.stderr, done.stderr[-2000:]


def test_a_path_the_user_gives_has_its_tilde_expanded_by_user_path_alone():
    """One rule for `~` (user_path): twenty call sites wrote `Path(x).expanduser()` each for themselves."""
    root = Path(llmkit.__file__).parent.parent  # llmkit/, and the stages' folders it maps as llmkit.server and so on
    own = [
        f"{path.relative_to(root)}:{node.lineno}"
        for package in ("llmkit", "server", "helm_eval", "docker", "axolotl_configs")
        for path in sorted((root / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "expanduser"
    ]
    assert [place.split(":")[0] for place in own] == ["llmkit/core/files.py"], own  # user_path itself
