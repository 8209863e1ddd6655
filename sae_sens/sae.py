"""SAEs: resolve a name to a spec, load it through sae_bench's own loaders, encode activations.

Formats register in ``LOADERS`` (one function per format, SAELens style); names resolve through
``resolve_sae`` (see ``sae_sens.names`` for the SAEBench and GemmaScope grids).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import SaeLoadError, UnknownSaeError
from .hashing import hash_file

# Architecture codes, as in the SAEBench names (sae_sens.names) -> what encode_latents may do.
ELEMENTWISE_ARCHS = {"relu", "pan", "jumprelu", "gated"}  # a latent depends only on its own column
TOPK_ARCHS = {"topk"}  # needs all pre-activations of a token (chunked)
THRESHOLD_ARCHS = {"btopk", "matbtopk"}  # global threshold at inference: elementwise

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
    source: str  # saebench | gemmascope | saelens | local
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


class Sae:
    """A loaded SAE (a sae_bench ``BaseSAE`` inside) with the spec it came from."""

    def __init__(self, spec: SaeSpec, module: Any, *, weight_hash: str, info: dict[str, Any] | None = None):
        self.spec = spec
        self.module = module.eval()
        self.weight_hash = weight_hash
        self.info = info or {}  # eval_results.json and similar, recorded in the manifest

    @property
    def d_in(self) -> int:
        return int(self.module.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.module.W_enc.shape[1])

    @property
    def architecture(self) -> str:
        return self.spec.architecture or "unknown"

    @property
    def device(self) -> torch.device:
        return self.module.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.module.W_enc.dtype

    def to(self, device: torch.device | str) -> Sae:
        self.module.to(device)
        self.module.device = torch.device(device)
        return self

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """All latents: [..., d_in] -> [..., d_sae], exactly the sae_bench module's ``encode``."""
        return self.module.encode(x.to(self.dtype))

    @torch.inference_mode()
    def encode_latents(self, x: torch.Tensor, latents: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Only the given latents: [..., d_in] -> [..., len(latents)]; equal to ``encode(x)[..., latents]``.

        Rows are processed in chunks of ``chunk`` tokens so that TopK-style SAEs, which need every
        pre-activation of a token, stay within bounded memory.
        """
        shape = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        n_out = self.d_sae if latents is None else int(latents.numel())
        out = torch.empty((flat.shape[0], n_out), dtype=self.dtype, device=self.device)
        for start in range(0, flat.shape[0], chunk):
            acts = self.module.encode(flat[start : start + chunk].to(self.dtype))
            out[start : start + chunk] = acts if latents is None else acts[:, latents]
        return out.reshape(*shape, n_out)


# ----- loaders --------------------------------------------------------------------------------
Loader = Callable[[SaeSpec, torch.device, torch.dtype], Sae]
LOADERS: dict[str, Loader] = {}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn

    return deco


@contextlib.contextmanager
def _local_files(root: Path) -> Iterator[None]:
    """Let sae_bench's loaders (which call ``hf_hub_download``) read a local folder instead of the hub."""
    import sae_bench.custom_saes.batch_topk_sae as m1
    import sae_bench.custom_saes.gated_sae as m2
    import sae_bench.custom_saes.jumprelu_sae as m3
    import sae_bench.custom_saes.relu_sae as m4
    import sae_bench.custom_saes.topk_sae as m5

    def local_download(repo_id: str, filename: str, **_: Any) -> str:
        path = root / filename
        if not path.exists():
            raise SaeLoadError(f"missing SAE file {path}", "a dictionary_learning folder needs ae.pt and config.json")
        return str(path)

    modules = (m1, m2, m3, m4, m5)
    saved = [m.hf_hub_download for m in modules]
    for m in modules:
        m.hf_hub_download = local_download  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, fn in zip(modules, saved):
            m.hf_hub_download = fn  # type: ignore[attr-defined]


def dictionary_learning_loaders() -> dict[str, Callable[..., Any]]:
    from sae_bench.custom_saes.run_all_evals_dictionary_learning_saes import TRAINER_LOADERS

    return dict(TRAINER_LOADERS)


def load_dictionary_learning_folder(folder: Path, spec: SaeSpec, device: torch.device, dtype: torch.dtype) -> Sae:
    """``ae.pt`` + ``config.json`` (+ optional ``eval_results.json``) through sae_bench's loader."""
    cfg_path = folder / "config.json"
    if not (folder / "ae.pt").exists() or not cfg_path.exists():
        raise SaeLoadError(f"{folder} is not a dictionary_learning SAE folder", "it needs ae.pt and config.json")
    config = json.loads(cfg_path.read_text())
    trainer = config.get("trainer", {})
    trainer_class = trainer.get("trainer_class", "")
    loaders = dictionary_learning_loaders()
    if trainer_class not in loaders:
        raise SaeLoadError(
            f"unknown trainer_class {trainer_class!r} in {cfg_path}",
            f"supported: {', '.join(sorted(loaders))}",
        )
    lm_name = str(trainer.get("lm_name", ""))
    with _local_files(folder), contextlib.redirect_stdout(io.StringIO()):  # they print state-dict keys
        module = loaders[trainer_class](
            repo_id="local",
            filename="ae.pt",
            model_name=lm_name.split("/")[-1] if lm_name else "",
            device=device,
            dtype=dtype,
            layer=trainer.get("layer"),
        )
    info: dict[str, Any] = {"config": config}
    ev = folder / "eval_results.json"
    if ev.exists():
        info["eval_results"] = json.loads(ev.read_text())
    arch = spec.architecture or TRAINER_ARCH.get(trainer_class)
    layer = spec.layer if spec.layer is not None else trainer.get("layer")
    spec = SaeSpec(
        **{
            **spec.to_json(),
            "architecture": arch,
            "layer": layer,
            "model_id": spec.model_id or lm_name or None,
            "hook": spec.hook or (f"blocks.{layer}.hook_resid_post" if layer is not None else None),
            "width": spec.width or int(module.W_enc.shape[1]),
        }
    )
    return Sae(spec, module, weight_hash=hash_file(folder / "ae.pt"), info=info)


@register_loader("dictionary_learning")
def _load_dictionary_learning(spec: SaeSpec, device: torch.device, dtype: torch.dtype) -> Sae:
    if spec.path is None:
        raise SaeLoadError(f"SAE {spec.name!r} has no path")
    return load_dictionary_learning_folder(Path(spec.path), spec, device, dtype)


def resolve_sae(name: str) -> SaeSpec:
    """Turn a user-given SAE name (or path) into a spec. Unknown names list what is valid."""
    from . import names

    return names.resolve(name)


def load_sae(
    name_or_spec: str | Path | SaeSpec,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Sae:
    from .model import pick_device, pick_dtype

    spec = name_or_spec if isinstance(name_or_spec, SaeSpec) else resolve_sae(str(name_or_spec))
    if spec.format not in LOADERS:
        raise UnknownSaeError(f"no loader for format {spec.format!r}", f"known formats: {', '.join(sorted(LOADERS))}")
    dev = pick_device(str(device) if device is not None else None)
    dt = pick_dtype(dtype if dtype is not None else spec.default_dtype, spec.model_id or "")
    return LOADERS[spec.format](spec, dev, dt)
