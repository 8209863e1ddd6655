"""What an executor is given and returns: the work (stages × SAEs × configs), the SAE groups
(one per model and hook) and the per-SAE outcomes. Executors differ only in where groups run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..progress import ProgressSink
from ..stages import ModelOptions, StageOutcome
from ..store import Store

if TYPE_CHECKING:  # the stage modules import torch; load them only when work starts
    from ..collect import CollectConfig
    from ..generate import GenerateConfig
    from ..score import ScoreConfig

STAGES = ("collect", "generate", "score")


@dataclass(frozen=True)
class Work:
    """Stages to run (in STAGES order) for ``saes`` of one run, with the config of each stage that runs."""

    run: str
    saes: tuple[str, ...]
    stages: tuple[str, ...]
    opts: ModelOptions
    collect_cfg: CollectConfig | None = None
    generate_cfg: GenerateConfig | None = None
    score_cfg: ScoreConfig | None = None
    force: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; known: {STAGES}")

    def only(self, saes: list[str]) -> Work:
        return Work(self.run, tuple(saes), self.stages, self.opts, self.collect_cfg, self.generate_cfg,
                    self.score_cfg, self.force)


@dataclass
class SaeResult:
    """One SAE's outcome per stage that ran (a stage not asked for is absent)."""

    sae: str
    outcomes: dict[str, StageOutcome] = field(default_factory=dict)

    @property
    def collect(self) -> StageOutcome | None:
        return self.outcomes.get("collect")

    @property
    def generate(self) -> StageOutcome | None:
        return self.outcomes.get("generate")

    @property
    def score(self) -> StageOutcome | None:
        return self.outcomes.get("score")


@dataclass(frozen=True)
class Group:
    """SAEs that read one model at one hook: one model load and one shared collect pass."""

    key: tuple[str, str, str]  # (model, hook, dtype); unknown parts are the SAE's own name
    saes: tuple[str, ...]

    @property
    def label(self) -> str:
        model = self.key[0].rstrip("/").split("/")[-1]
        return f"{model} {self.key[1]}"


def plan_groups(saes: list[str] | tuple[str, ...], opts: ModelOptions, max_saes: int = 0) -> list[Group]:
    """Group SAEs by the (model, hook, dtype) ``open_model`` would give them, from their specs alone
    (no weights are loaded). An SAE whose spec does not say its model or hook gets a group of its own:
    the group's task finds out when it loads it. ``max_saes`` > 0 splits larger groups into that many
    SAEs or fewer, near-equal parts: more tasks (GPUs busy) for one more model pass each."""
    from ..sae import resolve_sae

    groups: dict[tuple[str, str, str], list[str]] = {}
    for name in dict.fromkeys(saes):
        spec = resolve_sae(name)
        model, hook = opts.model or spec.model_id, opts.hook or spec.hook
        key = (model, hook, str(opts.dtype or spec.default_dtype)) if model and hook else (name, "", "")
        groups.setdefault(key, []).append(name)
    out: list[Group] = []
    for k, v in groups.items():
        parts = -(-len(v) // max_saes) if max_saes > 0 else 1
        out.extend(Group(k, tuple(v[p::parts])) for p in range(parts))
    return out


class Executor(Protocol):
    name: str

    def execute(self, store: Store, work: Work, progress: ProgressSink) -> list[SaeResult]:
        """Run ``work``; one result per distinct SAE, in ``work.saes`` order."""
        ...
