"""Sensitivity results as SAEBench eval outputs: one JSON per run × SAE × generator.

SAEBench writes each eval's result as a ``BaseEvalOutput`` (``eval_type_id``, ``eval_config``,
``eval_id``, ``datetime_epoch_millis``, ``eval_result_metrics`` by category, ``eval_result_details``,
sae_lens ids and versions, ``sae_cfg_dict``). The classes below declare a "sensitivity" eval the
way each SAEBench eval declares its own (``sae_bench/evals/*/eval_output.py``): pydantic
dataclasses subclassing sae_bench's base classes, so their validators (flat metric categories,
epoch range, field types) check every file we write, and SAEBench's tooling reads it like its own.

The metrics are those of ``sae-sens report`` (same summary, same bootstrap interval); the details
are one row per scored latent.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from sae_bench.evals.base_eval_output import (
    DEFAULT_DISPLAY,
    BaseEvalOutput,
    BaseMetricCategories,
    BaseMetrics,
    BaseResultDetail,
)

from ..errors import MissingTableError
from ..store import Store, atomic_write_bytes, sae_slug

EVAL_TYPE_ID_SENSITIVITY = "sae_sens_sensitivity"


@dataclass
class SensitivityEvalConfig:
    """How the sensitivity was measured (collect, generate and score settings, from the manifest)."""

    model_name: str = Field(default="", title="Model Name", description="The language model the SAE reads.")
    hook_name: str = Field(default="", title="Hook", description="The hook point the SAE reads.")
    dataset_name: str = Field(default="", title="Dataset Name", description="The corpus of the examples.")
    total_tokens: int | None = Field(default=None, title="Total Tokens", description="Tokens in the collect pass.")
    llm_context_size: int | None = Field(default=None, title="Context Size", description="Tokens per window.")
    n_top_ex_for_generation: int | None = Field(
        default=None, title="Top Examples", description="Top activating examples shown to the generator.")
    n_iw_sampled_ex_for_generation: int | None = Field(
        default=None, title="IW Examples", description="Importance-weighted examples shown to the generator.")
    dead_latent_threshold: float | None = Field(
        default=None, title="Dead Latent Threshold", description="A latent is alive with more firings than this.")
    random_seed: int | None = Field(default=None, title="Random Seed", description="Seed of the feature sample.")
    generator: str = Field(default="", title="Generator", description="What wrote the new texts (e.g. openai:gpt-4.1-mini).")
    samples_per_feature: int | None = Field(
        default=None, title="Samples per Feature", description="New texts asked for per feature.")
    activation_threshold: float | None = Field(
        default=None, title="Activation Threshold", description="A text is active when the feature's max activation is above this.")
    max_length: int | None = Field(default=None, title="Max Length", description="Tokens per scored text, BOS included.")


@dataclass
class SensitivityMetrics(BaseMetrics):
    mean_sensitivity: float | None = Field(
        title="Mean Sensitivity",
        description="Mean over features of the share of generated texts that activate the feature",
        json_schema_extra=DEFAULT_DISPLAY)
    ci_low: float | None = Field(title="95% CI Low", description="Bootstrap interval of the mean over features")
    ci_high: float | None = Field(title="95% CI High", description="Bootstrap interval of the mean over features")
    share_below_half: float | None = Field(
        title="Share Below 0.5", description="Share of features with sensitivity below 0.5")
    mean_original_sensitivity: float | None = Field(
        title="Mean Original Sensitivity",
        description="The same on the feature's own examples, re-tokenised (a sanity check: near 1)")
    mean_original_sensitivity_window: float | None = Field(
        title="Mean Original Sensitivity (window)", description="The same on the examples' exact token windows")
    n_features: int = Field(title="Features", description="Features with at least one scored generated text")
    mean_control_sensitivity: float | None = Field(
        default=None, title="Mean Control Sensitivity",
        description="The corpus control's mean over the same features: real held-out passages around the "
                    "features' tokens, never averaged into the sensitivity (NULL without a control)")


@dataclass
class SensitivityMetricCategories(BaseMetricCategories):
    sensitivity: SensitivityMetrics = Field(
        title="Sensitivity", description="Feature sensitivity (arXiv 2509.23717)", json_schema_extra=DEFAULT_DISPLAY)


@dataclass
class SensitivityResultDetail(BaseResultDetail):
    latent: int = Field(title="Latent", description="SAE latent index")
    sensitivity: float | None = Field(title="Sensitivity", description="Share of its generated texts that are active")
    n_generated: int | None = Field(title="Generated Texts", description="Non-empty generated texts scored")
    original_sensitivity: float | None = Field(title="Original Sensitivity", description="Share of its examples active")
    original_sensitivity_window: float | None = Field(
        title="Original Sensitivity (window)", description="Share of its exact example windows active")
    mean_max_activation: float | None = Field(
        title="Mean Max Activation", description="Over its non-empty generated texts")
    top_activation: float | None = Field(title="Top Activation", description="Its strongest example's activation")
    frequency: float | None = Field(title="Frequency", description="Firings per counted token in the collect pass")


@dataclass(config=ConfigDict(title="Sensitivity"))
class SensitivityEvalOutput(
    BaseEvalOutput[SensitivityEvalConfig, SensitivityMetricCategories, SensitivityResultDetail]  # type: ignore[type-var]
):
    """How reliably SAE features fire on new texts that share the pattern of their top examples."""

    eval_config: SensitivityEvalConfig
    eval_id: str
    datetime_epoch_millis: int
    eval_result_metrics: SensitivityMetricCategories
    eval_result_details: list[SensitivityResultDetail]
    eval_type_id: str = Field(default=EVAL_TYPE_ID_SENSITIVITY, title="Eval Type ID",
                              description="The type of the evaluation")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def sae_lens_ids(sae: str) -> tuple[str | None, str | None]:
    """(sae_lens release, sae_lens id) as SAEBench names this SAE in its result files, or Nones."""
    from ..errors import UnknownSaeError
    from ..names import resolve

    try:
        spec = resolve(sae)
    except UnknownSaeError:
        return None, None
    if spec.source == "saelens":
        return str(spec.extra.get("release")), spec.path
    if spec.source == "gemmascope" and spec.path:
        from ..names import GEMMASCOPE_RELEASE

        return GEMMASCOPE_RELEASE, spec.path.removesuffix("/params.npz")
    if spec.source == "saebench":
        # the names SAEBench itself gave this SAE: its results file is <release>/<release>_<id>_eval_results.json
        from ..collect.saebench import saebench_results_path

        folder, _, file = saebench_results_path(sae).rpartition("/")
        release = folder.rpartition("/")[2]
        return release, file.removeprefix(f"{release}_").removesuffix("_eval_results.json")
    return None, None


def _epoch_millis(iso: str | None) -> int:
    when = _dt.datetime.fromisoformat(iso.replace("Z", "+00:00")) if iso else _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and v != v) else float(v)


def build_outputs(store: Store, runs: list[str] | None = None, saes: list[str] | None = None,
                  generators: list[str] | None = None) -> list[tuple[str, str, str, SensitivityEvalOutput]]:
    """(run, sae, generator, eval output) for every scored run × SAE × generator in the scope."""
    from .summary import summarize
    from .views import connect, query, require_results

    con = connect(store, runs, saes, status=False)
    require_results(con, store)
    summary = summarize(con, generators=generators).to_pylist()
    stats = query(con, "SELECT f.*, l.frequency FROM feature_stats f LEFT JOIN features l "
                       "USING (run, sae, feature_index) ORDER BY run, sae, generator, feature_index").to_pylist()
    out = []
    for row in summary:
        run, sae, generator = row["run"], row["sae"], row["generator"]
        manifest = store.manifest(run, sae)
        info = manifest.sae_info
        collect = manifest.stage("collect")
        gen = manifest.stage(f"generate:{generator}")
        score = manifest.stage("score")
        c = collect.config if collect else {}
        g = gen.config if gen else {}
        s = score.config if score else {}
        release, sae_id = sae_lens_ids(sae)
        config = SensitivityEvalConfig(
            model_name=str(info.get("model_id") or ""), hook_name=str(info.get("hook") or ""),
            dataset_name=str(c.get("corpus") or ""), total_tokens=c.get("total_tokens"),
            llm_context_size=c.get("context_size"), n_top_ex_for_generation=c.get("n_top_ex_for_generation"),
            n_iw_sampled_ex_for_generation=c.get("n_iw_ex_for_generation"),
            dead_latent_threshold=c.get("dead_min_firings"), random_seed=c.get("seed"), generator=generator,
            samples_per_feature=g.get("samples_per_feature"), activation_threshold=s.get("threshold"),
            max_length=s.get("max_length"),
        )
        details = [
            SensitivityResultDetail(
                latent=int(r["feature_index"]), sensitivity=_num(r["generated_sensitivity"]),
                n_generated=r["n_generated"], original_sensitivity=_num(r["original_sensitivity"]),
                original_sensitivity_window=_num(r["original_sensitivity_window"]),
                mean_max_activation=_num(r["mean_max_activation"]), top_activation=_num(r["top_activation"]),
                frequency=_num(r["frequency"]),
            )
            for r in stats if (r["run"], r["sae"], r["generator"]) == (run, sae, generator)
        ]
        metrics = SensitivityMetrics(
            mean_sensitivity=_num(row["sensitivity"]), ci_low=_num(row["ci_low"]), ci_high=_num(row["ci_high"]),
            share_below_half=_num(row["share_below_half"]),
            mean_original_sensitivity=_num(row["original_sensitivity"]),
            mean_original_sensitivity_window=_num(row["original_sensitivity_window"]),
            n_features=int(row["features"] or 0),
            mean_control_sensitivity=_num(row.get("control_sensitivity")),
        )
        cfg_dict = {k: info.get(k) for k in ("architecture", "d_in", "d_sae", "hook", "layer", "model_id", "width",
                                             "sparsity", "source", "format", "repo_id", "path") if info.get(k) is not None}
        if "hook" in cfg_dict:
            cfg_dict["hook_name"] = cfg_dict.pop("hook")
        if "model_id" in cfg_dict:
            cfg_dict["model_name"] = cfg_dict.pop("model_id")
        output = SensitivityEvalOutput(
            eval_config=config,
            eval_id=str(uuid.uuid4()),
            datetime_epoch_millis=_epoch_millis(score.finished_at if score else None),
            eval_result_metrics=SensitivityMetricCategories(sensitivity=metrics),
            eval_result_details=details,
            sae_bench_commit_hash=f"sae-bench {_version('sae-bench') or 'unknown'} (PyPI; no commit)",
            sae_lens_id=sae_id,
            sae_lens_release_id=release,
            sae_lens_version=_version("sae-lens"),
            sae_cfg_dict=cfg_dict,
            eval_result_unstructured={
                "tool": f"sae-sens {_version('sae-sens') or ''}".strip(), "run": run, "sae": sae,
                "store_config_hashes": {k: r.config_hash for k, r in manifest.stages.items()},
                "versions": score.versions if score else {},
            },
        )
        out.append((run, sae, generator, output))
    if not out:
        raise MissingTableError("nothing scored to export in this scope", "run `sae-sens score` first")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def export_saebench(store: Store, folder: Path, runs: list[str] | None = None, saes: list[str] | None = None,
                    generators: list[str] | None = None) -> list[Path]:
    """Write ``<folder>/<run>/<sae>__<generator>_eval_results.json`` per scored run × SAE × generator."""
    paths = []
    for run, sae, generator, output in build_outputs(store, runs, saes, generators):
        path = folder / run / f"{sae_slug(sae)}__{_slug(generator)}_eval_results.json"
        atomic_write_bytes(path, (output.to_json(indent=2) + "\n").encode())
        paths.append(path)
    return paths


def as_dict(output: SensitivityEvalOutput) -> dict[str, Any]:
    return asdict(output)
