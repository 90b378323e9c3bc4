"""Publish a model folder (the merged model) to the Hugging Face hub; a dry run lists what would go, offline."""

from __future__ import annotations

import logging
from pathlib import Path

from llmkit.core.models import hub_id_problem

LOG = logging.getLogger(__name__)


def upload_folder(folder: str | Path, repo_id: str, *, dry_run: bool = False, private: bool = False) -> list[dict]:
    """Upload every file in `folder` to the model repo `repo_id` (created if missing).

    Args:
        folder: the directory to publish.
        repo_id: "user/name"; checked offline before anything is sent.
        dry_run: only list the files (path and size) that would be uploaded.
        private: create the repo private.

    Returns:
        [{"path": relative path, "bytes": size}] for each file.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Nothing to upload: {folder} is not a directory")
    if problem := hub_id_problem(repo_id):
        raise ValueError(f"hub_model_id {repo_id!r} is not a valid repo id: {problem}")
    files = [
        {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    if dry_run:
        return files
    api = HfApi()  # the token comes from HF_TOKEN or `hf auth login`, never from this project
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    LOG.info("Uploading %d files from %s to %s", len(files), folder, repo_id)
    api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type="model",
        commit_message=f"Upload merged model ({len(files)} files)",
    )
    return files
