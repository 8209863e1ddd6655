"""Strength, not only firing: sensitivities at thresholds relative to the top activation, the paper's
--min-original-sensitivity filter, and the threshold plot (real scoring, real Parquet and DuckDB)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sae_sens.cli import main
from sae_sens.errors import ConfigError
from sae_sens.model import HookedLM, load_model
from sae_sens.report import connect, summarize
from sae_sens.report.validity import apply_min_original, threshold_levels, threshold_summary
from sae_sens.sae import Sae, load_sae
from sae_sens.schemas import make_table
from sae_sens.score import ScoreConfig, feature_stats, score_tables
from sae_sens.store import Store
from tests.support.testing import build_tiny_model, token_detector_sae

LAYER = 1


def _scores(rows: list[tuple[int, str, float | None]]) -> object:
    """(feature, generator, max_activation) generated rows; None = an empty text."""
    return make_table("scores", [
        {"feature_index": f, "source": "generated", "variant": "generated", "generator": g, "sample_index": i,
         "truncated": False, "empty": m is None, "max_activation": m, "active": None if m is None else m > 1e-6}
        for i, (f, g, m) in enumerate(rows)
    ] + [
        {"feature_index": 0, "source": "original", "variant": "text", "generator": "", "sample_index": i,
         "truncated": False, "empty": False, "max_activation": m, "active": m > 1e-6}
        for i, m in enumerate([100.0, 60.0, 40.0, 0.5])
    ])


def test_crafted_activations_give_exact_sensitivities_at_each_level() -> None:
    # top activation 100: the levels are > 1e-6, > 1, > 10, > 50
    maxes = [0.0, 0.5, 2.0, 6.0, 20.0, 60.0, 99.0, 1e-7]
    scores = _scores([(0, "g", m) for m in maxes] + [(0, "g", None)])
    stats = feature_stats(scores, ["g"], {0: 100.0}, 1e-6, (0.01, 0.1, 0.5)).to_pylist()
    (row,) = stats
    assert row["generated_sensitivity"] == 6 / 8  # 0.0 and 1e-7 are not above 1e-6; the empty text is left out
    assert row["relative_thresholds"] == [0.01, 0.1, 0.5]
    assert row["sensitivity_relative"] == [5 / 8, 3 / 8, 2 / 8]
    assert row["mean_frac_of_top"] == pytest.approx(sum(maxes) / 8 / 100)
    assert row["original_sensitivity_relative"] == [3 / 4, 3 / 4, 2 / 4]  # 100, 60, 40, 0.5 vs 1, 10, 50
    # other levels, and a level exactly at an activation (strictly above counts)
    (row,) = feature_stats(scores, ["g"], {0: 100.0}, 1e-6, (0.2, 0.6)).to_pylist()
    assert row["sensitivity_relative"] == [2 / 8, 1 / 8]
    # no positive top activation: nothing relative can be said
    (row,) = feature_stats(scores, ["g"], {0: None}, 1e-6, (0.01,)).to_pylist()
    assert row["sensitivity_relative"] == [None] and row["mean_frac_of_top"] is None


def test_bad_relative_thresholds_are_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="fractions"):
        ScoreConfig(relative_thresholds=(0.1, 1.5)).validate()


@pytest.fixture(scope="module")
def lm_and_detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[HookedLM, Sae]:
    model_dir = build_tiny_model(tmp_path_factory.mktemp("model"), family="llama", layers=3)
    lm = load_model(str(model_dir), f"blocks.{LAYER}.hook_resid_post", device="cpu", dtype="float32")
    (cat,) = lm.tokenizer(" cat", add_special_tokens=False)["input_ids"]
    folder = token_detector_sae(tmp_path_factory.mktemp("detector"), model_dir, [cat], layer=LAYER)
    return lm, load_sae(str(folder), device="cpu", dtype="float32")


def test_scored_texts_at_relative_levels(lm_and_detector: tuple[HookedLM, Sae]) -> None:
    """Through the real model and SAE: the top activation is set so the cat text sits at 30% of it."""
    lm, sae = lm_and_detector
    gens = make_table("generations", [{"feature_index": 0, "generator": "a", "sample_index": i, "text": t}
                                      for i, t in enumerate(["the cat sat", "the dog sat", "a cat and a cat"])])
    examples = make_table("examples", [])
    probe, _ = score_tables(lm, sae, examples, gens, make_table("features", {"feature_index": [0], "top_activation": [1.0]}),
                            ScoreConfig())
    act = {r["text"]: r["max_activation"] for r in probe["scores"].to_pylist()}
    assert act["the cat sat"] > 0 and act["the dog sat"] <= 1e-6
    top = act["the cat sat"] / 0.3
    tables, _ = score_tables(lm, sae, examples, gens, make_table("features", {"feature_index": [0], "top_activation": [top]}),
                             ScoreConfig(relative_thresholds=(0.01, 0.1, 0.5)))
    (row,) = tables["feature_stats"].to_pylist()
    above = [sum(m > r * top for m in act.values()) / 3 for r in (0.01, 0.1, 0.5)]
    assert row["sensitivity_relative"] == above
    assert above[0] == 2 / 3  # both cat texts count at 1% and 10% of top ...
    assert row["sensitivity_relative"][2] == sum(act[t] > 0.5 * top for t in act) / 3  # ... only a stronger one at 50%


def _build_store(root: Path) -> Store:
    """Two SAEs; feature i of SAE k has original sensitivity (i + k) / 10 ... and known relative levels."""
    store = Store(root)
    for k, sae in enumerate(("py_4k_topk_s0", "py_16k_topk_s0")):
        rows = [{"feature_index": i, "generator": "g", "generated_sensitivity": 1.0,
                 "original_sensitivity": min(1.0, 0.5 + 0.1 * (i + k)), "original_sensitivity_window": 1.0,
                 "n_generated": 10, "n_original": 10, "threshold": 1e-6, "mean_frac_of_top": 0.1 * i,
                 "relative_thresholds": [0.01, 0.1, 0.5],
                 "sensitivity_relative": [1.0, 0.5 if i % 2 else 0.3, 0.1 * k]} for i in range(6)]
        store.write_table("r", sae, "feature_stats", make_table("feature_stats", rows))
    return store


def test_min_original_filter_and_threshold_summary(tmp_path: Path) -> None:
    store = _build_store(tmp_path / "store")
    con = connect(store)
    long = {(r["sae"], r["level"]): r for r in threshold_levels(con).to_pylist()}
    assert long[("py_4k_topk_s0", "> 1e-06")]["sensitivity"] == 1.0
    assert long[("py_4k_topk_s0", "10%")]["sensitivity"] == pytest.approx((0.3 * 3 + 0.5 * 3) / 6)
    assert long[("py_16k_topk_s0", "50%")]["sensitivity"] == pytest.approx(0.1)
    assert long[("py_4k_topk_s0", "50%")]["sensitivity_low"] == 0.0
    wide = {r["sae"]: r for r in threshold_summary(con).to_pylist()}
    assert wide["py_4k_topk_s0"]["mean_frac_of_top"] == pytest.approx(0.25)
    assert wide["py_4k_topk_s0"]["sens 1%"] == 1.0
    assert wide["py_4k_topk_s0"]["features"] == 6 and wide["py_4k_topk_s0"]["small_n"] is False
    # originals 0.5..1.0 (4k) and 0.6..1.0 (16k): at 0.9, 4k keeps i = 4, 5 and 16k keeps i = 3, 4, 5
    lost = {r["sae"]: r for r in apply_min_original(con, 0.9).to_pylist()}
    assert (lost["py_4k_topk_s0"]["kept"], lost["py_4k_topk_s0"]["lost"]) == (2, 4)
    assert lost["py_16k_topk_s0"]["share_lost"] == pytest.approx(3 / 6)
    summary = {r["sae"]: r["features"] for r in summarize(con).to_pylist()}
    assert summary == {"py_4k_topk_s0": 2, "py_16k_topk_s0": 3}
    assert all(r["small_n"] for r in threshold_summary(con).to_pylist())  # 2 and 3 kept features


def test_report_cli_filter_thresholds_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _build_store(tmp_path / "store")
    plot = tmp_path / "sens.png"
    main(["report", "--store", str(store.root), "--min-original-sensitivity", "0.9", "--thresholds",
          "--format", "csv", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "py_4k_topk_s0,6,2,4,0.6666666666666666" in out
    assert "sens 10%" in out
    curve = tmp_path / "sens_thresholds.png"
    header = curve.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (1080, 555)  # two SAEs: two panels side by side, the legend below
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--store", str(store.root), "--min-original-sensitivity", "1.5"])
    assert exit_.value.code == 2
    assert "--min-original-sensitivity must be in [0, 1]" in capsys.readouterr().err


def test_plots_are_small_multiples_with_legends_outside_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    figures: list[matplotlib.figure.Figure] = []
    save = matplotlib.figure.Figure.savefig

    def keep(self: matplotlib.figure.Figure, *a: object, **kw: object) -> None:
        figures.append(self)
        save(self, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    store = _build_store(tmp_path / "store")
    main(["report", "--store", str(store.root), "--format", "csv", "--plot", str(tmp_path / "p.png")])
    assert len(figures) == 4  # width, histogram, L0, thresholds
    thresholds = figures[-1]
    panels = [ax for ax in thresholds.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in panels) == ["py_16k_topk_s0", "py_4k_topk_s0"]  # one per SAE
    for fig in (figures[0], thresholds):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)  # lay it out as saved
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                if ax.get_visible():
                    assert not box.overlaps(ax.get_window_extent(renderer)), (ax.get_title(), legend)
        for ax in panels:
            assert ax.get_xlabel() or ax is not panels[-1]
            assert ax.get_ylim() == (-0.02, 1.02)
