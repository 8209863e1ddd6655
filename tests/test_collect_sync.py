"""Design test of the streaming tracker: no host synchronisation and a fixed, small number of device
operations per ``PeakTracker.update``, whatever k, the batch size, the width or the data.

On a GPU every operation whose output shape or value the host must know (``nonzero``, ``item``,
``unique``, a copy to the host) stalls the queue, and so does a tensor built from Python data (a
blocking host-to-device copy, which a dispatch mode sees only as its ``lift_fresh``); each launched
kernel costs microseconds of host time besides. The tracker's work per batch is one update per SAE
(the whole width at once on a GPU), so these two counts per update are its cost model. They are
taken on CPU tensors with a ``TorchDispatchMode`` that sees every aten call: they pin the design, not
a time, on any machine. On CUDA a run under ``torch.cuda.set_sync_debug_mode("error")`` checks the
same (tests/test_collect_exact.py).
"""

from __future__ import annotations

import pytest
import torch

from sae_sens.collect import PeakTracker
from tests.support.opcount import OpCounter

MAX_LAUNCHES = 80  # per update at realistic shapes (k 12, n_iw 7, buffer 10, 128-token windows)


def acts_for(batch: int, t: int, f: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand((batch, t, f), generator=g) * 10
    return torch.where(torch.rand((batch, t, f), generator=g) < density, vals, 0.0)


def counts_per_update(*, k: int = 12, batch: int = 32, density: float = 0.015, n_batches: int = 3, t: int = 128,
                      f: int = 64, buffer: int = 10) -> list[OpCounter]:
    """Counts of each update of a pass, the first batch (empty state) included."""
    tracker = PeakTracker(f, n_top=k, n_iw=7, buffer=buffer, seed=1)
    counted = torch.ones(batch, t, dtype=torch.bool)
    counted[:, 0] = False
    counted[:, t // 2] = False  # an EOS in the middle of a window
    counts = []
    for i in range(n_batches):
        acts = acts_for(batch, t, f, density, seed=i)
        with OpCounter() as c:
            tracker.update(acts, counted, i * batch)
        counts.append(c)
    tracker.result()
    return counts


@pytest.mark.parametrize(("k", "batch", "density", "f"), [
    (12, 32, 0.015, 64), (12, 8, 0.015, 256), (12, 32, 0.0, 64), (12, 32, 0.6, 64), (1, 32, 0.015, 64),
    (40, 48, 0.02, 32), (12, 2, 0.02, 64),
])
def test_no_sync_in_any_update(k: int, batch: int, density: float, f: int) -> None:
    for c in counts_per_update(k=k, batch=batch, density=density, f=f):
        assert c.total_syncs == 0, c.syncs


def test_launches_per_update_are_few_and_fixed() -> None:
    """At the realistic shapes the count is the same for every batch, width and density (the shapes
    are fixed: widths 16k and 65k launch what 64 latents do), and within the limit. The first update
    also builds the tracker's constants (once per shape), so it is left out."""
    launches = {c.launches for f, batch, density in [(64, 32, 0.015), (512, 32, 0.015), (64, 8, 0.015),
                                                      (64, 32, 0.0), (64, 32, 0.6)]
                for c in counts_per_update(f=f, batch=batch, density=density)[1:]}
    assert len(launches) == 1, launches
    assert launches.pop() <= MAX_LAUNCHES


def test_the_counter_sees_synchronising_ops_and_launches() -> None:
    """The counter can fail: boolean-mask indexing, .item(), a tensor from Python data and a
    computation are counted."""
    x = torch.arange(10.0)
    with OpCounter() as c:
        x[x > 4].sum().item()
        x[x > 8] = 0.0  # the 0.0 becomes a tensor too: on CUDA, a blocking copy
        x.masked_select(x > 1)
        x.nonzero()
        torch.tensor([1.0, 2.0])
        x.view(2, 5)  # a view: no launch
    assert c.syncs == {"boolean index": 2, "_local_scalar_dense": 1, "masked_select": 1, "nonzero": 1,
                       "tensor from Python data": 2}, c.syncs
    assert c.launches >= 8
