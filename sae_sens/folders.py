"""Folder names in the store: a run name's rules, an SAE's readable slug plus a short hash of its identity
when the slug alone could collide (local paths, names a folder cannot hold)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

MAX_RUN_NAME = 100
_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def sae_slug(sae: str) -> str:
    """A folder name for an SAE name; names like ``saelens:rel/id`` or local paths contain '/'."""
    slug = sae.replace("\\", "/").rstrip("/")
    if "/" in slug and (slug.startswith((".", "/", "~")) or ":" not in slug):
        slug = Path(slug).name or slug  # a local path: its last component
    slug = slug.replace(":", "--").replace("/", "__")
    slug = re.sub(r"[^A-Za-z0-9._=+-]", "_", slug)
    return slug.lstrip(".") or "sae"


def _is_local_path(sae: str) -> bool:
    if re.match(r"^[A-Za-z][A-Za-z0-9_-]*:", sae):  # saelens:<release>/<id> and similar specs
        return False
    return "/" in sae or "\\" in sae or sae.startswith((".", "~")) or Path(sae).expanduser().exists()


def sae_identity(sae: str) -> str:
    """What makes an SAE itself: the resolved folder or file for local SAEs, else its name."""
    if _is_local_path(sae):
        return "path:" + str(Path(sae).expanduser().resolve())
    return sae


def sae_folder(sae: str) -> str:
    """The folder name of an SAE in a run: its slug, plus a short hash of its identity unless the slug
    is the name itself (so ``a/mysae`` and ``b/mysae`` never share ``mysae/``)."""
    slug = sae_slug(sae)
    identity = sae_identity(sae)
    if slug == sae and identity == sae:
        return slug
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


