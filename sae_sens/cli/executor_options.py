"""``--executor``, ``--address``, ``--gpus-per-task``: where run / collect / score do their work."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..executors import Executor

ExecutorOpt = Annotated[
    str,
    typer.Option("--executor", envvar="SAE_SENS_EXECUTOR",
                 help="local (this process) or ray (one task per model and hook on a Ray cluster; "
                      "pip install 'sae-sens[ray]')."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", envvar="RAY_ADDRESS",
                 help="Ray cluster to join: auto (the one `ray start` made on this machine) or HOST:PORT "
                      "(default: start a local one).", show_default=False),
]
GpusPerTaskOpt = Annotated[
    float,
    typer.Option("--gpus-per-task", min=0.0,
                 help="GPUs each model-and-hook task asks for when the cluster has GPUs (fractions share one).")
]

SaesPerTaskOpt = Annotated[
    int,
    typer.Option("--saes-per-task", min=0,
                 help="Split a model-and-hook group into tasks of at most this many SAEs (each runs its own pass "
                      "over the corpus), to keep more GPUs busy than there are groups; 0 = one task per group."),
]


def make_executor(executor: str, address: str | None, gpus_per_task: float, saes_per_task: int = 0) -> Executor:
    from ..executors import get_executor

    # RAY_ADDRESS in the environment should not turn a local run into an error
    return get_executor(executor, address=address if executor == "ray" else None, gpus_per_task=gpus_per_task,
                        saes_per_task=saes_per_task)
