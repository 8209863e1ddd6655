"""`sae-sens label`: serve the blind pairwise test to humans on a local page."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from .base import app
from .options import DeviceOpt, GeneratorOpt, ModelOpt, RunOpt, SaeOpt, StoreOpt

if TYPE_CHECKING:
    from ..label import Pair

PAIR_FORMATS = (".csv", ".tsv", ".json", ".parquet")


def _write_pairs(pairs: list[Pair], path: Path) -> None:
    """``--export-pairs``: Parquet keeps the examples as a list; the text formats join them with a
    ``<SEP>`` line (as the generator's prompt does)."""
    import pyarrow.parquet as pq

    from ..label import pairs_table
    from ..report.html import write_user_file
    from .output import render

    table = pairs_table(pairs)
    if path.suffix.lower() == ".parquet":
        import io

        from ..store import atomic_write_bytes

        buf = io.BytesIO()
        pq.write_table(table, buf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        path.chmod(0o644)  # like any file the user creates (the atomic temp file is 0600)
        return
    fmt = {".csv": "csv", ".tsv": "tsv", ".json": "json"}[path.suffix.lower()]
    rows = table.to_pylist()
    if fmt != "json":
        for r in rows:
            r["examples"] = "\n<SEP>\n".join(r["examples"])
    write_user_file(path, render(table.column_names, [list(r.values()) for r in rows], fmt) or "")


@app.command("label")
def label_command(
    sae: SaeOpt,
    store: StoreOpt = None,
    run: RunOpt = "default",
    generator: GeneratorOpt = None,
    rater: Annotated[str | None, typer.Option(
        "--rater", help="Your name, stored with every answer (default: the login name); the page's address "
        "takes ?rater=NAME too.", show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one).", min=0, max=65535)] = 0,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on: 127.0.0.1 (this machine only); 0.0.0.0 or a LAN address "
        "lets other machines in, without a login: a warning says so.")] = "127.0.0.1",
    calibration: Annotated[bool, typer.Option(
        "--calibration", help="Add real-vs-real calibration trials: the corpus control's texts paired "
        "with held-out examples (the page says some trials have two real texts; report --validity shows "
        "them as their own rows).")] = False,
    export_pairs: Annotated[Path | None, typer.Option(
        "--export-pairs", metavar="FILE", help="Write the pairs the study would serve, in its order and "
        "with which side is real, to FILE (.csv, .tsv, .json or .parquet) and exit, serving nothing: "
        "audit or share a study before it starts.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the pairs: the judge's --seed gives the judge's pairs.")]
    = 42,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the blind pairwise test on http://127.0.0.1:PORT: one pair at a time, the feature's examples
    highlighted, keys A / B (which text is real), S (skip) and U (undo the last answer). A pair is a
    generated text and a held-out real example, never two real texts unless --calibration asks. Every
    answer is written to the `labels` table at once; `sae-sens report --validity` shows human accuracy
    and agreement with the judge.

    Example: sae-sens label --sae py_4k_topk_s0 --generator openai:gpt-4.1-mini --rater ana

    Example: sae-sens label --sae py_4k_topk_s0 --export-pairs study.csv
    """
    from ..label import LabelBook, is_loopback, label_pairs, make_server
    from ..stages import ModelOptions
    from ..store import Store
    from .output import console, err_console, warn

    if export_pairs is not None and export_pairs.suffix.lower() not in PAIR_FORMATS:
        raise UsageError(f"cannot tell the format of {export_pairs.name}",
                         f"end --export-pairs with one of {', '.join(PAIR_FORMATS)}")
    st = Store(store)
    opts = ModelOptions(model=model, device=device)
    pairs = [p for s in sae for p in label_pairs(st, run, s, generator=generator, seed=seed,
                                                 calibration=calibration, opts=opts)]
    if not pairs:
        raise UsageError("no pairs to label: no generated text has a held-out real example",
                         "run collect with more candidates than examples shown (the default 12 + 7 vs 10 + 5)")
    n_cal = sum(p.trial == "calibration" for p in pairs)
    if export_pairs is not None:
        _write_pairs(pairs, export_pairs)
        err_console.print(f"wrote {export_pairs} ({len(pairs)} pairs" + (f", {n_cal} calibration" if n_cal else "")
                          + "; it says which side is real: keep it from the raters)", highlight=False, soft_wrap=True)
        return
    who = (rater or getpass.getuser() or "anonymous").strip()
    server = make_server(LabelBook(st, pairs, seed), who, port, host)
    bound = server.server_address[1]
    if not is_loopback(host):
        warn([f"serving on {host}:{bound}: anyone who can reach this machine can see the pairs and write "
              "answers under any name (no login); use the default --host 127.0.0.1 unless raters need it"])
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"labelling {len(pairs)} pairs" + (f" ({n_cal} calibration trials)" if n_cal else "")
                  + f" as {who}: open http://{shown_host}:{bound}/ (Ctrl-C to stop)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err_console.print("stopped; every answer is saved")
    finally:
        server.server_close()
