"""A self-contained HTML page: per run × SAE, its features ordered by generated sensitivity
(least sensitive first: those are the ones to read), each with its original examples and the
generated samples, activations highlighted by strength.

Original examples are shown token by token (the ``examples`` table stores tokens and their
activations); a token's background opacity is its activation over the feature's top activation.
Each is marked t✓/t✗ and w✓/w✗ by whether scoring found it active as re-tokenised text (the
original code's way) and as its exact window, where those variants were scored.
Generated texts have per-token activations in ``scores`` but no stored tokens, and the report does
not load a tokenizer, so each is shown as its text, tinted by its max activation, with a strip of
one cell per scored token (same colour scale; hover for the value) showing where it fired.
Everything from the store is HTML-escaped.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from ..store import atomic_write_bytes
from .views import query

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
nav a { margin-right: 1em; }
section { border-top: 2px solid #888; margin-top: 2em; }
.feature { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.feature h3 { margin: .2em 0; font-size: 1em; }
.stats { color: #555; font-size: .9em; }
.ex, .sample { font-family: ui-monospace, monospace; font-size: .85em; margin: .25em 0; white-space: pre-wrap; }
.t { border-radius: 2px; }
.badge { display: inline-block; min-width: 9em; color: #555; font-family: system-ui, sans-serif; }
.on { color: #0a0; } .off { color: #c00; }
.strip { display: inline-flex; margin-left: .5em; vertical-align: middle; }
.strip i { display: inline-block; width: 6px; height: 12px; border: 1px solid #eee; }
"""


def _alpha(value: float | None, scale: float) -> float:
    if value is None or scale <= 0 or value <= 0:
        return 0.0
    return min(1.0, float(value) / scale)


def _bg(alpha: float) -> str:
    return f"background:rgba(255,140,0,{alpha:.2f})" if alpha > 0 else ""


def _token(tok: str, act: float | None, scale: float) -> str:
    text = html.escape(tok.replace("\n", "↵"))
    return f'<span class="t" style="{_bg(_alpha(act, scale))}" title="{act or 0:.3g}">{text}</span>'


def _mark(active: bool | None) -> str:
    if active is None:
        return '<span class="badge">empty</span>'
    return '<span class="on">✓</span>' if active else '<span class="off">✗</span>'


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else html.escape(str(v))


def _rows_by(table: Any, *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        out[tuple(row[k] for k in keys)].append(row)
    return out


def render_html(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None) -> str:
    """The whole page as a string (see the module docstring for what it shows)."""
    gen_where = f"WHERE generator IN ({', '.join('?' for _ in generators)})" if generators else ""
    params = list(generators or [])
    stats = query(con, f"""
        SELECT run, sae, feature_index, generator, generated_sensitivity, original_sensitivity,
               original_sensitivity_window, n_generated, top_activation
        FROM feature_stats {gen_where} ORDER BY run, sae, feature_index, generator
    """, params)
    examples = query(con, """
        SELECT run, sae, feature_index, example_index, kind, max_activation, tokens, activations
        FROM examples e WHERE EXISTS (SELECT 1 FROM feature_stats f
            WHERE f.run = e.run AND f.sae = e.sae AND f.feature_index = e.feature_index)
        ORDER BY run, sae, feature_index, kind DESC, example_index
    """)
    original = query(con, """
        SELECT run, sae, feature_index, sample_index, variant, active FROM scores WHERE source = 'original'
    """)
    generated = query(con, f"""
        SELECT run, sae, feature_index, generator, sample_index, text, max_activation,
               active, activations
        FROM scores WHERE source = 'generated' {gen_where.replace('WHERE', 'AND')}
        ORDER BY run, sae, feature_index, generator, sample_index
    """, params)
    stats_by = _rows_by(stats, "run", "sae", "feature_index")
    ex_by = _rows_by(examples, "run", "sae", "feature_index")
    orig_active = {(r["run"], r["sae"], r["feature_index"], r["sample_index"], r["variant"]): r["active"]
                   for r in original.to_pylist()}
    gen_by = _rows_by(generated, "run", "sae", "feature_index")

    saes: dict[tuple[str, str], list[int]] = defaultdict(list)
    for run, sae, fi in stats_by:
        saes[(run, sae)].append(fi)

    def mean_sens(key: tuple) -> float:
        vals = [r["generated_sensitivity"] for r in stats_by[key] if r["generated_sensitivity"] is not None]
        return sum(vals) / len(vals) if vals else float("inf")

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sae-sens report</title>",
             f"<style>{_CSS}</style></head><body><h1>SAE feature sensitivity</h1><nav>"]
    anchors = {key: f"sae-{i}" for i, key in enumerate(saes)}
    parts += [f'<a href="#{anchors[k]}">{html.escape(k[0])}/{html.escape(k[1])}</a>' for k in saes]
    parts.append("</nav>")
    for (run, sae), features in saes.items():
        keys = sorted(((run, sae, fi) for fi in features), key=lambda k: (mean_sens(k), k[2]))
        parts.append(f'<section id="{anchors[(run, sae)]}"><h2>{html.escape(sae)} '
                     f'<small>run {html.escape(run)}, {len(keys)} features</small></h2>')
        for key in keys:
            rows = stats_by[key]
            gen_rows = gen_by.get(key, [])
            tops = [r["top_activation"] for r in rows if r["top_activation"]]
            acts = [a for e in ex_by.get(key, []) for a in (e["activations"] or []) if a is not None]
            acts += [g["max_activation"] for g in gen_rows if g["max_activation"] is not None]
            scale = max(tops) if tops else max(acts, default=0.0)
            parts.append(f'<div class="feature" id="{anchors[(run, sae)]}-f{key[2]}">'
                         f"<h3>feature {key[2]}</h3>")
            for r in rows:
                parts.append(
                    f'<div class="stats">{html.escape(r["generator"] or "")}: generated sensitivity '
                    f'<b>{_fmt(r["generated_sensitivity"])}</b> (n={_fmt(r["n_generated"])}), original '
                    f'{_fmt(r["original_sensitivity"])} (text) / {_fmt(r["original_sensitivity_window"])} '
                    f"(window), top activation {_fmt(r['top_activation'])}</div>")
            if ex_by.get(key):
                parts.append("<h4>original examples</h4>")
            for e in ex_by.get(key, []):
                toks = "".join(_token(t, a, scale) for t, a in zip(e["tokens"] or [], e["activations"] or [], strict=False))
                mark = " ".join(
                    f'<span title="{title}">{variant[0]}{_mark(orig_active[k])}</span>'
                    for variant, title in (("text", "re-tokenised text, as the original code"), ("window", "exact window"))
                    if (k := (run, sae, key[2], e["example_index"], variant)) in orig_active)
                parts.append(f'<div class="ex">{mark} <span class="badge">{html.escape(e["kind"] or "")} '
                             f'#{e["example_index"]} max {_fmt(e["max_activation"])}</span>{toks}</div>')
            if gen_rows:
                parts.append("<h4>generated samples</h4>")
            for g in gen_rows:
                strip = "".join(f'<i style="{_bg(_alpha(a, scale))}" title="{a or 0:.3g}"></i>'
                                for a in g["activations"] or [])
                parts.append(
                    f'<div class="sample">{_mark(g["active"])} <span class="badge">'
                    f'{html.escape(g["generator"] or "")} #{g["sample_index"]} max {_fmt(g["max_activation"])}'
                    f'</span><span class="t" style="{_bg(_alpha(g["max_activation"], scale))}">'
                    f'{html.escape(g["text"] or "")}</span><span class="strip">{strip}</span></div>')
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_user_file(path: str | Path, text: str) -> Path:
    """Atomically write a report file the user asked for, readable like any file they create."""
    path = Path(path)
    atomic_write_bytes(path, text.encode("utf-8"))
    path.chmod(0o644)  # the atomic temp file is created 0600
    return path


def write_html(con: duckdb.DuckDBPyConnection, path: str | Path, generators: Sequence[str] | None = None) -> Path:
    return write_user_file(path, render_html(con, generators))
