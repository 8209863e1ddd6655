"""A self-contained HTML page of a store's results, one file with no outside resources.

At the top: a legend, a filter (show only features whose sensitivity is at most a value; also set
by the address, ``report.html#max=0.3``), the summary table per run × SAE × generator with links to
each SAE and the summary's warnings (different n, preamble samples), and the plots embedded as base64 PNGs. Then per run × SAE: the run's stage configs and
package versions (from the manifest), links to every feature, and its features ordered by generated
sensitivity (least sensitive first: those are the ones to read), each with its original examples
and its generated samples.

Every scored text is shown token by token (``examples.tokens`` / ``scores.tokens``); a token's
background opacity is its activation over the feature's top activation from collect, so the
colours of originals and samples compare. Each sample says its max activation as a share of that
top (``frac_of_top``) and carries its flags: looks like preamble (``summary.PREAMBLE_PATTERN``),
truncated, empty. Each feature carries its flags: fewer than ``SMALL_N`` parsed samples, the
generator's answer split by a fallback parser rather than the separator, preamble samples.
Original examples are marked t✓/t✗ and w✓/w✗ by whether scoring found them active as
re-tokenised text (the original code's way) and as their exact window.
Everything from the store is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from ..schemas import is_control, role_of
from ..store import Store, atomic_write_bytes
from .summary import PREAMBLE_PATTERN, looks_like_preamble, per_feature_sql, summarize, summary_warnings
from .views import query

SMALL_N = 5  # fewer parsed samples than this: the feature's sensitivity is a coarse fraction

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
nav a { margin-right: 1em; }
section { border-top: 2px solid #888; margin-top: 2em; }
table.summary { border-collapse: collapse; font-size: .85em; }
.scroll { overflow-x: auto; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: .15em .5em; text-align: right; }
table.summary td:nth-child(-n+3) { text-align: left; }
.plots img { max-width: 48%; margin-right: 1%; }
.legend { background: #f7f7f7; border-radius: 6px; padding: .5em 1em; font-size: .9em; }
.feature { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.feature h3 { margin: .2em 0; font-size: 1em; }
.feature h3 a { color: #999; text-decoration: none; }
.stats { color: #555; font-size: .9em; }
.ex, .sample { font-family: ui-monospace, monospace; font-size: .85em; margin: .25em 0; white-space: pre-wrap; }
.t { border-radius: 2px; }
.badge { display: inline-block; min-width: 18em; margin-right: .5em; color: #555; font-family: system-ui, sans-serif; }
.flag { display: inline-block; background: #fde2e2; color: #900; border-radius: 3px; padding: 0 .3em;
        margin-right: .3em; font-family: system-ui, sans-serif; font-size: .85em; }
.on { color: #0a0; } .off { color: #c00; }
.featlinks a { margin-right: .6em; font-size: .85em; }
details.config pre { font-size: .8em; background: #f7f7f7; padding: .5em; overflow-x: auto; }
"""

# The filter: features whose sensitivity is above the slider's value are hidden.
_SCRIPT = """
(function () {
  var slider = document.getElementById('maxsens'), shown = document.getElementById('maxsens-value');
  function apply() {
    var max = parseFloat(slider.value), visible = 0;
    document.querySelectorAll('.feature').forEach(function (f) {
      var s = f.dataset.sens === '' ? NaN : parseFloat(f.dataset.sens);
      var hide = max < 1 && !(s <= max);
      f.hidden = hide;
      if (!hide) { visible += 1; }
    });
    shown.textContent = max.toFixed(2) + ' (' + visible + ' features shown)';
    document.body.dataset.filter = max.toFixed(2);
  }
  var m = /max=([0-9.]+)/.exec(location.hash);
  if (m) { slider.value = m[1]; }
  slider.addEventListener('input', apply);
  apply();
})();
"""

_LEGEND = f"""
<div class="legend"><b>How to read this page.</b>
A token's <span class="t" style="background:rgba(255,140,0,1.00)">orange</span> background grows with the
feature's activation on it, relative to the feature's top activation in collect
(<span class="t" style="background:rgba(255,140,0,0.25)">a quarter</span>, none when it does not fire);
hover a token for its activation. <span class="on">✓</span> active (max activation above the threshold),
<span class="off">✗</span> not active; on original examples t = scored as re-tokenised text (as the original
tool), w = scored as the exact token window. "of top" = the text's max activation / the feature's top
activation (frac_of_top). Flags: <span class="flag">n=3</span> fewer than {SMALL_N} parsed samples (a coarse
sensitivity), <span class="flag">parse: numbered</span> the generator ignored the separator and its answer
was split by a fallback, <span class="flag">preamble</span> a sample that looks like the generator's
preamble rather than a text (it opens with "Sure", "Here are … samples", or is one line ending in ":"),
<span class="flag">truncated</span>, <span class="flag">empty</span> (left out of the sensitivity).
Features are ordered least sensitive first.</div>
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


def _tokens(tokens: Sequence[str] | None, acts: Sequence[float | None] | None, scale: float) -> str:
    return "".join(_token(t, a, scale) for t, a in zip(tokens or [], acts or [], strict=False))


def _mark(active: bool | None) -> str:
    if active is None:
        return '<span class="badge">empty</span>'
    return '<span class="on">✓</span>' if active else '<span class="off">✗</span>'


def _flag(text: str) -> str:
    return f'<span class="flag">{html.escape(text)}</span>'


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else html.escape(str(v))


def _rows_by(table: Any, *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        out[tuple(row[k] for k in keys)].append(row)
    return out


def _summary_table(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None,
                   anchors: dict[tuple[str, str], str]) -> str:
    summary = summarize(con, generators=generators)
    table = summary.to_pylist()
    if not table:
        return ""
    warnings = "".join(f'<p class="stats">{_flag("warning")}{html.escape(w)}</p>' for w in summary_warnings(summary))
    cols = list(table[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in table:
        cells = []
        for c in cols:
            v = _fmt(r[c])
            if c == "sae" and (r["run"], r["sae"]) in anchors:
                v = f'<a href="{html.escape(anchors[(r["run"], r["sae"])])}">{v}</a>'
            cells.append(f"<td>{v}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<h2>Summary</h2><div class="scroll"><table class="summary"><tr>{head}</tr>{"".join(body)}</table></div>'
            "<p class=stats>sensitivity: mean over features of the share of generated samples that activate "
            "the feature, with a 95% interval over features (ci_low, ci_high; Wilson at the effective size, see the README); n_min / n_max: fewest and most "
            "parsed samples per feature; control_sensitivity: the corpus control's mean over the same features "
            "(real held-out passages, never averaged into sensitivity).</p>" + warnings)


def _table_html(title: str, table: Any) -> str:
    rows = table.to_pylist()
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<h2>{html.escape(title)}</h2><div class="scroll"><table class="summary"><tr>{head}</tr>{body}</table></div>'


def _more_tables(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None) -> str:
    """The report's other tables where the store has their data: thresholds, specificity (when a
    base-rate, negatives or injection generator was scored), the judge's and the human labels'."""
    from ..schemas import REFERENCE_SQL
    from .specificity import specificity_summary
    from .validity import threshold_summary, validity_tables

    parts = [_table_html("Sensitivity at thresholds relative to the top activation", threshold_summary(con, generators))]
    if query(con, f"SELECT count(*) AS n FROM feature_stats WHERE {REFERENCE_SQL}").column("n")[0].as_py():
        parts.append(_table_html("Beside the sensitivity: base rate, lift, specificity, injection rate, AUROC",
                                 specificity_summary(con, generators)))
    parts += [_table_html(title, table) for title, table in validity_tables(con, generators)]
    return "".join(parts)


def _plots(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None) -> str:
    from .plot import write_plots

    with tempfile.TemporaryDirectory(prefix="sae-sens-plots-") as tmp:
        paths = write_plots(con, Path(tmp) / "sensitivity.png", generators=generators)
        imgs = [f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                f'{base64.b64encode(p.read_bytes()).decode()}">' for p in paths]
    return '<div class="plots">' + "".join(imgs) + "</div>"


def _config(store: Store | None, run: str, sae: str) -> str:
    """The SAE's stage configs and package versions, from its manifest (they hold no secrets)."""
    if store is None:
        return ""
    manifest = store.manifest(run, sae)
    stages = {key: {"config": rec.config, "finished_at": rec.finished_at} for key, rec in manifest.stages.items()}
    versions: dict[str, str] = {}
    for rec in manifest.stages.values():
        versions.update(rec.versions)
    if not stages:
        return ""
    text = json.dumps({"stages": stages, "versions": versions}, indent=1, default=str)
    return f'<details class="config"><summary>run config and package versions</summary><pre>{html.escape(text)}</pre></details>'


def anchor_of(run: str, sae: str, feature: int | None = None) -> str:
    """The page's id for an SAE (``demo/smol_576_topk``) or one of its features (``.../25``): stable
    when SAEs are added or removed, so a link keeps pointing at the same thing."""
    return f"{run}/{sae}" if feature is None else f"{run}/{sae}/{feature}"


def _frag(anchor: str) -> str:
    from urllib.parse import quote

    return quote(anchor, safe="/")


def render_html(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                store: Store | None = None, plots: bool = True, tables: bool = True,
                only: set[tuple[str, str]] | None = None, page_of: Callable[[tuple[str, str]], str] | None = None,
                index_href: str | None = None) -> str:
    """The whole page as a string (see the module docstring for what it shows). ``only``: the SAEs
    whose feature sections the page holds (all by default; an index page holds none); ``page_of``:
    the file an SAE's section is on (links point there; same page by default)."""
    gen_where = f"WHERE generator IN ({', '.join('?' for _ in generators)})" if generators else ""
    params = list(generators or [])
    marks = ", ".join(f"${i + 2}" for i in range(len(params)))
    stats = query(con, f"""
        SELECT * FROM ({per_feature_sql('WHERE f.generator IN (' + marks + ')' if params else '')})
        ORDER BY run, sae, feature_index, generator
    """, [PREAMBLE_PATTERN, *params])
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
        SELECT run, sae, feature_index, generator, sample_index, text, max_activation, frac_of_top,
               active, empty, truncated, activations, tokens
        FROM scores WHERE source = 'generated' {gen_where.replace('WHERE', 'AND')}
            -- hundreds of shared random passages per feature: only the few that fire are shown
            AND (NOT starts_with(generator, 'baseline:') OR active)
        QUALIFY NOT starts_with(generator, 'baseline:')
            OR row_number() OVER (PARTITION BY run, sae, feature_index, generator ORDER BY sample_index) <= {BASE_SHOWN}
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

    def mean_sens(key: tuple) -> float | None:
        # the order is the generators' mean: the corpus control is a different question, never in it
        rows = [r for r in stats_by[key] if r["generated_sensitivity"] is not None]
        vals = [r["generated_sensitivity"] for r in rows if not is_control(r["generator"])]
        if not vals:  # a feature only the control scored is ordered by the control
            vals = [r["generated_sensitivity"] for r in rows]
        return sum(vals) / len(vals) if vals else None

    # stable anchors: #<run>/<sae> and #<run>/<sae>/<feature>, whatever else the page holds
    anchors = {key: anchor_of(*key) for key in saes}
    pages = page_of or (lambda key: "")  # --html DIR: an SAE's section lives on its own page
    shown = [k for k in saes if only is None or k in only]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sae-sens report</title>",
             f"<style>{_CSS}</style></head><body><h1>SAE feature sensitivity</h1><nav>"]
    if index_href:
        parts.append(f'<a href="{html.escape(index_href)}">all SAEs</a>')
    parts += [f'<a href="{html.escape(pages(k))}#{_frag(anchors[k])}">{html.escape(k[0])}/{html.escape(k[1])}</a>'
              for k in saes]
    parts.append("</nav>")
    parts.append(_LEGEND)
    parts.append('<p><label>Show features with sensitivity at most <input type="range" id="maxsens" min="0" '
                 'max="1" step="0.05" value="1"></label> <output id="maxsens-value">1.00</output></p>')
    parts.append(_summary_table(con, generators, {k: f"{pages(k)}#{_frag(a)}" for k, a in anchors.items()}))
    if tables:
        parts.append(_more_tables(con, generators))
    if plots:
        parts.append(_plots(con, generators))
    for (run, sae), features in saes.items():
        if (run, sae) not in shown:
            continue
        keys = sorted(((run, sae, fi) for fi in features),
                      key=lambda k: (m if (m := mean_sens(k)) is not None else float("inf"), k[2]))
        anchor = anchors[(run, sae)]
        parts.append(f'<section id="{html.escape(anchor)}"><h2>{html.escape(sae)} '
                     f'<small>run {html.escape(run)}, {len(keys)} features</small></h2>')
        parts.append(_config(store, run, sae))
        parts.append('<p class="featlinks">' + "".join(
            f'<a href="#{_frag(anchor)}/{k[2]}">{k[2]} ({_fmt(mean_sens(k))})</a>' for k in keys) + "</p>")
        for key in keys:
            parts.append(_feature(key, anchor, stats_by[key], ex_by.get(key, []), gen_by.get(key, []),
                                  orig_active, mean_sens(key)))
        parts.append("</section>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


BASE_SHOWN = 5  # base-rate passages that fire, shown per feature
_ROLE_NAMES = {"negative": "near miss · ", "base": "random passage (fires) · ", "injection": "token injected · ",
               "control": "real passage · "}


def _evidence(r: dict[str, Any]) -> str:
    """The precision side of one generator's sensitivity, where its controls were scored."""
    bits = []
    if r.get("base_rate") is not None:
        bits.append(f"base rate {_fmt(r['base_rate'])} (n={_fmt(r.get('n_base'))}"
                    f"{', dense' if r.get('dense') else ''}), lift {_fmt(r.get('lift'))}")
    if r.get("specificity") is not None:
        bits.append(f"specificity {_fmt(r['specificity'])} (n={_fmt(r.get('n_negative'))})")
    if r.get("injection_rate") is not None:
        bits.append(f"injection rate {_fmt(r['injection_rate'])} (n={_fmt(r.get('n_injected'))})")
    if r.get("auroc") is not None:
        bits.append(f"AUROC {_fmt(r['auroc'])}")
    return ("; " + "; ".join(bits)) if bits else ""


def _feature(key: tuple, anchor: str, rows: list[dict[str, Any]], examples: list[dict[str, Any]],
             gen_rows: list[dict[str, Any]], orig_active: dict[tuple, bool | None], sens: float | None) -> str:
    run, sae, fi = key
    tops = [r["top_activation"] for r in rows if r["top_activation"]]
    acts = [a for e in examples for a in (e["activations"] or []) if a is not None]
    acts += [g["max_activation"] for g in gen_rows if g["max_activation"] is not None]
    scale = max(tops) if tops else max(acts, default=0.0)
    fid = anchor_of(run, sae, fi)
    parts = [f'<div class="feature" id="{html.escape(fid)}" data-sens="{"" if sens is None else f"{sens:.6g}"}">'
             f'<h3>feature {fi} <a href="#{_frag(fid)}" title="link to this feature">#</a></h3>']
    for r in rows:
        flags = []
        if (r["n_generated"] or 0) < SMALL_N:
            flags.append(_flag(f"n={r['n_generated'] or 0}"))
        if r["fallback_parse"]:
            flags.append(_flag(f"parse: {r['parse_method']}"))
        if r["preamble_samples"]:
            flags.append(_flag(f"preamble: {r['preamble_samples']}"))
        parts.append(
            f'<div class="stats">{"".join(flags)}{html.escape(r["generator"] or "")}: generated sensitivity '
            f'<b>{_fmt(r["generated_sensitivity"])}</b> (n={_fmt(r["n_generated"])}), original '
            f'{_fmt(r["original_sensitivity"])} (text) / {_fmt(r["original_sensitivity_window"])} '
            f"(window), top activation {_fmt(r['top_activation'])}{_evidence(r)}</div>")
    if examples:
        parts.append("<h4>original examples</h4>")
    for e in examples:
        mark = " ".join(
            f'<span title="{title}">{variant[0]}{_mark(orig_active[k])}</span>'
            for variant, title in (("text", "re-tokenised text, as the original code"), ("window", "exact window"))
            if (k := (run, sae, fi, e["example_index"], variant)) in orig_active)
        parts.append(f'<div class="ex">{mark} <span class="badge">{html.escape(e["kind"] or "")} '
                     f'#{e["example_index"]} max {_fmt(e["max_activation"])}</span>'
                     f'{_tokens(e["tokens"], e["activations"], scale)}</div>')
    if gen_rows:
        parts.append("<h4>generated samples</h4>")
    for g in gen_rows:
        sample_flags = "".join(_flag(name) for name, on in (
            ("preamble", looks_like_preamble(g["text"])), ("truncated", g["truncated"]), ("empty", g["empty"])) if on)
        share = "" if g["frac_of_top"] is None else f" = {g['frac_of_top']:.0%} of top"
        if g["tokens"] is not None:
            body = _tokens(g["tokens"], g["activations"], scale)
        else:  # scored before scores stored tokens: the text, tinted by its max activation
            body = (f'<span class="t" style="{_bg(_alpha(g["max_activation"], scale))}">'
                    f'{html.escape(g["text"] or "")}</span>')
        parts.append(
            f'<div class="sample">{_mark(g["active"])} <span class="badge">{_ROLE_NAMES.get(role_of(g["generator"]), "")}'
            f'{html.escape(g["generator"] or "")} #{g["sample_index"]} max {_fmt(g["max_activation"])}{share}'
            f"</span>{sample_flags}{body}</div>")
    parts.append("</div>")
    return "".join(parts)


def write_user_file(path: str | Path, text: str) -> Path:
    """Atomically write a report file the user asked for, readable like any file they create."""
    path = Path(path)
    atomic_write_bytes(path, text.encode("utf-8"))
    path.chmod(0o644)  # the atomic temp file is created 0600
    return path


def write_html(con: duckdb.DuckDBPyConnection, path: str | Path, generators: Sequence[str] | None = None, *,
               store: Store | None = None) -> Path:
    """One page (``path`` a file), or for many SAEs an index plus one page per SAE (``path`` a folder:
    it exists, ends with a slash, or has no suffix): ``index.html`` holds the summary, the other
    tables and the plots; ``<run>/<sae>.html`` one SAE's features. Returns the page or the index."""
    path_s = str(path)
    folder = Path(path)
    if not (folder.is_dir() or path_s.endswith(("/", "\\")) or not folder.suffix):
        return write_user_file(folder, render_html(con, generators, store=store))
    from ..store import sae_slug

    keys = [(r["run"], r["sae"]) for r in query(con, "SELECT DISTINCT run, sae FROM feature_stats ORDER BY run, sae").to_pylist()]

    def page_of(key: tuple[str, str]) -> str:
        return f"{sae_slug(key[0])}/{sae_slug(key[1])}.html"

    for key in keys:
        page = render_html(con, generators, store=store, plots=False, tables=False, only={key},
                           page_of=lambda k: "../" + page_of(k), index_href="../index.html")
        target = folder / page_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_user_file(target, page)
    return write_user_file(folder / "index.html",
                           render_html(con, generators, store=store, only=set(), page_of=page_of))
