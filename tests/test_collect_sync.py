"""Design test of the streaming tracker: a constant, small number of host synchronisations per
``PeakTracker.update``, whatever k, the batch size or the number of positive entries.

On a GPU every operation whose output shape or value the host must know (``nonzero``, ``item``,
``unique``, a copy to the host) stalls the queue; a tracker that issues one per greedy round or per
merge runs at the speed of those stalls, not of the model. The count is taken on CPU tensors with a
``TorchDispatchMode`` that sees every aten call, so it pins the design, not a time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sae_sens.collect import PeakTracker

# aten ops that make the host wait for the device: data-dependent output shapes, scalar reads, and
# the ops that call them underneath (boolean-mask indexing and masked_select run a nonzero).
SYNC_OPS = {"nonzero", "_local_scalar_dense", "item", "unique_consecutive", "_unique", "_unique2", "unique_dim",
            "masked_select", "bincount", "repeat_interleave", "equal", "is_nonzero"}
MAX_SYNCS = 9  # single digits, whatever the workload


class SyncCounter(TorchDispatchMode):
    """Counts synchronising aten calls (and copies between devices) made inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.ops[name] += 1
        elif name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ()):
            self.ops["boolean index"] += 1  # on a GPU, a nonzero underneath
        elif name in ("_to_copy", "copy_"):  # a copy between devices waits for the source
            tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            if len({t.device for t in tensors}) > 1 or (kwargs or {}).get("device") not in (None, tensors[0].device):
                self.ops["device copy"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def acts_for(batch: int, t: int, f: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand((batch, t, f), generator=g) * 10
    return torch.where(torch.rand((batch, t, f), generator=g) < density, vals, 0.0)


def syncs_per_update(*, k: int, batch: int, density: float, n_batches: int = 4, t: int = 64,
                     f: int = 96) -> list[Counter[str]]:
    """Sync counts of each update of a pass, the first batch (empty state) included."""
    tracker = PeakTracker(f, n_top=k, n_iw=5, buffer=6, seed=1)
    counted = torch.ones(batch, t, dtype=torch.bool)
    counted[:, 0] = False
    counted[:, t // 2] = False  # an EOS in the middle of a window
    counts = []
    for i in range(n_batches):
        acts = acts_for(batch, t, f, density, seed=i)
        with SyncCounter() as c:
            tracker.update(acts, counted, i * batch)
        counts.append(c.ops)
    return counts


@pytest.mark.parametrize(("k", "batch", "density"), [
    (12, 8, 0.02), (1, 8, 0.02), (40, 8, 0.02), (12, 2, 0.02), (12, 48, 0.02), (12, 8, 0.0), (12, 8, 0.6),
])
def test_syncs_per_update_are_a_small_constant(k: int, batch: int, density: float) -> None:
    counts = syncs_per_update(k=k, batch=batch, density=density)
    totals = [sum(c.values()) for c in counts]
    assert max(totals) <= MAX_SYNCS, counts
    # the same count in every batch: the first (every entry a candidate) and later ones alike
    assert len(set(totals)) == 1, counts


def test_sync_count_does_not_depend_on_the_workload() -> None:
    """k from 1 to 40, batch from 2 to 48, from 0.5% to 60% of the entries positive: one count (a
    batch with no positive entry at all may skip some)."""
    totals = {sum(c.values()) for k, batch, density in [(1, 2, 0.005), (12, 8, 0.02), (40, 48, 0.6)]
              for c in syncs_per_update(k=k, batch=batch, density=density)}
    assert len(totals) == 1, totals


def test_the_counter_sees_synchronising_ops() -> None:
    """The counter can fail: boolean-mask indexing and .item() are counted."""
    x = torch.arange(10.0)
    with SyncCounter() as c:
        x[x > 4].sum().item()
        x[x > 8] = 0.0
        x.masked_select(x > 1)
        x.nonzero()
    assert c.ops == {"boolean index": 2, "_local_scalar_dense": 1, "masked_select": 1, "nonzero": 1}, c.ops
