"""SAE names -> specs: the SAEBench grid, GemmaScope, sae_lens releases, packaged SAEs, local paths.

A spec says where the weights live (hub repo + file, or a local path), which loader reads them and
which model and hook they read. Nothing here downloads or loads weights or imports torch: the CLI
validates names with this module before any heavy import (``sae.py`` imports from here, never the
other way round).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnknownSaeError

# dictionary_learning trainer_class -> our architecture code
TRAINER_ARCH = {
    "StandardTrainer": "relu",
    "StandardTrainerAprilUpdate": "relu",
    "PAnnealTrainer": "pan",
    "TopKTrainer": "topk",
    "BatchTopKTrainer": "btopk",
    "MatryoshkaBatchTopKTrainer": "matbtopk",
    "JumpReluTrainer": "jumprelu",
    "GatedSAETrainer": "gated",
}


@dataclass(frozen=True)
class SaeSpec:
    """Where an SAE lives and what it reads. ``path`` is a file inside ``repo_id``, or a local path."""

    name: str
    source: str  # saebench | gemmascope | saelens | packaged | local
    format: str  # key of LOADERS: dictionary_learning | gemmascope_npz | saelens
    architecture: str | None = None
    model_id: str | None = None
    layer: int | None = None
    hook: str | None = None
    width: int | None = None
    sparsity: str | None = None
    repo_id: str | None = None
    path: str | None = None
    default_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----- SAEBench ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _BenchModel:
    model_id: str
    short: str  # the model's name inside repo and folder names
    layer: int
    dtype: str


SAEBENCH_MODELS = {
    "py": _BenchModel("EleutherAI/pythia-160m-deduped", "pythia-160m-deduped", 8, "float32"),
    "gem": _BenchModel("google/gemma-2-2b", "gemma-2-2b", 12, "bfloat16"),
}
SAEBENCH_WIDTHS = {"4k": 12, "16k": 14, "65k": 16}  # -> log2(latents)
# code -> (folder prefix in the adamkarvonen repos, folder infix in the canrager repos)
SAEBENCH_ARCHS = {
    "btopk": ("BatchTopK", "batch_top_k"),
    "matbtopk": ("MatryoshkaBatchTopK", "matryoshka_batch_top_k"),
    "gated": ("GatedSAE", "gated"),
    "jumprelu": ("JumpRelu", "jump_relu"),
    "topk": ("TopK", "top_k"),
    "relu": ("Standard", "standard_new"),
    "pan": ("PAnneal", "p_anneal"),
}
SAEBENCH_TRAINERS = range(6)
SAEBENCH_PATTERN = "{py|gem}_{4k|16k|65k}_{btopk|matbtopk|gated|jumprelu|topk|relu|pan}_s{0..5}"
_SAEBENCH_RE = re.compile(r"^(py|gem)_(\d+k)_([a-z]+)_s(\d+)$")


def saebench_names() -> list[str]:
    return [
        f"{m}_{w}_{a}_s{s}"
        for m in SAEBENCH_MODELS
        for w in SAEBENCH_WIDTHS
        for a in SAEBENCH_ARCHS
        for s in SAEBENCH_TRAINERS
    ]


def _saebench_spec(name: str, model: str, width: str, arch: str, trainer: int) -> SaeSpec:
    m = SAEBENCH_MODELS[model]
    log2 = SAEBENCH_WIDTHS[width]
    adam_prefix, canrager_infix = SAEBENCH_ARCHS[arch]
    # gemma 16k/65k were trained (and published) by a different author with different folder names
    if model == "gem" and width != "4k":
        repo = f"canrager/saebench_{m.short}_width-2pow{log2}_date-0107"
        folder = f"{m.short}_{canrager_infix}_width-2pow{log2}_date-0107"
    else:
        repo = f"adamkarvonen/saebench_{m.short}_width-2pow{log2}_date-0108"
        folder = f"{adam_prefix}_{m.short}__0108"
    return SaeSpec(
        name=name,
        source="saebench",
        format="dictionary_learning",
        architecture=arch,
        model_id=m.model_id,
        layer=m.layer,
        hook=f"blocks.{m.layer}.hook_resid_post",
        width=2**log2,
        sparsity=f"s{trainer}",
        repo_id=repo,
        path=f"{folder}/resid_post_layer_{m.layer}/trainer_{trainer}/ae.pt",
        default_dtype=m.dtype,
    )


def _saebench_problem(model: str, width: str, arch: str, trainer: int) -> str | None:
    if model not in SAEBENCH_MODELS:
        return f"model {model!r} is not one of py, gem"
    if width not in SAEBENCH_WIDTHS:
        return f"width {width!r} is not one of {', '.join(SAEBENCH_WIDTHS)}"
    if arch not in SAEBENCH_ARCHS:
        return f"architecture {arch!r} is not one of {', '.join(SAEBENCH_ARCHS)}"
    if trainer not in SAEBENCH_TRAINERS:
        return f"sparsity s{trainer} is not one of s0..s5"
    return None


# ----- GemmaScope -------------------------------------------------------------------------------
GEMMASCOPE_REPO = "google/gemma-scope-2b-pt-res"
GEMMASCOPE_RELEASE = "gemma-scope-2b-pt-res"  # the release name in sae_lens's catalogue
GEMMASCOPE_WIDTHS = {"16k": 14, "32k": 15, "65k": 16, "131k": 17, "262k": 18, "524k": 19, "1m": 20}
GEMMASCOPE_ALIASES = {"128k": "131k"}  # the original README's name for a width the hub calls 131k
GEMMASCOPE_DEFAULT_LAYER = 12
GEMMASCOPE_PATTERN = "gscope_{width}_l0_{N} (layer 12) or gscope_layer{L}_{width}_l0_{N}"
_GEMMASCOPE_RE = re.compile(r"^gscope_(?:layer(\d+)_)?(\d+[km])_l0_(\d+)$")
_CATALOGUE_PATH_RE = re.compile(r"^layer_(\d+)/width_(\w+)/average_l0_(\d+)$")


@functools.lru_cache(maxsize=1)
def gemmascope_catalogue() -> dict[tuple[int, str], list[int]]:
    """(layer, width) -> sorted L0 values, from the catalogue shipped inside the installed sae_lens.

    Only the ``gemma-scope-2b-pt-res`` block of the (large) yaml is parsed, which keeps this fast.
    """
    import importlib.util

    import yaml

    # find the package without importing it: importing sae_lens takes seconds
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    if not path.exists():
        return {}
    text = path.read_text()
    start = text.find(f"\n{GEMMASCOPE_RELEASE}:\n")
    if start < 0:
        return {}
    end = re.search(r"\n\S", text[start + 1 :])
    block = text[start + 1 : start + 1 + end.start()] if end else text[start + 1 :]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    release = yaml.load(block, Loader=loader)[GEMMASCOPE_RELEASE]
    out: dict[tuple[int, str], list[int]] = {}
    for entry in release.get("saes", []):
        m = _CATALOGUE_PATH_RE.match(str(entry.get("path", "")))
        if m:
            out.setdefault((int(m.group(1)), m.group(2)), []).append(int(m.group(3)))
    return {k: sorted(v) for k, v in out.items()}


def gemmascope_name(layer: int, width: str, l0: int) -> str:
    if layer == GEMMASCOPE_DEFAULT_LAYER:
        return f"gscope_{width}_l0_{l0}"
    return f"gscope_layer{layer}_{width}_l0_{l0}"


def _gemmascope_spec(name: str, layer: int, width: str, l0: int, warnings: list[str]) -> SaeSpec:
    return SaeSpec(
        name=name,
        source="gemmascope",
        format="gemmascope_npz",
        architecture="jumprelu",
        model_id="google/gemma-2-2b",
        layer=layer,
        hook=f"blocks.{layer}.hook_resid_post",
        width=2 ** GEMMASCOPE_WIDTHS[width],
        sparsity=f"l0_{l0}",
        repo_id=GEMMASCOPE_REPO,
        path=f"layer_{layer}/width_{width}/average_l0_{l0}/params.npz",
        default_dtype="bfloat16",
        extra={"warnings": warnings} if warnings else {},
    )


def _resolve_gemmascope(name: str, m: re.Match[str]) -> SaeSpec:
    layer = int(m.group(1)) if m.group(1) is not None else GEMMASCOPE_DEFAULT_LAYER
    width, l0 = m.group(2), int(m.group(3))
    warnings = []
    if width in GEMMASCOPE_ALIASES:
        real = GEMMASCOPE_ALIASES[width]
        warnings.append(f"GemmaScope has no width {width}; using {real} ({gemmascope_name(layer, real, l0)})")
        width = real
    if width not in GEMMASCOPE_WIDTHS:
        raise UnknownSaeError(
            f"unknown GemmaScope width {width!r} in {name!r}",
            f"widths are {', '.join(GEMMASCOPE_WIDTHS)} (pattern {GEMMASCOPE_PATTERN})",
        )
    catalogue = gemmascope_catalogue()
    if catalogue:
        l0s = catalogue.get((layer, width))
        if l0s is None:
            layers = sorted({lay for lay, _ in catalogue})
            widths = [w for w in GEMMASCOPE_WIDTHS if (layer, w) in catalogue]
            if not widths:
                raise UnknownSaeError(
                    f"GemmaScope has no residual SAEs at layer {layer}",
                    f"layers are {layers[0]}..{layers[-1]}",
                )
            raise UnknownSaeError(
                f"GemmaScope has no width {width} at layer {layer}", f"widths there: {', '.join(widths)}"
            )
        if l0 not in l0s:
            nearest = sorted(l0s, key=lambda v: (abs(v - l0), v))[:3]
            raise UnknownSaeError(
                f"GemmaScope has no SAE with L0 {l0} at layer {layer}, width {width}",
                "nearest: " + ", ".join(gemmascope_name(layer, width, v) for v in nearest)
                + f" (all L0 values there: {', '.join(map(str, l0s))})",
            )
    else:
        warnings.append("sae_lens's GemmaScope catalogue was not found; the name was not validated")
    return _gemmascope_spec(gemmascope_name(layer, width, l0), layer, width, l0, warnings)


# ----- packaged and local SAEs ------------------------------------------------------------------
def packaged_dir() -> Path:
    return Path(__file__).parent / "demo_saes"


def _folder_spec(name: str, folder: Path, source: str) -> SaeSpec:
    """Spec of a dictionary_learning folder, filled from its ``config.json`` where readable."""
    try:
        trainer = json.loads((folder / "config.json").read_text()).get("trainer", {})
    except (OSError, ValueError):
        trainer = {}
    layer = trainer.get("layer")
    return SaeSpec(
        name=name,
        source=source,
        format="dictionary_learning",
        architecture=TRAINER_ARCH.get(str(trainer.get("trainer_class"))),
        model_id=trainer.get("lm_name") or None,
        layer=int(layer) if layer is not None else None,
        hook=f"blocks.{int(layer)}.hook_resid_post" if layer is not None else None,
        width=int(trainer["dict_size"]) if trainer.get("dict_size") else None,
        path=str(folder),
    )


def packaged_names() -> list[str]:
    root = packaged_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/ae.pt"))


def _resolve_path(name: str, path: Path) -> SaeSpec | None:
    if path.is_dir() and (path / "ae.pt").exists():
        return _folder_spec(name, path, "local")
    if path.is_dir() and (path / "cfg.json").exists() and any(path.glob("*.safetensors")):
        return SaeSpec(name=name, source="local", format="saelens", path=str(path))
    if path.is_file() and path.suffix == ".npz":
        # a GemmaScope file keeps its hub layout (…/layer_{L}/width_{W}/average_l0_{N}/params.npz)
        m = re.search(r"layer_(\d+)/width_(\w+)/average_l0_(\d+)/", path.as_posix())
        layer = int(m.group(1)) if m else None
        return SaeSpec(
            name=name,
            source="local",
            format="gemmascope_npz",
            architecture="jumprelu",
            model_id="google/gemma-2-2b" if "gemma-scope-2b" in path.as_posix() else None,
            layer=layer,
            hook=f"blocks.{layer}.hook_resid_post" if layer is not None else None,
            width=2 ** GEMMASCOPE_WIDTHS[m.group(2)] if m and m.group(2) in GEMMASCOPE_WIDTHS else None,
            sparsity=f"l0_{m.group(3)}" if m else None,
            path=str(path),
        )
    return None


# ----- resolve ----------------------------------------------------------------------------------
SAELENS_PREFIX = "saelens:"
_HINT = (
    f"SAEBench names are {SAEBENCH_PATTERN} (e.g. py_16k_gated_s2); GemmaScope names are {GEMMASCOPE_PATTERN} "
    f"(e.g. gscope_16k_l0_82); sae_lens SAEs are saelens:<release>/<sae_id>; or give a folder with ae.pt + "
    "config.json, a sae_lens folder (cfg.json + safetensors) or a GemmaScope params.npz. `sae-sens saes` lists them"
)


def resolve(name: str) -> SaeSpec:
    """A user-given SAE name or path -> its spec. Unknown names raise ``UnknownSaeError`` with suggestions."""
    raw = name.strip()
    key = raw.lower()
    if m := _SAEBENCH_RE.match(key):
        model, width, arch, trainer = m.group(1), m.group(2), m.group(3), int(m.group(4))
        problem = _saebench_problem(model, width, arch, trainer)
        if problem is None:
            return _saebench_spec(key, model, width, arch, trainer)
        raise UnknownSaeError(f"unknown SAEBench SAE {raw!r}: {problem}", _suggest(key, f"pattern {SAEBENCH_PATTERN}"))
    if m := _GEMMASCOPE_RE.match(key):
        return _resolve_gemmascope(raw, m)
    if raw.startswith(SAELENS_PREFIX):
        release, _, sae_id = raw[len(SAELENS_PREFIX) :].partition("/")
        if not release or not sae_id:
            raise UnknownSaeError(
                f"malformed sae_lens name {raw!r}",
                "use saelens:<release>/<sae_id>, e.g. saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical",
            )
        return SaeSpec(name=raw, source="saelens", format="saelens", path=sae_id, extra={"release": release})
    if raw in packaged_names():
        return _folder_spec(raw, packaged_dir() / raw, "packaged")
    spec = _resolve_path(raw, Path(raw).expanduser())
    if spec is not None:
        return spec
    if Path(raw).expanduser().exists():
        raise UnknownSaeError(
            f"{raw} is not an SAE folder or file",
            "a dictionary_learning folder has ae.pt + config.json, a sae_lens folder cfg.json + *.safetensors; "
            "a GemmaScope file is params.npz",
        )
    if key.startswith(("py_", "gem_")):
        raise UnknownSaeError(f"malformed SAEBench name {raw!r}", _suggest(key, f"pattern {SAEBENCH_PATTERN}"))
    if key.startswith("gscope"):
        raise UnknownSaeError(f"malformed GemmaScope name {raw!r}", _suggest(key, f"pattern {GEMMASCOPE_PATTERN}"))
    raise UnknownSaeError(f"unknown SAE {raw!r}", _suggest(key, _HINT))


def _suggest(key: str, hint: str) -> str:
    pool = saebench_names() + packaged_names() + [s.name for s in _gemmascope_specs()]
    close = difflib.get_close_matches(key, pool, n=3, cutoff=0.6)
    return (f"did you mean {', '.join(close)}? " if close else "") + hint


def _gemmascope_specs() -> list[SaeSpec]:
    return [
        _gemmascope_spec(gemmascope_name(layer, width, l0), layer, width, l0, [])
        for (layer, width), l0s in sorted(gemmascope_catalogue().items())
        if width in GEMMASCOPE_WIDTHS
        for l0 in l0s
    ]


def known_names(filter: str | None = None) -> list[SaeSpec]:
    """Every SAE known by name (SAEBench grid, GemmaScope catalogue, packaged SAEs).

    ``filter``: a glob on the name when it has ``*``/``?``, else words that must each appear in the
    name, model, architecture or repo (case-insensitive).
    """
    specs = [resolve(n) for n in saebench_names()] + _gemmascope_specs()
    specs += [_folder_spec(n, packaged_dir() / n, "packaged") for n in packaged_names()]
    if not filter:
        return specs
    if any(c in filter for c in "*?["):
        return [s for s in specs if fnmatch.fnmatch(s.name, filter.lower())]
    words = filter.lower().split()

    def text(s: SaeSpec) -> str:
        return " ".join(str(v) for v in (s.name, s.model_id, s.architecture, s.repo_id) if v).lower()

    def matches(s: SaeSpec) -> bool:
        # a plain word is a whole part of a name ("topk" is not part of "btopk"); one with a separator
        # ("py_4k_gated", "gemma-2") is looked for as written
        t = text(s)
        parts = set(re.split(r"[^a-z0-9.]+", t))
        return all((w in parts) if re.fullmatch(r"[a-z0-9.]+", w) else (w in t) for w in words)

    return [s for s in specs if matches(s)]


# ----- what a name says about its SAE (the report's saes view) ----------------------------------
# Lenient on purpose: a folder named like a grammar (smol_1k_topk, a gscope name at another layer)
# still describes its SAE, though only registry names resolve to one.
MODEL_CODES = {code: m.model_id for code, m in SAEBENCH_MODELS.items()}
ARCHITECTURES = tuple(SAEBENCH_ARCHS)
_DESCRIBE_SAEBENCH_RE = re.compile(rf"^(py|gem)_(\d+[km])_({'|'.join(ARCHITECTURES)})_(s\d+)$")
_DESCRIBE_GSCOPE_RE = re.compile(r"^gscope_(?:layer(\d+)_)?(\d+[km]?)_l0_(\d+)$")
# <model>_<width>_<arch>[_s<N>]: the demo SAEs (smol_1152_topk) and folders named alike (a bare width has 3+ digits)
_DESCRIBE_DEMO_RE = re.compile(r"^([a-z][a-z0-9]*)_(\d+[km]|\d{3,})_([a-z0-9]+)(?:_(s\d+))?$")


def parse_width(token: str) -> int:
    """``4k`` -> 4096, ``65k`` -> 65536, ``1m`` -> 1048576, ``4096`` -> 4096.

    SAE widths are powers of two written loosely in thousands, so ``Nk`` snaps to the nearest
    power of two when that is within 5%, and is N*1000 otherwise.
    """
    m = re.fullmatch(r"(\d+)([km]?)", token.lower())
    if m is None:
        raise ValueError(f"not a width: {token!r}")
    n = int(m.group(1))
    if not m.group(2):
        return n
    approx = n * (1000 if m.group(2) == "k" else 1_000_000)
    pow2 = 1 << round(math.log2(approx))
    return pow2 if abs(pow2 - approx) <= 0.05 * approx else approx


def parse_sae_name(name: str) -> dict[str, Any]:
    """What an SAE name says about the SAE (SAEBench, GemmaScope and demo grammars); {} if nothing."""
    base = Path(name.rstrip("/")).name
    if m := _DESCRIBE_SAEBENCH_RE.match(base):
        code, width, arch, sparsity = m.groups()
        return {"model": MODEL_CODES[code], "width": parse_width(width), "architecture": arch,
                "sparsity": sparsity, "source": "saebench"}
    if m := _DESCRIBE_GSCOPE_RE.match(base):
        layer, width, l0 = m.groups()
        out: dict[str, Any] = {"model": SAEBENCH_MODELS["gem"].model_id, "width": parse_width(width), "architecture": "jumprelu",
                               "sparsity": f"l0_{l0}", "l0": float(l0), "source": "gemmascope"}
        if layer is not None:
            out["layer"] = int(layer)
        return out
    if m := _DESCRIBE_DEMO_RE.match(base):
        _, width, arch, sparsity = m.groups()
        out = {"width": parse_width(width), "architecture": arch}
        if sparsity:
            out["sparsity"] = sparsity
        return out
    return {}
