"""`sae-sens show`: one feature in the terminal: stats, flags, examples and generated samples with
their tokens highlighted by activation.

Reads the store's Parquet tables directly (no DuckDB, no model). A token's shade is its activation
over the feature's top activation (as on the HTML page); off a colour terminal the tokens at or
above 1% of the top are marked ``{{like this}}`` instead, the convention of the examples' text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UnknownSaeError, UsageError
from ..schemas import is_reference, role_of
from .base import app
from .options import RunOpt, StoreOpt

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console
    from rich.text import Text

    from ..store import Store

MARK_FRACTION = 0.01  # the examples' {{marks}} use 1% of the top activation; shading and marks here too
FEW_SAMPLES = 5  # a sensitivity over fewer generated samples than this is flagged


@dataclass
class FeatureView:
    """Everything the store knows about one feature of one SAE in one run, as plain rows."""

    run: str
    sae: str
    feature: int
    sae_info: dict[str, Any]
    latent: dict[str, Any] | None
    stats: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    generations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def top(self) -> float:
        for source in ([self.latent] if self.latent else []) + self.stats:
            v = source.get("top_activation")
            if v is not None and v == v and v > 0:
                return float(v)
        acts = [a for e in self.examples for a in (e.get("activations") or []) if a is not None]
        return max(acts, default=0.0) or 1.0


def _rows(store: Store, run: str, sae: str, table: str, feature: int, *, required: bool = False) -> list[dict[str, Any]]:
    import pyarrow.compute as pc

    if not store.has_table(run, sae, table) and not required:
        return []
    t: pa.Table = store.read_table(run, sae, table)
    return t.filter(pc.equal(t["feature_index"], feature)).to_pylist()


def _add_command(store: Store, run: str, sae: str, feature: int) -> str:
    """The collect command that adds ``feature`` to this run's selection, with the pass's own corpus
    and budget (a bare command would start a new pass over the default corpus)."""
    from ..freshness import collect_command, collect_settings

    return collect_command(store, run, sae, collect_settings(store, run, sae), feature_ids=[feature])


def load_feature(store: Store, run: str, sae: str, feature: int, generators: list[str] | None = None) -> FeatureView:
    """The feature's rows from every table; a feature that was not selected is a clear error naming some that were."""
    examples = _rows(store, run, sae, "examples", feature, required=True)
    if not examples:
        import pyarrow.compute as pc

        ex = store.read_table(run, sae, "examples")
        chosen = sorted(set(pc.unique(ex["feature_index"]).to_pylist()))
        shown = ", ".join(map(str, chosen[:12])) + (", ..." if len(chosen) > 12 else "")
        raise UsageError(
            f"feature {feature} has no examples in run {run!r}, SAE {sae!r}",
            f"features there: {shown or 'none'}; `{_add_command(store, run, sae, feature)}` adds it "
            "(reusing the run's pass and keeping its selection)",
        )
    latent = next(iter(_rows(store, run, sae, "features", feature)), None)

    def keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if not generators or r.get("generator") in generators]

    return FeatureView(
        run=run, sae=sae, feature=feature, sae_info=store.manifest(run, sae).data.get("sae_info") or {},
        latent=latent,
        stats=keep(_rows(store, run, sae, "feature_stats", feature)),
        queries=keep(_rows(store, run, sae, "queries", feature)),
        examples=sorted(examples, key=lambda r: r["example_index"]),
        scores=_rows(store, run, sae, "scores", feature),
        generations=keep(_rows(store, run, sae, "generations", feature)),
    )


def highlight(tokens: list[str], acts: list[float | None], top: float, color: bool) -> Text:
    """Tokens shaded by activation / top (colour), or the strong ones marked {{like this}} (no colour)."""
    from rich.text import Text

    out = Text()
    marked = False
    for tok, act in zip(tokens, acts, strict=False):
        tok = tok.replace("\n", "↵")
        share = 0.0 if act is None or top <= 0 else max(0.0, min(1.0, float(act) / top))
        strong = share >= MARK_FRACTION
        if color:
            style = f"black on rgb(255,{int(235 - 95 * share)},{int(200 - 200 * share)})" if strong else ""
            out.append(tok, style=style)
        else:  # consecutive strong tokens share one mark, as in the examples' text
            if strong and not marked:
                out.append("{{")
            if not strong and marked:
                out.append("}}")
            out.append(tok)
            marked = strong
    if marked and not color:
        out.append("}}")
    return out


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def generator_flags(view: FeatureView, generator: str, stats: dict[str, Any] | None) -> list[str]:
    """What a reader should know before trusting this generator's sensitivity for the feature."""
    from ..report.summary import looks_like_preamble

    flags = []
    n = stats.get("n_generated") if stats else None
    if n is not None and n < FEW_SAMPLES:
        flags.append(f"n = {n}")
    methods = sorted({q["parse_method"] for q in view.queries if q["generator"] == generator and q.get("parse_method")})
    if any(m not in ("separator", "table", "corpus", "baseline", "inject") for m in methods):
        flags.append(f"parsed by {'/'.join(methods)} (the generator ignored the separator)")
    errors = sum(1 for q in view.queries if q["generator"] == generator and q.get("status") == "error")
    if errors:
        flags.append(f"{errors} failed request(s)")
    preamble = sum(1 for g in view.generations if g["generator"] == generator and looks_like_preamble(g.get("text")))
    if preamble:
        flags.append(f"{preamble} look like preamble")
    if stats and stats.get("n_truncated"):
        flags.append(f"{stats['n_truncated']} truncated")
    if stats and stats.get("n_empty"):
        flags.append(f"{stats['n_empty']} empty")
    return flags


def render(view: FeatureView, console: Console, *, max_samples: int | None = None) -> None:
    from rich.table import Table

    color = console.color_system is not None
    top = view.top
    info = view.sae_info
    what = ", ".join(f"{k} {info[k]}" for k in ("model_id", "width", "architecture", "sparsity", "hook") if info.get(k))
    console.print(f"[bold]{view.sae}[/] · feature [bold]{view.feature}[/] · run {view.run}" + (f"  ({what})" if what else ""),
                  highlight=False)
    if view.latent:
        lat = view.latent
        console.print(
            f"frequency {_num((lat.get('frequency') or 0) * 100)}% ({_num(lat.get('n_firings'))} firings) · "
            f"max activation {_num(lat.get('max_activation'))} · top example {_num(lat.get('top_activation'))} · "
            + ("alive" if lat.get("alive") else "[red]dead[/]"), highlight=False)

    stats_by_gen = {s["generator"]: s for s in view.stats}
    every = list(dict.fromkeys([s["generator"] for s in view.stats] + [g["generator"] for g in view.generations]))
    gens = [g for g in every if not is_reference(g)]  # base passages, injections, negatives: evidence, not sensitivities
    if gens:
        t = Table(title="sensitivity", title_justify="left", header_style="bold cyan")
        for c in ("generator", "generated", "n", "original (text)", "original (window)", "mean max act.", "flags"):
            t.add_column(c, overflow="fold")  # a generator's name is never cut
        for g in gens:
            s = stats_by_gen.get(g) or {}
            flags = generator_flags(view, g, s or None)
            t.add_row(g, _num(s.get("generated_sensitivity")), _num(s.get("n_generated")),
                      _num(s.get("original_sensitivity")), _num(s.get("original_sensitivity_window")),
                      _num(s.get("mean_max_activation")), "[yellow]" + "; ".join(flags) + "[/]" if flags else "")
        console.print(t)
    else:
        console.print("[dim]no generated samples yet (sae-sens generate)[/]")
    _render_evidence(view, console, gens, stats_by_gen)

    legend = ("tokens shaded by activation / top activation" if color
              else f"{{{{marked}}}}: activation >= {MARK_FRACTION:.0%} of the top activation")
    console.print(f"\n[bold]original examples[/] (top activation {_num(top)}; {legend})", highlight=False)
    console.print("[dim]t✓ / t✗: fires or not on the re-tokenised text (the original's way); w✓ / w✗: on the "
                  "exact window[/]", highlight=False)
    originals = {(r["sample_index"], r["variant"]): r for r in view.scores if r.get("source") == "original"}
    for e in view.examples:
        text = highlight(e.get("tokens") or [], e.get("activations") or [], top, color) if e.get("tokens") else None
        marks = "".join(
            f" {v[0]}{'✓' if r.get('active') else '✗'}" for v in ("text", "window")
            if (r := originals.get((e["example_index"], v))) is not None and r.get("active") is not None)
        head = f"{e['kind']:>3} {_num(e.get('max_activation')):>7}{marks:<6} "
        line = console.render_str(head, highlight=False)
        line.append_text(text if text is not None else console.render_str(e.get("text") or "", markup=False))
        console.print(line, soft_wrap=True)

    from ..report.summary import looks_like_preamble

    scored = {(r["generator"], r["sample_index"]): r for r in view.scores if r.get("source") == "generated"}
    for g in every:
        samples = sorted((s for s in view.generations if s["generator"] == g), key=lambda s: s["sample_index"])
        if not samples:
            samples = sorted(({"generator": g, "sample_index": k[1], "text": r.get("text")}
                              for k, r in scored.items() if k[0] == g), key=lambda s: s["sample_index"])
        role = role_of(g)
        shown = samples
        if role == "base":  # hundreds of shared random passages: the ones that fire are the news
            fired = [s for s in samples if (r := scored.get((g, s["sample_index"]))) is not None and r.get("active")]
            console.print(f"\n[bold]random held-out passages, {g}[/] ({len(fired)} of {len(samples)} fire; "
                          "those shown)", highlight=False)
            shown = fired[:BASE_SHOWN]
        else:
            titles = {"negative": "near misses", "injection": "token injections", "control": "real passages"}
            console.print(f"\n[bold]{titles.get(role, 'generated')} by {g}[/] ({len(samples)} samples)", highlight=False)
        for s in shown[:max_samples] if max_samples else shown:
            r = scored.get((g, s["sample_index"]))
            if r is None:
                head = "   not scored  "
            elif r.get("empty"):
                head = "   empty       "
            else:
                share = r.get("frac_of_top")
                share_text = f"{share:>4.0%}" if isinstance(share, float) and share == share else "   –"
                head = f"{'✓' if r.get('active') else '✗'} {_num(r.get('max_activation')):>7} {share_text}  "
            line = console.render_str(head, highlight=False)
            if r is not None and r.get("tokens"):
                line.append_text(highlight(r["tokens"], r.get("activations") or [], top, color))
            else:
                line.append(s.get("text") or "")
            if r is not None and r.get("truncated"):
                line.append("  [truncated]", style="yellow")
            if looks_like_preamble(s.get("text")):
                line.append("  [preamble?]", style="yellow")
            console.print(line, soft_wrap=True)


BASE_SHOWN = 5  # base passages that fire, listed per feature


def _render_evidence(view: FeatureView, console: Console, gens: list[str], stats: dict[str, dict[str, Any]]) -> None:
    """The precision-side evidence of each generator's sensitivity, where its controls were scored."""
    from rich.table import Table

    rows = [(g, stats[g]) for g in gens if g in stats and any(
        stats[g].get(k) is not None for k in ("base_rate", "specificity", "injection_rate"))]
    if not rows:
        return
    t = Table(title="beside the sensitivity", title_justify="left", header_style="bold cyan")
    for c in ("generator", "base rate", "lift", "specificity", "injection", "AUROC"):
        t.add_column(c, overflow="fold")
    for g, s in rows:
        dense = " [yellow](dense)[/]" if s.get("dense") else ""
        t.add_row(g, f"{_num(s.get('base_rate'))} (n {_num(s.get('n_base'))}){dense}", _num(s.get("lift")),
                  f"{_num(s.get('specificity'))} (n {_num(s.get('n_negative'))})" if s.get("n_negative") else "–",
                  f"{_num(s.get('injection_rate'))} (n {_num(s.get('n_injected'))})" if s.get("n_injected") else "–",
                  _num(s.get("auroc")))
    console.print(t)


@app.command("show")
def show_command(
    feature: Annotated[int, typer.Argument(help="The SAE latent index.", min=0, show_default=False)],
    sae: Annotated[str, typer.Option("--sae", "-s", help="The SAE (its name in the store).", show_default=False)],
    store: StoreOpt = None,
    run: RunOpt = "default",
    generator: Annotated[list[str] | None, typer.Option(
        "--generator", "-g", help="Only these generators; repeat for several (default: all).", show_default=False,
    )] = None,
    samples: Annotated[int | None, typer.Option(
        "--samples", min=1, help="Show at most this many generated samples per generator.", show_default=False,
    )] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="text (the terminal view) or json (every row the view reads: stats, queries, "
        "examples, scores with per-token activations, generations).")] = "text",
) -> None:
    """One feature in the terminal: its stats and flags, its original examples and every generated
    sample, tokens highlighted by activation (✓ active, ✗ not; the share of the feature's top
    activation after the max).

    Example: sae-sens show --run demo --sae smol_576_topk 25

    Example: sae-sens show --run demo --sae smol_576_topk 25 --format json | jq '.stats'
    """
    from ..store import Store
    from .output import console, warn_stale

    if fmt not in ("text", "json"):
        raise UsageError(f"unknown format {fmt!r}", "use --format text or --format json")
    st = Store(store)
    if not any(st.has_table(r, sae, "examples") for r in [run, *st.runs()]):
        known = sorted({s for _, s in st.iter_run_saes()})
        # the same error, and exit code, as report's for an SAE the store does not hold
        raise UnknownSaeError(f"no SAE {sae!r} with examples in {st.root}",
                              f"SAEs there: {', '.join(known) or 'none yet'} (sae-sens runs lists them)")
    warn_stale(st, run, sae)
    view = load_feature(st, run, sae, feature, generator)
    if fmt == "json":
        import sys

        sys.stdout.write(view_json(view, max_samples=samples) + "\n")
        return
    render(view, console, max_samples=samples)


def _plain(v: Any) -> Any:
    """JSON-safe: NaN and infinities as null, numpy scalars as numbers, nested lists and dicts alike."""
    import math

    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        return _plain(v.item())
    return v if v is None or isinstance(v, str | int | bool) else str(v)


def view_json(view: FeatureView, *, max_samples: int | None = None) -> str:
    """The feature's rows as one JSON object (``--format json``); ``max_samples`` caps generations
    and their scores per generator, as the text view does."""
    import json
    from dataclasses import asdict

    data = asdict(view)
    if max_samples is not None:
        keep: dict[str, set[int]] = {}
        for g in sorted(data["generations"], key=lambda r: (r.get("generator") or "", r.get("sample_index") or 0)):
            chosen = keep.setdefault(g.get("generator") or "", set())
            if len(chosen) < max_samples:
                chosen.add(int(g.get("sample_index") or 0))
        data["generations"] = [g for g in data["generations"]
                               if int(g.get("sample_index") or 0) in keep.get(g.get("generator") or "", set())]
        data["scores"] = [r for r in data["scores"] if r.get("source") != "generated"
                          or int(r.get("sample_index") or 0) in keep.get(r.get("generator") or "", set())]
    data["top_activation"] = view.top
    return json.dumps(_plain(data), indent=1)
