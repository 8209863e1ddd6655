"""Hugging Face Hub downloads into huggingface_hub's normal cache.

``HF_TOKEN`` is read by huggingface_hub itself and never passed through our code, so it cannot
reach a spec, manifest or log. With ``HF_HUB_OFFLINE=1`` only cached files are used; a file that
is not cached is a clear error naming the repo and the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SaeLoadError


def offline() -> bool:
    """Offline mode, read at call time (huggingface_hub reads the variable only once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def download(repo_id: str, filename: str, *, optional: bool = False) -> Path | None:
    """Local path of ``filename`` in ``repo_id`` (downloaded once, then served from the cache).

    ``optional`` files (e.g. ``eval_results.json``) return None when the repo or the cache lacks them.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    local_only = offline()
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only))
    except GatedRepoError as e:
        raise SaeLoadError(
            f"{repo_id} is gated: access to {filename} was refused",
            "accept the licence on huggingface.co and set HF_TOKEN to a token of that account",
        ) from e
    except RepositoryNotFoundError as e:
        raise SaeLoadError(
            f"Hugging Face repo {repo_id} not found (or private) while fetching {filename}",
            "check the repo id; for a private repo set HF_TOKEN",
        ) from e
    except LocalEntryNotFoundError as e:
        if optional:
            return None
        if local_only:
            raise SaeLoadError(
                f"{filename} from {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE=1",
                "unset HF_HUB_OFFLINE and run once with network access, or point HF_HUB_CACHE at a cache that has it",
            ) from e
        raise SaeLoadError(
            f"could not download {filename} from {repo_id}: the hub is unreachable and the file is not cached",
            "check the network connection, or set HF_HUB_CACHE to a cache that has the file",
        ) from e
    except EntryNotFoundError as e:
        if optional:
            return None
        raise SaeLoadError(f"{repo_id} has no file {filename}", "check the SAE name (sae-sens saes lists them)") from e
