"""What is in a store: every run × SAE with each stage's status (done, stale, damaged, missing)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .freshness import family_state, stage_states, table_command
from .store import Store


@dataclass
class RunStatus:
    run: str
    sae: str
    stages: dict[str, str]  # stage key -> done | stale | damaged | incomplete | missing
    finished_at: str  # latest stage finish time, '' if none
    damaged: dict[str, str] = field(default_factory=dict)  # table -> what is wrong with it on disk
    repair_commands: dict[str, str] = field(default_factory=dict)  # damaged table -> the command that rebuilds it

    def family(self, name: str) -> str:
        """One status for a stage family (generate has one record per generator): freshness.family_state."""
        return family_state(self.stages, name)

    @property
    def generators(self) -> list[str]:
        return sorted(k.split(":", 1)[1] for k in self.stages if k.startswith("generate:"))

    def repairs(self) -> list[str]:
        """One line per damaged table: what is wrong and the command that rebuilds it."""
        # a same-size edit is seen only by --verify, and a stage's own freshness check is the cheap one
        return [f"{self.run}/{self.sae}: {table}.parquet is damaged ({problem}); run "
                f"`{self.repair_commands.get(table, 'sae-sens run')}` to rebuild it"
                for table, problem in sorted(self.damaged.items())]


def list_runs(store: Store, run: str | None = None, *, verify: bool = False) -> list[RunStatus]:
    """Every run × SAE (or those of ``run``); ``verify`` also hashes each table's content."""
    out = []
    for r, sae in store.iter_run_saes():
        if run is not None and r != run:
            continue
        manifest = store.manifest(r, sae)
        finished = max((rec.finished_at for rec in manifest.stages.values()), default="")
        damaged = store.damaged(r, sae, verify=verify)
        # a same-size edit is seen only by --verify, and a stage's own freshness check is the cheap one: --force
        commands = {t: table_command(store, r, sae, t, force="hash" in problem) for t, problem in damaged.items()}
        out.append(RunStatus(r, sae, stage_states(store, r, sae, verify=verify), finished, damaged, commands))
    return out
