"""`sae-sens label`: serve the blind pairwise test to humans on a local page."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from ..errors import UsageError
from .base import app
from .options import DeviceOpt, GeneratorOpt, ModelOpt, RunOpt, SaeOpt, StoreOpt


@app.command("label")
def label_command(
    sae: SaeOpt,
    store: StoreOpt = None,
    run: RunOpt = "default",
    generator: GeneratorOpt = None,
    rater: Annotated[str | None, typer.Option(
        "--rater", help="Your name, stored with every answer (default: the login name); the page's address "
        "takes ?rater=NAME too.", show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: a free one).", min=0, max=65535)] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the pairs: the judge's --seed gives the judge's pairs.")]
    = 42,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the blind pairwise test on http://127.0.0.1:PORT: one pair at a time, the feature's examples
    highlighted, keys A / B (which text is real) and S (skip). Every answer is written to the `labels`
    table at once; `sae-sens report --validity` shows human accuracy and agreement with the judge.

    Example: sae-sens label --sae py_4k_topk_s0 --generator openai:gpt-4.1-mini --rater ana
    """
    from ..label import LabelBook, label_pairs, make_server
    from ..stages import ModelOptions
    from ..store import Store
    from .output import console, err_console

    st = Store(store)
    opts = ModelOptions(model=model, device=device)
    pairs = [p for s in sae for p in label_pairs(st, run, s, generator=generator, seed=seed, opts=opts)]
    if not pairs:
        raise UsageError("no pairs to label: no generated text has a held-out real example",
                         "run collect with more candidates than examples shown (the default 12 + 7 vs 10 + 5)")
    who = (rater or getpass.getuser() or "anonymous").strip()
    server = make_server(LabelBook(st, pairs, seed), who, port)
    bound = server.server_address[1]
    console.print(f"labelling {len(pairs)} pairs as {who}: open http://127.0.0.1:{bound}/ (Ctrl-C to stop)",
                  highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err_console.print("stopped; every answer is saved")
    finally:
        server.server_close()
