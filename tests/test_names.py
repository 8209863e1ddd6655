"""Name resolution: the SAEBench grid, GemmaScope, sae_lens names, packaged SAEs, local paths, `saes`."""

from __future__ import annotations

import json
import re

import pytest
import torch

from sae_sens import names
from sae_sens.errors import UnknownSaeError
from tests.support.testing import save_dictionary_learning_sae

# The facts from the issue, written out independently of sae_sens.names.
ADAM_FOLDER = {"btopk": "BatchTopK", "matbtopk": "MatryoshkaBatchTopK", "gated": "GatedSAE", "jumprelu": "JumpRelu",
               "topk": "TopK", "relu": "Standard", "pan": "PAnneal"}
CANRAGER_FOLDER = {"btopk": "batch_top_k", "matbtopk": "matryoshka_batch_top_k", "gated": "gated",
                   "jumprelu": "jump_relu", "topk": "top_k", "relu": "standard_new", "pan": "p_anneal"}
WIDTH_POW = {"4k": 12, "16k": 14, "65k": 16}


def expected_saebench(model: str, width: str, arch: str, s: int) -> dict:
    p = WIDTH_POW[width]
    if model == "py":
        repo = f"adamkarvonen/saebench_pythia-160m-deduped_width-2pow{p}_date-0108"
        path = f"{ADAM_FOLDER[arch]}_pythia-160m-deduped__0108/resid_post_layer_8/trainer_{s}/ae.pt"
        return dict(repo_id=repo, path=path, model_id="EleutherAI/pythia-160m-deduped", layer=8,
                    hook="blocks.8.hook_resid_post", default_dtype="float32")
    if width == "4k":
        repo = "adamkarvonen/saebench_gemma-2-2b_width-2pow12_date-0108"
        path = f"{ADAM_FOLDER[arch]}_gemma-2-2b__0108/resid_post_layer_12/trainer_{s}/ae.pt"
    else:
        repo = f"canrager/saebench_gemma-2-2b_width-2pow{p}_date-0107"
        path = f"gemma-2-2b_{CANRAGER_FOLDER[arch]}_width-2pow{p}_date-0107/resid_post_layer_12/trainer_{s}/ae.pt"
    return dict(repo_id=repo, path=path, model_id="google/gemma-2-2b", layer=12,
                hook="blocks.12.hook_resid_post", default_dtype="bfloat16")


GRID = [(m, w, a, s) for m in ("py", "gem") for w in WIDTH_POW for a in ADAM_FOLDER for s in range(6)]


def test_whole_saebench_grid_resolves_to_repo_file_model_and_layer() -> None:
    assert len(GRID) == 252
    assert sorted(names.saebench_names()) == sorted(f"{m}_{w}_{a}_s{s}" for m, w, a, s in GRID)
    seen = set()
    for m, w, a, s in GRID:
        spec = names.resolve(f"{m}_{w}_{a}_s{s}")
        exp = expected_saebench(m, w, a, s)
        got = {k: getattr(spec, k) for k in exp}
        assert got == exp, spec.name
        assert spec.architecture == a
        assert spec.width == 2 ** WIDTH_POW[w]
        assert spec.sparsity == f"s{s}"
        assert spec.format == "dictionary_learning" and spec.source == "saebench"
        seen.add((spec.repo_id, spec.path))
    assert len(seen) == 252  # no two names share weights


def test_saebench_examples_from_the_issue() -> None:
    spec = names.resolve("py_16k_gated_s2")
    assert spec.repo_id == "adamkarvonen/saebench_pythia-160m-deduped_width-2pow14_date-0108"
    assert spec.path == "GatedSAE_pythia-160m-deduped__0108/resid_post_layer_8/trainer_2/ae.pt"
    spec = names.resolve("gem_65k_matbtopk_s4")
    assert spec.repo_id == "canrager/saebench_gemma-2-2b_width-2pow16_date-0107"
    assert spec.path == "gemma-2-2b_matryoshka_batch_top_k_width-2pow16_date-0107/resid_post_layer_12/trainer_4/ae.pt"
    assert spec.width == 65536 and spec.default_dtype == "bfloat16"
    assert names.resolve("  PY_4K_RELU_S0 ").name == "py_4k_relu_s0"  # case and spaces forgiven


def test_gemmascope_names() -> None:
    spec = names.resolve("gscope_16k_l0_82")
    assert (spec.repo_id, spec.path) == ("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82/params.npz")
    assert (spec.layer, spec.width, spec.architecture, spec.format) == (12, 16384, "jumprelu", "gemmascope_npz")
    assert spec.model_id == "google/gemma-2-2b" and spec.hook == "blocks.12.hook_resid_post"
    assert spec.extra == {}
    spec = names.resolve("gscope_layer20_16k_l0_71")
    assert spec.path == "layer_20/width_16k/average_l0_71/params.npz"
    assert (spec.layer, spec.hook) == (20, "blocks.20.hook_resid_post")
    spec = names.resolve("gscope_1m_l0_107")
    assert spec.width == 2**20 and spec.path == "layer_12/width_1m/average_l0_107/params.npz"


def test_gemmascope_128k_is_131k_with_a_warning() -> None:
    spec = names.resolve("gscope_128k_l0_67")
    assert spec.path == "layer_12/width_131k/average_l0_67/params.npz"
    assert spec.width == 131072 and spec.name == "gscope_131k_l0_67"
    (warning,) = spec.extra["warnings"]
    assert "128k" in warning and "131k" in warning


def test_gemmascope_catalogue_comes_from_the_installed_sae_lens() -> None:
    cat = names.gemmascope_catalogue()
    assert cat[(12, "16k")] == [22, 41, 82, 176, 445]
    assert set(w for layer, w in cat if layer == 12) >= set(names.GEMMASCOPE_WIDTHS)
    assert len({layer for layer, _ in cat}) == 26


def test_gemmascope_miss_lists_nearest_l0() -> None:
    with pytest.raises(UnknownSaeError) as e:
        names.resolve("gscope_16k_l0_44")  # the original README's example: not on the hub
    msg = e.value.one_line()
    assert "L0 44" in msg and "gscope_16k_l0_41" in msg
    assert msg.index("gscope_16k_l0_41") < msg.index("gscope_16k_l0_22")  # nearest first
    assert "layers are 0..25" in rejection("gscope_layer40_16k_l0_82")
    assert "widths are 16k, 32k" in rejection("gscope_2m_l0_82")
    assert "widths there: 16k, 65k" in rejection("gscope_layer0_1m_l0_82")


def rejection(name: str) -> str:
    with pytest.raises(UnknownSaeError) as e:
        names.resolve(name)
    return e.value.one_line()


@pytest.mark.parametrize(
    ("bad", "says", "suggests"),
    [
        ("py_8k_relu_s0", "width '8k'", "py_4k_relu_s0"),
        ("py_16k_gatd_s2", "architecture 'gatd'", "py_16k_gated_s2"),
        ("gem_4k_jumprelu_s6", "sparsity s6", "gem_4k_jumprelu_s5"),
        ("py_16k_gated", "malformed SAEBench name", "py_16k_gated_s"),
        ("gscope_16k_82", "malformed GemmaScope name", "gscope_"),
        ("py16k_gated_s2", "unknown SAE", "py_16k_gated_s2"),
        ("nonsense", "unknown SAE", "{py|gem}"),
        ("saelens:only-a-release", "malformed sae_lens name", "saelens:<release>/<sae_id>"),
    ],
)
def test_malformed_and_unknown_names_are_rejected_with_suggestions(bad: str, says: str, suggests: str) -> None:
    line = rejection(bad)
    assert says in line and suggests in line
    assert "\n" not in line


def test_saelens_names() -> None:
    spec = names.resolve("saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    assert (spec.format, spec.path) == ("saelens", "layer_12/width_16k/canonical")
    assert spec.extra["release"] == "gemma-scope-2b-pt-res-canonical"


def test_local_paths(tmp_path) -> None:
    d_in, d_sae = 8, 16
    dl = save_dictionary_learning_sae(tmp_path / "dl", W_enc=torch.randn(d_in, d_sae), b_enc=torch.zeros(d_sae),
                                      trainer_class="TopKTrainer", k=4, layer=3, lm_name="EleutherAI/pythia-70m")
    spec = names.resolve(str(dl))
    assert (spec.format, spec.source, spec.architecture) == ("dictionary_learning", "local", "topk")
    assert (spec.model_id, spec.layer, spec.hook, spec.width) == ("EleutherAI/pythia-70m", 3, "blocks.3.hook_resid_post", 16)

    npz = tmp_path / "models--google--gemma-scope-2b-pt-res" / "layer_5" / "width_16k" / "average_l0_68" / "params.npz"
    npz.parent.mkdir(parents=True)
    npz.write_bytes(b"")
    spec = names.resolve(str(npz))
    assert (spec.format, spec.layer, spec.width, spec.model_id) == ("gemmascope_npz", 5, 16384, "google/gemma-2-2b")

    sl = tmp_path / "sl"
    sl.mkdir()
    (sl / "cfg.json").write_text("{}")
    (sl / "sae_weights.safetensors").write_bytes(b"")
    assert names.resolve(str(sl)).format == "saelens"

    assert "not an SAE folder" in rejection(str(tmp_path))


def test_packaged_sae_resolves_by_name(tmp_path, monkeypatch) -> None:
    root = tmp_path / "demo_saes"
    save_dictionary_learning_sae(root / "smol_1k_topk", W_enc=torch.randn(8, 16), b_enc=torch.zeros(16),
                                 trainer_class="TopKTrainer", k=2, layer=3, lm_name="demo:smollm2")
    monkeypatch.setattr(names, "packaged_dir", lambda: root)
    spec = names.resolve("smol_1k_topk")
    assert (spec.source, spec.path) == ("packaged", str(root / "smol_1k_topk"))
    assert (spec.model_id, spec.hook, spec.architecture) == ("demo:smollm2", "blocks.3.hook_resid_post", "topk")
    assert "smol_1k_topk" in [s.name for s in names.known_names("smol")]
    assert "did you mean smol_1k_topk" in rejection("smol_1k_topc")


def test_known_names_and_filters() -> None:
    every = names.known_names()
    got = {s.name for s in every}
    assert set(names.saebench_names()) <= got and "gscope_16k_l0_82" in got and "gscope_layer20_16k_l0_71" in got
    assert len(got) == len(every)
    assert {s.name for s in names.known_names("py_4k_gated")} == {f"py_4k_gated_s{i}" for i in range(6)}
    words = names.known_names("gemma jumprelu 65k")
    assert words and all(s.architecture == "jumprelu" and s.width == 65536 for s in words)
    assert any(s.source == "gemmascope" for s in words) and any(s.source == "saebench" for s in words)
    glob = names.known_names("gem_*_s5")
    assert len(glob) == 21 and all(re.fullmatch(r"gem_\d+k_[a-z]+_s5", s.name) for s in glob)


def test_saes_command_lists_names(capsys, monkeypatch) -> None:
    from sae_sens.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: rich would shorten cells otherwise
    main(["saes", "--filter", "py_16k_gated", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f"py_16k_gated_s{i}" for i in range(6)]
    r = rows[2]
    assert (r["model"], r["layer"], r["width"], r["architecture"], r["sparsity"]) == (
        "EleutherAI/pythia-160m-deduped", 8, 16384, "gated", "s2")
    assert r["repo"] == "adamkarvonen/saebench_pythia-160m-deduped_width-2pow14_date-0108"

    main(["saes", "--filter", "gscope_16k"])
    out = capsys.readouterr().out
    assert "gscope_16k_l0_82" in out and "google/gemma-scope-2b-pt-res" in out and "jumprelu" in out

    with pytest.raises(SystemExit) as e:
        main(["saes", "--filter", "no-such-sae-anywhere"])
    assert e.value.code != 0
    assert "no known SAE matches" in capsys.readouterr().err


def test_a_recorded_model_reference_splits_into_id_and_revision() -> None:
    from sae_sens.stages import split_model_ref

    assert split_model_ref("HuggingFaceTB/SmolLM2-135M@abc123") == ("HuggingFaceTB/SmolLM2-135M", "abc123")
    assert split_model_ref("/models/tiny@local") == ("/models/tiny", None)
    assert split_model_ref("gpt2") == ("gpt2", None)  # no revision recorded: the id, not ""
    assert split_model_ref("") == (None, None) and split_model_ref(None) == (None, None)


def test_what_a_name_says_agrees_with_what_it_resolves_to() -> None:
    """One copy of the name rules: the report's description of every registry name and every demo
    SAE is what the resolver finds for it."""
    from sae_sens.names import packaged_names, parse_sae_name, resolve, saebench_names

    names = saebench_names()
    assert len(names) > 200
    for name in names + packaged_names():
        said, spec = parse_sae_name(name), resolve(name)
        assert said["width"] == spec.width, name
        assert said["architecture"] == spec.architecture, name
        if "model" in said:
            assert said["model"] == spec.model_id and said["sparsity"] == spec.sparsity, name
