"""A Hugging Face causal LM read at one hook point, with the forward pass stopped there.

Hook names follow TransformerLens (``blocks.{L}.hook_resid_post`` …) and are mapped onto the
modules of each supported Hugging Face family. Layers after the hook layer are dropped after
loading: they would only cost time and memory.

Masking policy (the same in SAE training, collect and score): every sequence starts with the
tokenizer's BOS token (EOS if it has none); position 0 never counts, nor do BOS, EOS and pad
positions. Some models (SmolLM2, Gemma) put a huge-norm activation on the first position of every
context whatever the token, so position 0 must be masked even without a BOS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import assets
from .errors import ConfigError, ModelError

HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)$")
HOOK_KINDS = ("resid_post", "resid_pre", "mlp_out", "attn_out")


@dataclass(frozen=True)
class Family:
    """Where TransformerLens's hook points live in one Hugging Face architecture."""

    layers: str  # path to the decoder-layer list
    attn_out: str  # submodule of a layer whose output is hook_attn_out
    mlp_out: str  # submodule of a layer whose output is hook_mlp_out


_PRE_NORM = ("self_attn", "mlp")
# Gemma 2/3 normalise each block's output before adding it to the residual stream; TransformerLens's
# hook_attn_out / hook_mlp_out read after that norm, so that resid_pre + attn_out + mlp_out = resid_post.
_SANDWICH_NORM = ("post_attention_layernorm", "post_feedforward_layernorm")
FAMILIES: dict[str, Family] = {
    "gpt_neox": Family("gpt_neox.layers", "attention", "mlp"),
    "gpt2": Family("transformer.h", "attn", "mlp"),
    "llama": Family("model.layers", *_PRE_NORM),
    "mistral": Family("model.layers", *_PRE_NORM),
    "qwen2": Family("model.layers", *_PRE_NORM),
    "qwen3": Family("model.layers", *_PRE_NORM),
    "gemma": Family("model.layers", *_PRE_NORM),
    "gemma2": Family("model.layers", *_SANDWICH_NORM),
    "gemma3_text": Family("model.layers", *_SANDWICH_NORM),
    "gemma3": Family("model.language_model.layers", *_SANDWICH_NORM),  # multimodal checkpoint, text tower
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"


def parse_hook(name: str) -> HookPoint:
    m = HOOK_RE.match(name.strip())
    if not m:
        raise ConfigError(
            f"unknown hook name {name!r}",
            "use blocks.<layer>.hook_resid_post, hook_resid_pre, hook_mlp_out or hook_attn_out",
        )
    return HookPoint(int(m.group(1)), m.group(2))


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str | torch.dtype | None, model_id: str = "") -> torch.dtype:
    if isinstance(requested, torch.dtype):
        return requested
    if requested and requested != "auto":
        if requested not in DTYPES:
            raise ConfigError(f"unknown dtype {requested!r}", f"use one of {', '.join(DTYPES)}")
        return DTYPES[requested]
    return torch.bfloat16 if "gemma" in model_id.lower() else torch.float32


class _StopForward(Exception):
    """Raised by the hook once the activation is captured: later layers are never run."""


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr_path(obj: Any, path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    setattr(obj, parts[-1], value)


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [b, s] long, right-padded
    attention_mask: torch.Tensor  # [b, s] long
    lengths: list[int]
    truncated: list[bool]


def bos_id(tokenizer: Any) -> int | None:
    """The id every scored sequence starts with: the tokenizer's BOS, else its EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[tuple[list[int], bool]]:
    """Per text: its token ids after a BOS, cut at ``max_length`` (BOS included), and whether it was cut.
    The one tokenisation of score (``HookedLM.encode_texts``) and of every export that lists its ids."""
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    first = bos_id(tokenizer)
    out = []
    for ids in enc:
        full = ([first] if first is not None else []) + list(ids)
        out.append((full[:max_length], len(full) > max_length))
    return out


class HookedLM:
    """A causal LM that returns the activation at one hook point and stops there."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        hook: str,
        *,
        model_id: str,
        revision: str | None = None,
        prune: bool = True,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.hook = parse_hook(hook)
        self.forward_calls = 0  # tests count these to prove reuse
        model_type = getattr(model.config, "model_type", "")
        if model_type not in FAMILIES:
            raise ModelError(
                f"model family {model_type!r} is not supported for hooks",
                f"supported families: {', '.join(sorted(FAMILIES))}",
            )
        self.family = FAMILIES[model_type]
        layers_path = self.family.layers
        layers = _get_attr_path(model, layers_path)
        n_layers = len(layers)
        if not 0 <= self.hook.layer < n_layers:
            raise ConfigError(
                f"hook layer {self.hook.layer} does not exist in {model_id}",
                f"the model has layers 0..{n_layers - 1}",
            )
        if prune and self.hook.layer + 1 < n_layers:
            _set_attr_path(model, layers_path, nn.ModuleList(list(layers)[: self.hook.layer + 1]))
            layers = _get_attr_path(model, layers_path)
        self._layer = layers[self.hook.layer]
        config: Any = model.config
        text_cfg = config.get_text_config()  # multimodal configs keep the LM's sizes there
        self.d_model = int(getattr(text_cfg, "hidden_size", 0) or getattr(text_cfg, "n_embd", 0))
        bos = bos_id(tokenizer)
        self.bos_id: int | None = bos
        special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        self.special_ids = sorted(i for i in special if i is not None)
        self._special: dict[torch.device, torch.Tensor] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (bos or 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ----- tokenization -----------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], max_length: int) -> list[tuple[list[int], bool]]:
        """Token ids with BOS prepended, truncated to ``max_length`` (BOS included)."""
        return encode_texts(self.tokenizer, texts, max_length)

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    def count_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Bool [b, s]: positions whose activations count (not position 0, BOS, EOS or pad)."""
        keep = attention_mask.bool().clone()
        keep[:, 0] = False
        if self.special_ids:
            device = input_ids.device
            if device not in self._special:  # built once per device: a tensor from a list is a blocking copy
                self._special[device] = torch.as_tensor(self.special_ids, device=device)
            keep &= ~torch.isin(input_ids, self._special[device])
        return keep

    # ----- forward ------------------------------------------------------------------------------
    def _hook_module(self) -> tuple[nn.Module, bool]:
        kind = self.hook.kind
        if kind == "resid_post":
            return self._layer, False
        if kind == "resid_pre":
            return self._layer, True
        if kind == "mlp_out":
            return getattr(self._layer, self.family.mlp_out), False
        return getattr(self._layer, self.family.attn_out), False

    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Activation at the hook point, [b, s, d_model], on the model's device and dtype."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        captured: list[torch.Tensor] = []
        module, pre = self._hook_module()

        if pre:

            def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                x = args[0] if args else kwargs["hidden_states"]
                captured.append(x)
                raise _StopForward

            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def hook(_m: nn.Module, _args: Any, output: Any) -> None:
                captured.append(_first(output))
                raise _StopForward

            handle = module.register_forward_hook(hook)
        self.forward_calls += 1
        try:
            self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                use_cache=False,
            )
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ModelError(f"hook {self.hook.name} was never reached in {self.model_id}")
        return captured[0]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device`` without making the host wait: from pinned memory, asynchronously, on CUDA."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


# Model ids with a prefix resolve to a local folder first (e.g. "demo:smollm2" -> converted GGUF cache);
# the prefixes are registered in ``assets``.
MODEL_RESOLVERS = assets.MODEL_RESOLVERS


def resolve_model_id(model_id: str) -> str:
    for prefix, fn in MODEL_RESOLVERS.items():
        if model_id.startswith(prefix):
            return fn(model_id)
    return model_id


def load_tokenizer(model_id: str, revision: str | None = None) -> Any:
    """The tokenizer of a model (hub id, local folder or ``demo:`` name), without its weights."""
    from transformers import AutoTokenizer

    resolved = resolve_model_id(model_id)
    try:
        return AutoTokenizer.from_pretrained(resolved, revision=revision, token=os.environ.get("HF_TOKEN") or None)
    except OSError as e:
        raise ModelError(f"could not load the tokenizer of {model_id!r}: {str(e).splitlines()[0]}",
                         "check the id or path, or download it once with network access") from e


def load_model(
    model_id: str,
    hook: str,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> HookedLM:
    """Load a causal LM by hub id or local directory (transformers) and wrap it at ``hook``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    dt = pick_dtype(dtype, model_id)
    label, model_id = model_id, resolve_model_id(model_id)
    token = os.environ.get("HF_TOKEN") or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, token=token)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=dt, token=token)
    except OSError as e:
        where = "local directory" if Path(model_id).exists() else "Hugging Face hub id"
        offline = " (HF_HUB_OFFLINE=1: only cached files are used)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ModelError(
            f"could not load model {model_id!r} as a {where}{offline}: {str(e).splitlines()[0]}",
            "check the id or path, or download it once with network access",
        ) from e
    model.to(dev)  # type: ignore[arg-type]  # transformers' stubs wrap .to oddly
    resolved_rev = revision or getattr(model.config, "_commit_hash", None)
    return HookedLM(model, tokenizer, hook, model_id=label, revision=resolved_rev)
