"""What is in a store: every run × SAE with each stage's status (done, stale, missing)."""

from __future__ import annotations

from dataclasses import dataclass

from .store import Store


@dataclass
class RunStatus:
    run: str
    sae: str
    stages: dict[str, str]  # stage key -> done | stale | missing
    finished_at: str  # latest stage finish time, '' if none

    def family(self, name: str) -> str:
        """One status for a stage family: generate has one record per generator."""
        states = [s for k, s in self.stages.items() if k == name or k.startswith(name + ":")]
        if not states or all(s == "missing" for s in states):
            return "missing"
        return "stale" if "stale" in states else "done"

    @property
    def generators(self) -> list[str]:
        return sorted(k.split(":", 1)[1] for k in self.stages if k.startswith("generate:"))


def list_runs(store: Store, run: str | None = None) -> list[RunStatus]:
    out = []
    for r, sae in store.iter_run_saes():
        if run is not None and r != run:
            continue
        manifest = store.manifest(r, sae)
        finished = max((rec.finished_at for rec in manifest.stages.values()), default="")
        out.append(RunStatus(r, sae, store.status(r, sae), finished))
    return out
