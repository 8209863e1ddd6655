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
# aten ops that launch no device work: views, allocations without a fill, record_function markers
NO_KERNEL = {"view", "_unsafe_view", "_reshape_alias", "slice", "select", "squeeze", "unsqueeze", "expand",
             "as_strided", "t", "transpose", "permute", "alias", "detach", "empty", "empty_strided", "lift_fresh",
             "new_empty", "empty_like", "split", "unbind", "view_as", "unfold"}
MAX_LAUNCHES = 80  # per update at realistic shapes (k 12, n_iw 7, buffer 10, 128-token windows)


class OpCounter(TorchDispatchMode):
    """Counts, inside the ``with`` block, synchronising aten calls (copies between devices and tensors
    built from Python data included) and calls that launch device work."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.launches = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if name in SYNC_OPS:
            self.syncs[name] += 1
        elif name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ()):
            self.syncs["boolean index"] += 1  # on a GPU, a nonzero underneath
        elif name == "lift_fresh":  # torch.tensor / as_tensor of Python data: on CUDA a blocking copy
            self.syncs["tensor from Python data"] += 1
        elif name in ("_to_copy", "copy_"):  # a copy between devices waits for the source
            tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            if len({t.device for t in tensors}) > 1 or (kwargs or {}).get("device") not in (None, tensors[0].device):
                self.syncs["device copy"] += 1
        ins = [a for a in args if isinstance(a, torch.Tensor)]
        outs = [o for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)]
        no_op = name in ("to", "_to_copy", "reshape", "contiguous") and bool(ins) and bool(outs) and \
            outs[0].untyped_storage().data_ptr() == ins[0].untyped_storage().data_ptr()
        if name not in NO_KERNEL and not name.startswith("_record_function") and not no_op:
            self.launches += 1
        return out

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())


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
