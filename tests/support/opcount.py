"""Counting device work on the CPU: ``OpCounter`` is a ``TorchDispatchMode`` that sees every aten
call inside its ``with`` block and counts host syncs (tensors built from Python data and copies
between devices included) and calls that launch device work. The tracker's design test and
``benchmarks/bench_tracker.py`` count with it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that make the host wait for the device: data-dependent output shapes, scalar reads, and
# the ops that call them underneath (boolean-mask indexing and masked_select run a nonzero).
SYNC_OPS = {"nonzero", "_local_scalar_dense", "item", "unique_consecutive", "_unique", "_unique2", "unique_dim",
            "masked_select", "bincount", "repeat_interleave", "equal", "is_nonzero"}
# aten ops that launch no device work: views, allocations without a fill, record_function markers
NO_KERNEL = {"view", "_unsafe_view", "_reshape_alias", "slice", "select", "squeeze", "unsqueeze", "expand",
             "as_strided", "t", "transpose", "permute", "alias", "detach", "empty", "empty_strided", "lift_fresh",
             "new_empty", "empty_like", "split", "unbind", "view_as", "unfold"}


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
