"""Local ``hf:`` generation hands each answer over as its sequence ends (not when the batch's longest
does): the runner journals it and advances the progress at once, and a retry resends only the rest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sae_sens.generate import GenerateConfig
from sae_sens.generate.backends import Completion, HFBackend, Request, TransientError
from sae_sens.generate.runner import Checkpoint, Runner, answer_record
from tests.support.testing import build_tiny_model

CAP = 24


@pytest.fixture
def backend(tmp_path: Path) -> HFBackend:
    root = tmp_path
    model = build_tiny_model(root / "model", family="llama", hidden=32)
    template = root / "t.txt"
    template.write_text("=== system ===\nwrite $n_request texts\n=== user ===\n$examples\n")
    cfg = GenerateConfig(generator=f"hf:{model}", prompt_template=template, samples_per_feature=2, max_tokens=CAP,
                         n_top=1, n_iw=0, temperature=1.0, batch_size=4)
    return HFBackend(cfg.spec, cfg)


def requests() -> list[Request]:
    return [Request(i, "system", "the cat sat" + " on the mat" * i, f"{7 * i + 3:x}" * 16) for i in range(4)]


def test_hf_batch_hands_each_answer_over_when_its_sequence_ends(backend: HFBackend,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = requests()
    # 1) sample once and read the raw new tokens of every row
    outputs: list[Any] = []
    generate = backend.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = generate(*args, **kwargs)
        outputs.append(out)
        return out

    monkeypatch.setattr(backend.model, "generate", spy)
    backend.complete_batch(reqs)
    width = outputs[0].shape[1] - CAP
    rows = [r[width:].tolist() for r in outputs[0]]
    # 2) make EOS a token that ends some rows early and others late or never (same seed: same samples)
    first = {t: [r.index(t) if t in r else None for r in rows] for r in rows for t in r}
    eos = max(first, key=lambda t: (len({p for p in first[t]}), -min(p for p in first[t] if p is not None)))
    ends = [p + 1 if p is not None else CAP for p in first[eos]]
    assert len(set(ends)) >= 2 and min(ends) < CAP, "the sampled rows give no early end to test"
    backend.tokenizer.eos_token = backend.tokenizer.convert_ids_to_tokens(eos)  # this test's own backend
    assert backend.tokenizer.eos_token_id == eos
    # 3) the same batch again: each answer arrives at the step its row ends
    events: list[tuple[str, int]] = []
    handed: dict[int, Completion] = {}

    def on_done(i: int, c: Completion) -> None:
        events.append(("done", i))
        handed[i] = c

    results = backend.complete_batch(reqs, on_done=on_done, on_step=lambda n, cap: events.append(("step", n)))
    steps_before = {i: max((n for kind, n in events[:events.index(("done", i))] if kind == "step"), default=0)
                    for i in range(len(reqs))}
    assert steps_before == dict(enumerate(ends))
    assert [c.completion_tokens for c in results] == ends
    assert all(handed[i] is results[i] for i in range(len(reqs)))  # nothing handed twice or changed after
    early = [i for i, e in enumerate(ends) if e < max(ends)]
    assert early and all(events.index(("done", i)) < events.index(("step", max(ends))) for i in early)


class ScriptedStreamingBackend:
    """A streaming backend for the runner: answers rows in the order given, failing once mid-batch."""

    label = "scripted"
    batch_size = 3
    streams_answers = True

    def __init__(self, fail_after: int | None) -> None:
        self.fail_after = fail_after
        self.batches: list[list[int]] = []

    def complete(self, request: Request) -> Completion:  # pragma: no cover  (batched only)
        raise AssertionError

    def complete_batch(self, reqs: Sequence[Request], on_done: Any = None, on_step: Any = None) -> list[Completion]:
        self.batches.append([r.feature_index for r in reqs])
        out = []
        for j, r in enumerate(reqs):
            if self.fail_after is not None and j == self.fail_after:
                self.fail_after = None
                raise TransientError("connection reset mid-batch")
            c = Completion(f"answer {r.feature_index}", 5, 3, 0.1)
            out.append(c)
            on_step(j + 1, 3)
            on_done(j, c)
        return out


class JournalProgress:
    """Records, at each finished answer, how many answers the journal already holds."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []  # type: ignore[var-annotated]

    def start(self, task: str, total: int | None = None) -> None: ...
    def finish(self, task: str) -> None: ...
    def log(self, message: str) -> None: ...

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        if n:
            self.seen.append(len(self.path.read_text().splitlines()) if self.path.exists() else 0)


def test_runner_journals_streamed_answers_and_retries_only_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    journal = Checkpoint(path)
    backend = ScriptedStreamingBackend(fail_after=2)
    progress = JournalProgress(path)
    runner = Runner(backend, max_workers=1, max_retries=2, retry_base_s=0.0, retry_max_s=0.0,  # type: ignore[arg-type]
                    progress=progress)
    reqs = [Request(i, "s", f"u{i}", f"{i:040x}") for i in range(5)]

    def on_answer(r: Request, c: Completion, error: str | None) -> float:
        journal.append(answer_record(r, c, error))
        return 0.0

    stats = runner.run(reqs, on_answer)
    # features 0 and 1 were journaled before the batch failed; the retry sent only feature 2
    assert backend.batches == [[0, 1, 2], [2], [3, 4]]
    assert progress.seen == [1, 2, 3, 4, 5]  # each answer was in the journal when it was counted
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["feature_index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["attempts"] for r in records] == [1, 1, 2, 1, 1]
    assert stats.done == 5 and stats.failed == 0 and stats.retries == 3
