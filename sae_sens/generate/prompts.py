"""The prompt sent for each feature: a system and a user message filled from a template.

A template file has two sections, ``=== system ===`` and ``=== user ===``. Placeholders use
``$name`` (``string.Template``) so that the ``{{ }}`` activation marks need no escaping:
``$examples`` (required), ``$n_request``, ``$n_examples``, ``$separator``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import pyarrow as pa

from ..errors import ConfigError
from ..hashing import hash_text
from .config import GenerateConfig

_SECTION_RE = re.compile(r"^===\s*(system|user)\s*===\s*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class PromptTemplate:
    system: str
    user: str
    source: str  # "default" or the file it came from

    @property
    def hash(self) -> str:
        return hash_text(self.system + "\0" + self.user)

    def render(self, examples: list[str], n_request: int, separator: str) -> tuple[str, str]:
        values = {
            "examples": f"\n{separator}\n".join(examples),
            "n_request": str(n_request),
            "n_examples": str(len(examples)),
            "separator": separator,
        }
        return Template(self.system).safe_substitute(values), Template(self.user).safe_substitute(values)


def default_template_text(negatives: bool = False) -> str:
    """The packaged prompt: ``generate.txt`` asks for texts with the pattern, ``negatives.txt`` for
    near misses without it (same examples, same format)."""
    name = "negatives.txt" if negatives else "generate.txt"
    return resources.files("sae_sens").joinpath(f"prompts/{name}").read_text(encoding="utf-8")


def parse_template(text: str, source: str) -> PromptTemplate:
    parts = _SECTION_RE.split(text)
    # split() gives [before, name1, body1, name2, body2, ...]
    sections = {parts[i].lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"} or len(parts) != 5:
        raise ConfigError(
            f"prompt template {source} must have one '=== system ===' and one '=== user ===' section",
            "start from the default: sae_sens/prompts/generate.txt",
        )
    if "$examples" not in sections["user"] and "${examples}" not in sections["user"]:
        raise ConfigError(f"prompt template {source} never uses $examples", "put $examples in the user section")
    return PromptTemplate(sections["system"], sections["user"], source)


def load_template(path: Path | None = None, *, negatives: bool = False) -> PromptTemplate:
    if path is None:
        return parse_template(default_template_text(negatives), "default:negatives" if negatives else "default")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read prompt template {path}: {e.strerror}", "pass an existing text file") from e
    return parse_template(text, str(path))


@dataclass(frozen=True)
class FeaturePrompt:
    feature_index: int
    system: str
    user: str
    n_examples: int


def feature_examples(examples: pa.Table, n_top: int, n_iw: int, seed: int) -> dict[int, list[str]]:
    """Per feature, its first ``n_top`` top and ``n_iw`` importance-weighted example texts, shuffled with a
    per-feature seed so the generator does not read the ranking as a signal."""
    cols = examples.select(["feature_index", "example_index", "kind", "text"]).to_pylist()
    cols.sort(key=lambda r: (r["feature_index"], r["kind"] != "top", r["example_index"]))
    by_feature: dict[int, dict[str, list[str]]] = {}
    for r in cols:
        kinds = by_feature.setdefault(int(r["feature_index"]), {})
        kinds.setdefault(r["kind"], []).append(r["text"] or "")
    out = {}
    for f, kinds in by_feature.items():
        texts = kinds.get("top", [])[:n_top] + kinds.get("iw", [])[:n_iw]
        if not texts:  # unknown kinds: show what there is rather than nothing
            texts = [t for k in sorted(kinds) for t in kinds[k]][: n_top + n_iw]
        random.Random(seed * 1_000_003 + f).shuffle(texts)
        out[f] = texts
    return out


def build_prompts(examples: pa.Table, cfg: GenerateConfig, template: PromptTemplate) -> list[FeaturePrompt]:
    """One prompt per feature of the examples table, in feature order."""
    prompts = []
    for f, texts in sorted(feature_examples(examples, cfg.n_top, cfg.n_iw, cfg.seed).items()):
        system, user = template.render(texts, cfg.n_request, cfg.separator)
        prompts.append(FeaturePrompt(f, system, user, len(texts)))
    return prompts
