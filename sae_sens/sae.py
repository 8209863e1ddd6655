"""SAEs: resolve a name to a spec, load it through sae_bench's own loaders, encode activations.

Formats register in ``LOADERS`` (one function per format, SAELens style); names resolve through
``resolve_sae`` (see ``sae_sens.names`` for the SAEBench and GemmaScope grids).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import names
from .errors import SaeLoadError, UnknownSaeError
from .hashing import hash_file
from .names import TRAINER_ARCH, SaeSpec  # noqa: F401  (re-exported: the catalogue's data types)


class Sae:
    """A loaded SAE (a sae_bench ``BaseSAE`` or a sae_lens ``SAE`` inside) with the spec it came from."""

    def __init__(self, spec: SaeSpec, module: Any, *, weight_hash: str, info: dict[str, Any] | None = None):
        self.spec = spec
        self.module = module.eval()
        self.weight_hash = weight_hash
        self.info = info or {}  # eval_results.json and similar, recorded in the manifest
        # the column-restricted encoder, looked up once: the lookup reads a threshold (on a GPU, a sync)
        self._columns: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] | None = None

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
        self.module.to(device=torch.device(device))  # sae_bench's ``to`` also updates ``module.device``
        return self

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """All latents: [..., d_in] -> [..., d_sae], exactly the underlying module's ``encode``."""
        return self.module.encode(x.to(self.device, self.dtype))

    @torch.inference_mode()
    def encode_latents(self, x: torch.Tensor, latents: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Only the given latents: [..., d_in] -> [..., len(latents)]; equal to ``encode(x)[..., latents]``.

        Where a latent depends only on its own encoder column (ReLU, p-anneal, JumpReLU, gated, and the
        BatchTopK family, which uses a global threshold at inference) only those columns are computed.
        TopK needs every pre-activation of a token, so it runs in chunks of ``chunk`` tokens to keep
        memory bounded.
        """
        x = x.to(self.device, self.dtype)
        if latents is not None:
            latents = torch.as_tensor(latents, dtype=torch.long, device=self.device)
            if self._columns is None:
                self._columns = (_columns_encoder(self.module),)
            fast = self._columns[0]
            if fast is not None:
                return fast(x, latents)
        shape = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        n_out = self.d_sae if latents is None else int(latents.numel())
        out = torch.empty((flat.shape[0], n_out), dtype=self.dtype, device=self.device)
        for start in range(0, flat.shape[0], chunk):
            acts = self.module.encode(flat[start : start + chunk])
            out[start : start + chunk] = acts if latents is None else acts[:, latents]
        return out.reshape(*shape, n_out)


def _columns_encoder(module: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``encode`` restricted to some latents, op for op as in sae_bench's classes; None where a latent
    depends on the others (TopK without a threshold) or the module is not a sae_bench class."""
    from sae_bench.custom_saes.batch_topk_sae import BatchTopKSAE
    from sae_bench.custom_saes.gated_sae import GatedSAE
    from sae_bench.custom_saes.jumprelu_sae import JumpReluSAE
    from sae_bench.custom_saes.relu_sae import ReluSAE
    from sae_bench.custom_saes.topk_sae import TopKSAE

    m = module
    if isinstance(m, ReluSAE):
        return lambda x, idx: torch.relu((x - m.b_dec) @ m.W_enc[:, idx] + m.b_enc[idx])
    if isinstance(m, JumpReluSAE):

        def jumprelu(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            pre = x @ m.W_enc[:, idx] + m.b_enc[idx]
            return (pre > m.threshold[idx]) * torch.nn.functional.relu(pre)

        return jumprelu
    if isinstance(m, GatedSAE):

        def gated(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            x_enc = (x - m.b_dec) @ m.W_enc[:, idx]
            f_gate = (x_enc + m.gate_bias[idx] > 0).to(dtype=m.W_enc.dtype)
            return f_gate * torch.nn.functional.relu(m.r_mag[idx].exp() * x_enc + m.b_mag[idx])

        return gated
    # an unset threshold (< 0) is an error in the module's own encode: let it raise there
    if isinstance(m, (BatchTopKSAE, TopKSAE)) and m.use_threshold and float(m.threshold) >= 0:

        def thresholded(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            post = torch.nn.functional.relu((x - m.b_dec) @ m.W_enc[:, idx] + m.b_enc[idx])
            return post * (post > m.threshold)

        return thresholded
    return None


# ----- loaders --------------------------------------------------------------------------------
Loader = Callable[[SaeSpec, torch.device, torch.dtype], Sae]
LOADERS: dict[str, Loader] = {}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn

    return deco


@contextlib.contextmanager
def _sae_bench_reads(files: dict[str, Path]) -> Iterator[None]:
    """Make sae_bench's loaders, which call ``hf_hub_download`` themselves (into ``./downloaded_saes``),
    read files we already have: local ones, or ones ``hub.download`` put in the normal hub cache."""
    import sae_bench.custom_saes.batch_topk_sae as m1
    import sae_bench.custom_saes.gated_sae as m2
    import sae_bench.custom_saes.jumprelu_sae as m3
    import sae_bench.custom_saes.relu_sae as m4
    import sae_bench.custom_saes.topk_sae as m5

    def local_download(repo_id: str, filename: str, **_: Any) -> str:
        if filename not in files or not files[filename].exists():
            raise SaeLoadError(f"missing SAE file {filename}", "a dictionary_learning folder needs ae.pt and config.json")
        return str(files[filename])

    modules = (m1, m2, m3, m4, m5)
    saved = [m.hf_hub_download for m in modules]
    for m in modules:
        m.hf_hub_download = local_download  # type: ignore[attr-defined]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # they print state-dict keys
            yield
    finally:
        for m, fn in zip(modules, saved, strict=True):
            m.hf_hub_download = fn  # type: ignore[attr-defined]


def _check_width(spec: SaeSpec, module: Any, path: Path) -> None:
    width = int(module.W_enc.shape[1])
    if spec.width is not None and width != spec.width:
        raise SaeLoadError(
            f"{spec.name!r} should have {spec.width} latents but {path} has {width}",
            "the file does not match the name; delete it from the cache and download again",
        )


def dictionary_learning_loaders() -> dict[str, Callable[..., Any]]:
    """trainer_class -> sae_bench's loader function: the same functions as sae_bench's ``TRAINER_LOADERS``
    (relu and p-anneal share one). That table lives in its run-all-evals module, whose import pulls
    in every eval and costs seconds, so the mapping is restated here; a test checks it stays equal."""
    from sae_bench.custom_saes import batch_topk_sae, gated_sae, jumprelu_sae, relu_sae, topk_sae

    return {
        "MatryoshkaBatchTopKTrainer": batch_topk_sae.load_dictionary_learning_matryoshka_batch_topk_sae,
        "BatchTopKTrainer": batch_topk_sae.load_dictionary_learning_batch_topk_sae,
        "TopKTrainer": topk_sae.load_dictionary_learning_topk_sae,
        "StandardTrainerAprilUpdate": relu_sae.load_dictionary_learning_relu_sae,
        "StandardTrainer": relu_sae.load_dictionary_learning_relu_sae,
        "PAnnealTrainer": relu_sae.load_dictionary_learning_relu_sae,
        "JumpReluTrainer": jumprelu_sae.load_dictionary_learning_jump_relu_sae,
        "GatedSAETrainer": gated_sae.load_dictionary_learning_gated_sae,
    }


def _call_sae_bench(loader: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    """sae_bench's loaders signal bad files with bare asserts and ValueErrors: name the file instead."""
    try:
        return loader(**kwargs)
    except SaeLoadError:
        raise
    except (AssertionError, ValueError, KeyError, RuntimeError) as e:
        raise SaeLoadError(
            f"sae_bench could not load {what}: {type(e).__name__} {str(e).splitlines()[0] if str(e) else ''}".strip(),
            "check that the files are a complete, unmodified SAE of this architecture",
        ) from e


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
    arch = TRAINER_ARCH.get(trainer_class)
    if spec.architecture and arch and spec.architecture != arch:
        raise SaeLoadError(
            f"{spec.name!r} should be a {spec.architecture} SAE but {cfg_path} says {trainer_class}",
            "the files do not match the name; delete them from the cache and download again",
        )
    if spec.layer is not None and trainer.get("layer") is not None and int(trainer["layer"]) != spec.layer:
        raise SaeLoadError(
            f"{spec.name!r} should read layer {spec.layer} but {cfg_path} says layer {trainer['layer']}",
            "the files do not match the name; delete them from the cache and download again",
        )
    lm_name = str(trainer.get("lm_name", ""))
    with _sae_bench_reads({"ae.pt": folder / "ae.pt", "config.json": cfg_path}):
        module = _call_sae_bench(
            loaders[trainer_class],
            str(folder),
            repo_id="local",
            filename="ae.pt",
            model_name=lm_name.split("/")[-1] if lm_name else "",
            device=device,
            dtype=dtype,
            layer=trainer.get("layer"),
        )
    _check_width(spec, module, folder / "ae.pt")
    info: dict[str, Any] = {"config": config}
    ev = folder / "eval_results.json"
    if ev.exists():
        info["eval_results"] = json.loads(ev.read_text())
    layer = spec.layer if spec.layer is not None else trainer.get("layer")
    spec = replace(
        spec,
        architecture=spec.architecture or arch,
        layer=layer,
        model_id=spec.model_id or lm_name or None,
        hook=spec.hook or (f"blocks.{layer}.hook_resid_post" if layer is not None else None),
        width=spec.width or int(module.W_enc.shape[1]),
    )
    return Sae(spec, module, weight_hash=hash_file(folder / "ae.pt"), info=info)


@register_loader("dictionary_learning")
def _load_dictionary_learning(spec: SaeSpec, device: torch.device, dtype: torch.dtype) -> Sae:
    if spec.path is None:
        raise SaeLoadError(f"SAE {spec.name!r} has no path")
    if spec.repo_id is None:
        return load_dictionary_learning_folder(Path(spec.path), spec, device, dtype)
    from . import hub

    ae = hub.download(spec.repo_id, spec.path)
    assert ae is not None  # not optional: a missing file raises
    stem = spec.path.rsplit("/", 1)[0]
    hub.download(spec.repo_id, f"{stem}/config.json")
    hub.download(spec.repo_id, f"{stem}/eval_results.json", optional=True)
    # the snapshot folder holds all three side by side, as a local dictionary_learning folder does
    return load_dictionary_learning_folder(ae.parent, spec, device, dtype)


@register_loader("gemmascope_npz")
def _load_gemmascope(spec: SaeSpec, device: torch.device, dtype: torch.dtype) -> Sae:
    from sae_bench.custom_saes.jumprelu_sae import load_gemma_scope_jumprelu_sae

    if spec.path is None:
        raise SaeLoadError(f"SAE {spec.name!r} has no path")
    if spec.repo_id is None:
        path = Path(spec.path)
    else:
        from . import hub

        downloaded = hub.download(spec.repo_id, spec.path)
        assert downloaded is not None
        path = downloaded
    if not path.is_file():
        raise SaeLoadError(f"GemmaScope file {path} not found", "give the path of a params.npz")
    with _sae_bench_reads({"params.npz": path}):
        module = _call_sae_bench(
            load_gemma_scope_jumprelu_sae,
            str(path),
            repo_id="local",
            filename="params.npz",
            layer=spec.layer if spec.layer is not None else 0,
            model_name=(spec.model_id or "").split("/")[-1],
            device=device,
            dtype=dtype,
        )
    _check_width(spec, module, path)
    spec = replace(spec, architecture="jumprelu", width=spec.width or int(module.W_enc.shape[1]))
    return Sae(spec, module, weight_hash=hash_file(path))


# sae_lens's architecture names -> our codes (as in the SAEBench names)
SAELENS_ARCH = {"standard": "relu", "jumprelu": "jumprelu", "gated": "gated", "topk": "topk",
                "batchtopk": "btopk", "matryoshka_batchtopk": "matbtopk"}


def _state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@register_loader("saelens")
def _load_saelens(spec: SaeSpec, device: torch.device, dtype: torch.dtype) -> Sae:
    from sae_lens import SAE

    dt = str(dtype).removeprefix("torch.")
    release = spec.extra.get("release")
    if release:
        try:
            module = SAE.from_pretrained(str(release), str(spec.path), device=str(device), dtype=dt)
        except ValueError as e:
            raise _unknown_saelens(str(release), str(spec.path)) from e
    else:
        module = SAE.load_from_disk(str(spec.path), device=str(device), dtype=dt)
    meta = module.cfg.metadata
    hook = getattr(meta, "hook_name", None) or spec.hook
    model_name = getattr(meta, "model_name", None)
    model_id = spec.model_id
    if model_id is None and model_name:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:  # sae_lens records TransformerLens names ("gemma-2-2b"); the model loader wants hub ids
            model_id = get_official_model_name(model_name)
        except ValueError:
            model_id = model_name
    layer = spec.layer
    if layer is None and hook:
        m = re.match(r"^blocks\.(\d+)\.", hook)
        layer = int(m.group(1)) if m else None
    arch = module.cfg.architecture()
    spec = replace(
        spec,
        architecture=spec.architecture or SAELENS_ARCH.get(arch, arch),
        model_id=model_id,
        layer=layer,
        hook=hook,
        width=spec.width or int(module.cfg.d_sae),
    )
    return Sae(spec, module, weight_hash=_state_hash(module))


def _unknown_saelens(release: str, sae_id: str) -> UnknownSaeError:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        return UnknownSaeError(
            f"sae_lens has no release {release!r}",
            (f"did you mean {', '.join(close)}? " if close else "") + "see sae_lens's pretrained SAEs table",
        )
    ids = list(directory[release].saes_map)
    close = difflib.get_close_matches(sae_id, ids, n=3)
    return UnknownSaeError(
        f"sae_lens release {release!r} has no SAE {sae_id!r}",
        (f"did you mean {', '.join(close)}? " if close else "") + f"it has {len(ids)}, e.g. {ids[0]}",
    )


def resolve_sae(name: str) -> SaeSpec:
    """Turn a user-given SAE name (or path) into a spec. Unknown names list what is valid."""
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
