"""Generators behind one interface, registered by prefix: ``openai:``, ``hf:`` and ``table:``.

An LLM backend answers one attempt of one request (``complete``) or a batch (``complete_batch``)
and classifies failures: ``TransientError`` (retry later), ``RequestRejected`` (this prompt will
never work), or a ``PermanentGenerationError`` (nothing will work: bad key, unknown model, no quota).
Retries, concurrency and checkpoints live in the runner, not here.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import ApiKeyError, ConfigError, ModelError, PermanentGenerationError
from ..progress import NULL_PROGRESS, ProgressSink
from .config import GenerateConfig, GeneratorSpec, public_url
from .imports import TableImport

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class Request:
    feature_index: int
    system: str
    user: str
    query_hash: str


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    attempts: int = 1


class TransientError(Exception):
    """Worth retrying (5xx, 429 rate limit, timeout, connection reset); ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(TransientError):
    """The server could not be connected to at all (refused, no route, DNS): retried only a few times,
    quickly, so a wrong --base-url is reported in seconds rather than after the full backoff."""


class RequestRejected(Exception):
    """This request can never succeed (e.g. 400: prompt too long or filtered); other requests may."""


class Backend(Protocol):
    label: str
    batch_size: int  # 1: the runner calls complete() from worker threads; >1: complete_batch() from one

    def complete(self, request: Request) -> Completion: ...
    def complete_batch(self, requests: Sequence[Request]) -> list[Completion]: ...
    def close(self) -> None: ...


def is_local_url(url: str | None) -> bool:
    return bool(url) and (urlsplit(url).hostname or "") in LOCAL_HOSTS  # type: ignore[arg-type]


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else None


class OpenAIBackend:
    """Chat completions through the ``openai`` client, against OpenAI or any compatible server."""

    batch_size = 1

    def __init__(self, spec: GeneratorSpec, cfg: GenerateConfig) -> None:
        import openai

        self.label = spec.label
        self.model = spec.target
        self.cfg = cfg
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.where = public_url(self.base_url) or "api.openai.com"
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            if not is_local_url(self.base_url):
                raise ApiKeyError(
                    "OPENAI_API_KEY is not set",
                    "put OPENAI_API_KEY=sk-... in .env or the environment (see .env.example), "
                    "or point --base-url at a local OpenAI-compatible server",
                )
            key = "sk-no-key-local"  # local servers (vLLM, Ollama, llama.cpp) accept any key
        self._key = key
        self._openai = openai
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=cfg.timeout)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _message(self, e: Any) -> str:
        body = getattr(e, "body", None)
        msg = body.get("message") if isinstance(body, dict) else None
        return self._redact(str(msg or getattr(e, "message", "") or e))

    def complete(self, request: Request) -> Completion:
        oa = self._openai
        t0 = time.perf_counter()
        try:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.user}],
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_tokens,
                seed=self.cfg.seed,
            )
        except oa.AuthenticationError as e:
            raise ApiKeyError(
                f"{self.where} rejected the API key (401): {self._message(e)}",
                "check OPENAI_API_KEY (in .env or the environment)",
            ) from None
        except oa.PermissionDeniedError as e:
            raise PermanentGenerationError(
                f"{self.where} refused access to {self.model!r} (403): {self._message(e)}",
                "check that your key's project may use this model",
            ) from None
        except oa.NotFoundError as e:
            raise PermanentGenerationError(
                f"model {self.model!r} not found at {self.where} (404): {self._message(e)}",
                "check the name in --generator openai:<model> / --llm-model, or --base-url",
            ) from None
        except oa.RateLimitError as e:
            body = e.body if isinstance(e.body, dict) else {}
            if "insufficient_quota" in (str(body.get("code")), str(body.get("type"))):
                raise PermanentGenerationError(
                    f"the API quota at {self.where} is exhausted (429 insufficient_quota)",
                    "add credits or use another key, then rerun to resume",
                ) from None
            raise TransientError(f"429 rate limited: {self._message(e)}", parse_retry_after(e.response.headers)) from None
        except oa.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409, 425):
                raise TransientError(f"{e.status_code}: {self._message(e)}", parse_retry_after(e.response.headers)) from None
            raise RequestRejected(f"{e.status_code}: {self._message(e)}") from None
        except oa.APITimeoutError:
            raise TransientError(f"no answer within {self.cfg.timeout:g}s") from None
        except oa.APIConnectionError as e:
            # httpx (imported by openai) says ConnectError when no connection could be made at all
            cls = Unreachable if type(e.__cause__).__name__ == "ConnectError" else TransientError
            raise cls(f"cannot reach {self.where}: {self._message(e)}") from None
        latency = time.perf_counter() - t0
        if not resp.choices:
            raise TransientError("the response had no choices")
        usage = resp.usage
        return Completion(
            text=resp.choices[0].message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_s=latency,
        )

    def complete_batch(self, requests: Sequence[Request]) -> list[Completion]:
        return [self.complete(r) for r in requests]

    def close(self) -> None:
        self.client.close()


OnDone = Callable[[int, Completion], None]  # (index in the batch, its answer), as soon as it is complete
OnStep = Callable[[int, int], None]  # (new tokens so far, the cap), once per generated token


class HFBackend:
    """A local chat model through transformers: batched sampling, left padding, the chat template.

    A batch hands each answer over the moment its sequence ends (``on_done``), not when the longest
    one does, so the runner journals it and advances the progress right away (``streams_answers``).
    """

    streams_answers = True

    def __init__(self, spec: GeneratorSpec, cfg: GenerateConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..model import pick_device, pick_dtype, resolve_model_id

        self.label = spec.label
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        path = resolve_model_id(spec.target)
        token = os.environ.get("HF_TOKEN") or None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, token=token)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(cfg.dtype, path), token=token)
        except OSError as e:
            raise ModelError(
                f"could not load generator model {spec.target!r}: {str(e).splitlines()[0]}",
                "check the hub id or folder, or download it once with network access",
            ) from e
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"generator model {spec.target!r} has no chat template",
                "use an instruct/chat model (its tokenizer must define a chat template)",
            )
        # decoder-only generation appends after the prompt, so padding must go on the left
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(pick_device(cfg.device)).eval()  # type: ignore[arg-type]
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def _chat_text(self, r: Request) -> str:
        messages = [{"role": "system", "content": r.system}, {"role": "user", "content": r.user}]
        try:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception:  # some templates (Gemma) refuse a system role: fold it into the user turn
            merged = [{"role": "user", "content": f"{r.system}\n\n{r.user}"}]
            return str(self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True))

    def complete(self, request: Request) -> Completion:
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: Sequence[Request], on_done: OnDone | None = None,
                       on_step: OnStep | None = None) -> list[Completion]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        enc = tok([self._chat_text(r) for r in requests], return_tensors="pt", padding=True, add_special_tokens=False)
        width = enc["input_ids"].shape[1]
        max_new = self.cfg.max_tokens
        if self.max_positions:
            if width >= self.max_positions:
                raise ConfigError(
                    f"a prompt is {width} tokens, more than the {self.max_positions} that {self.label} can read",
                    "show fewer examples (a shorter --prompt-template) or use a model with a longer context",
                )
            max_new = min(max_new, self.max_positions - width)
        device = next(self.model.parameters()).device
        # Sampling with one seed per request, not per batch: each row draws its own Gumbel noise from
        # (its request's hash, the step), and argmax(log p / T + noise) is a draw from softmax(logits / T).
        # So a request samples the same text alone, in any batch, and when a resumed run batches only
        # the requests a killed run left unanswered.
        sampling: dict[str, Any] = {"do_sample": False}
        if self.cfg.temperature > 0:
            from transformers import LogitsProcessorList

            seeds = [int(r.query_hash[:12], 16) for r in requests]
            sampling["logits_processor"] = LogitsProcessorList([_RowSampler(seeds, self.cfg.temperature, width)])
        t0 = time.perf_counter()
        results: dict[int, Completion] = {}

        def completion(i: int, row: torch.Tensor) -> Completion:
            ids = row.tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
            return Completion(
                text=str(tok.decode(ids, skip_special_tokens=True)),
                prompt_tokens=int(enc["attention_mask"][i].sum()),
                completion_tokens=len(ids),
                latency_s=time.perf_counter() - t0,
            )

        class _HandOver(StoppingCriteria):
            """Never stops generation itself: sees each row's first EOS and hands that answer over."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                n_new = input_ids.shape[1] - width
                if on_step is not None:
                    on_step(n_new, max_new)
                if on_done is not None:
                    for i in (input_ids[:, -1] == tok.eos_token_id).nonzero().flatten().tolist():
                        if i not in results:
                            results[i] = completion(i, input_ids[i, width:].cpu())
                            on_done(i, results[i])
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        with torch.inference_mode():
            out = self.model.generate(
                **{k: v.to(device) for k, v in enc.items()},
                max_new_tokens=max_new,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                stopping_criteria=StoppingCriteriaList([_HandOver()]),
                **sampling,
            )
        new = out[:, width:].cpu()
        for i in range(len(requests)):
            if i not in results:  # stopped by the token cap, or the last to end
                results[i] = completion(i, new[i])
                if on_done is not None:
                    on_done(i, results[i])
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        pass


class _RowSampler:
    """A logits processor that turns greedy decoding into temperature sampling seeded per row."""

    def __init__(self, seeds: Sequence[int], temperature: float, width: int) -> None:
        self.seeds, self.temperature, self.width = list(seeds), temperature, width

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        noise = torch.empty(logp.shape, dtype=torch.float32)
        for row, seed in enumerate(self.seeds):
            g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
            noise[row] = torch.rand(logp.shape[1], generator=g)
        gumbel = -torch.log(-torch.log(noise.clamp_(min=1e-12, max=1 - 1e-7)))
        return logp + gumbel.to(logp.device)


Generator = Backend | TableImport
BACKENDS: dict[str, Callable[[GeneratorSpec, GenerateConfig], Generator]] = {
    "openai": OpenAIBackend,
    "hf": HFBackend,
    "table": lambda spec, cfg: TableImport(spec.target, spec.label),
}

_HF_CACHE: dict[tuple[str, str, str], HFBackend] = {}


def open_generator(cfg: GenerateConfig, progress: ProgressSink = NULL_PROGRESS) -> Generator:
    """The backend named by ``cfg.generator``; a local model is loaded once and reused across SAEs."""
    spec = cfg.spec
    if spec.kind == "hf":
        key = (spec.target, str(cfg.device), str(cfg.dtype))
        if key not in _HF_CACHE:
            _HF_CACHE.clear()  # one local generator in memory at a time
            progress.log(f"loading generator model {spec.target} …")
            _HF_CACHE[key] = HFBackend(spec, cfg)
        backend = _HF_CACHE[key]
        backend.cfg, backend.batch_size = cfg, cfg.batch_size  # sampling settings may differ per call
        return backend
    return BACKENDS[spec.kind](spec, cfg)
