"""Import the autointerp generation examples SAEBench published for its named SAEs.

SAEBench's autointerp results (dataset repo ``adamkarvonen/sae_bench_results_0125``) are JSON
files whose ``eval_result_unstructured`` maps each latent to a record with ``logs``. The
"Generation phase" part of the logs ends with a table of the generation examples, strongest
first (``│ Top act │ Sequence │``), activating tokens marked ``<<like this>>``. We read that table,
turn the marks into ``{{…}}`` (adjacent marked tokens become one run, as our own examples are
marked) and write ``features`` and ``examples`` like ``collect`` does. The first
``n_top_ex_for_generation`` rows of a latent are its top examples, the rest importance-weighted
ones (SAEBench sorts by activation and its importance-weighted peaks lie below every top peak).
Per-token ids and activations are not published, so those columns stay NULL.

SAEBench collected these examples on ``Skylion007/openwebtext``; the manifest records that.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import ConfigError, CorpusError, ImportTableError
from ..hashing import hash_file
from ..progress import NULL_PROGRESS, ProgressSink
from ..schemas import make_table
from ..stages import StageOutcome, run_stage
from ..store import Store
from .config import SELECT_STAGE, CollectConfig

SAEBENCH_RESULTS_REPO = "adamkarvonen/sae_bench_results_0125"
SAEBENCH_DATASET = "Skylion007/openwebtext"
HUB = "hub"  # --from-saebench without a file: download from SAEBENCH_RESULTS_REPO

_MODELS = {"py": ("pythia-160m-deduped", 8), "gem": ("gemma-2-2b", 12)}
_WIDTHS = {"4k": "2pow12", "16k": "2pow14", "65k": "2pow16"}
_ARCHS = {"btopk": "BatchTopK", "matbtopk": "MatryoshkaBatchTopK", "jumprelu": "JumpRelu", "gated": "GatedSAE",
          "topk": "TopK", "relu": "Standard", "pan": "PAnneal"}
_NAME_RE = re.compile(rf"^(py|gem)_({'|'.join(_WIDTHS)})_({'|'.join(_ARCHS)})_s([0-5])$")
_ROW_RE = re.compile(r"^│\s*(-?\d[\d.]*(?:e[-+]?\d+)?|nan|-?inf)\s*│(.*)│\s*$")


def saebench_results_path(sae_name: str) -> str:
    """The autointerp results file of a SAEBench SAE (``py_4k_topk_s0``) inside the results repo."""
    m = _NAME_RE.match(sae_name)
    if not m:
        raise ConfigError(f"{sae_name!r} is not a SAEBench SAE name, so SAEBench has no examples for it",
                          "use a name like py_4k_topk_s0 or gem_16k_jumprelu_s2, or pass --saebench-file FILE")
    model, width, arch, trainer = m.groups()
    model_name, layer = _MODELS[model]
    folder = f"saebench_{model_name}_width-{_WIDTHS[width]}_date-0108"
    return (f"autointerp_with_generations/{folder}/{folder}_{_ARCHS[arch]}_{model_name}__0108"
            f"_resid_post_layer_{layer}_trainer_{trainer}_eval_results.json")


def convert_marks(sequence: str) -> str:
    """SAEBench ``<<a>><<b>>`` (one mark per token) -> ``{{ab}}`` (one mark per run)."""
    return sequence.replace(">><<", "").replace("<<", "{{").replace(">>", "}}")


def parse_generation_examples(logs: str) -> list[tuple[float, str]]:
    """(top activation, marked sequence) rows of the generation-phase examples table in ``logs``."""
    start = logs.find("Generation phase")
    if start < 0:
        return []
    end = logs.find("Scoring phase", start)
    section = logs[start:end if end >= 0 else len(logs)]
    lines = section.splitlines()
    header = next((i for i, ln in enumerate(lines) if "Top act" in ln and "Sequence" in ln), None)
    if header is None:
        return []
    rows = []
    for line in lines[header + 1:]:
        if line.startswith("└"):
            break
        m = _ROW_RE.match(line.strip())
        if m:
            rows.append((float(m.group(1)), m.group(2).strip()))
    return rows


def _latent(key: str, record: Any) -> int:
    return int(str(record.get("latent", key) if isinstance(record, dict) else key))


def parse_autointerp_results(data: dict[str, Any], n_top: int) -> list[dict[str, Any]]:
    """Example rows (feature_index, example_index, kind, max_activation, text) from a results JSON."""
    per_latent = data.get("eval_result_unstructured")
    if not isinstance(per_latent, dict):
        raise ImportTableError("the SAEBench file has no eval_result_unstructured section",
                               "pass an autointerp eval_results.json from SAEBench")
    rows: list[dict[str, Any]] = []
    for key, record in per_latent.items():
        feature = _latent(key, record)
        logs = record.get("logs", "") if isinstance(record, dict) else ""
        for i, (act, seq) in enumerate(parse_generation_examples(logs)):
            rows.append({"feature_index": feature, "example_index": i, "kind": "top" if i < n_top else "iw",
                         "max_activation": act, "text": convert_marks(seq)})
    rows.sort(key=lambda r: (r["feature_index"], r["example_index"]))
    return rows


def fetch_results(sae_name: str, source: str) -> Path:
    """A local results JSON, or the SAE's file from the SAEBench results repo (``source == "hub"``)."""
    if source != HUB:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ImportTableError(f"SAEBench results file {path} does not exist", "check the path given to --saebench-file")
        return path
    filename = saebench_results_path(sae_name)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(SAEBENCH_RESULTS_REPO, filename, repo_type="dataset",
                                    token=os.environ.get("HF_TOKEN") or None))
    except Exception as e:
        raise CorpusError(f"could not download {filename} from {SAEBENCH_RESULTS_REPO}: {type(e).__name__}",
                          "check network access, or download the file and pass --saebench-file FILE") from e


def saebench_tables(data: dict[str, Any], cfg: CollectConfig) -> tuple[pa.Table, pa.Table]:
    """``features`` (the latents the file covers; the selection marked) and ``examples`` of the selection."""
    rows = parse_autointerp_results(data, cfg.n_top_ex_for_generation)
    if not rows:
        raise ImportTableError("the SAEBench file has no generation examples", "pass an autointerp results file")
    available = sorted({r["feature_index"] for r in rows})
    if cfg.feature_ids is not None:
        missing = sorted(set(cfg.feature_ids) - set(available))
        if missing:
            raise ConfigError(f"SAEBench has no examples for features {missing}",
                              f"it has {len(available)} features, e.g. {available[:5]}; use --features N instead")
        selected = sorted(set(cfg.feature_ids))
    elif cfg.features is not None and cfg.features < len(available):
        # the original samples over the features in the file's order (pandas' unique()), not sorted
        order = {f: i for i, f in enumerate(dict.fromkeys(_latent(k, r) for k, r in data["eval_result_unstructured"].items()))}
        in_file = sorted(available, key=order.__getitem__)
        selected = sorted(random.Random(cfg.seed).sample(in_file, cfg.features))
    else:
        selected = available
    chosen = set(selected)
    top = {f: max(r["max_activation"] for r in rows if r["feature_index"] == f) for f in available}
    features = make_table("features", [{"feature_index": f, "top_activation": top[f], "alive": True,
                                        "selected": f in chosen} for f in available])
    examples = make_table("examples", [r for r in rows if r["feature_index"] in chosen])
    return features, examples


def run_saebench_import(
    store: Store,
    run: str,
    sae_name: str,
    source: str,
    cfg: CollectConfig,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> StageOutcome:
    """The ``collect`` stage from SAEBench's published examples instead of a pass over a corpus."""
    path = fetch_results(sae_name, source)
    config = {"source": "saebench", "file": source if source != HUB else saebench_results_path(sae_name),
              "dataset": SAEBENCH_DATASET, "features": cfg.features,
              "feature_ids": list(cfg.feature_ids) if cfg.feature_ids is not None else None,
              "n_top_ex_for_generation": cfg.n_top_ex_for_generation, "seed": cfg.seed}
    summary: dict[str, Any] = {}

    def compute() -> dict[str, pa.Table]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ImportTableError(f"{path} is not valid JSON: {e}", "pass an autointerp eval_results.json") from e
        features, examples = saebench_tables(data, cfg)
        summary.update(n_latents=features.num_rows, n_alive=features.num_rows,
                       n_selected=int(sum(features["selected"].to_pylist())), n_examples=examples.num_rows,
                       dataset=SAEBENCH_DATASET)
        return {"features": features, "examples": examples}

    return run_stage(store, run, sae_name, SELECT_STAGE, config=config,
                     inputs={"saebench_examples": hash_file(path)}, compute=compute, force=force,
                     progress=progress, extra=lambda: dict(summary))
