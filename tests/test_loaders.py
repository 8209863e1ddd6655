"""Loading by NAME, offline, through sae_bench's and sae_lens's own loaders, from a Hugging Face cache
laid out exactly as the hub lays it out (refs/main -> snapshots/<commit>/<repo path> -> blobs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_sens import hub, names
from sae_sens.errors import SaeLoadError, UnknownSaeError
from sae_sens.sae import load_sae
from tests.support.testing import put_in_hub_cache, random_sae, save_dictionary_learning_sae

D_IN = 16
SECRET = "hf_thisIsNotARealTokenButMustNeverBeRecorded"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, HF_HUB_OFFLINE=1 and an HF_TOKEN. huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE into ``constants`` at import, so those are patched as well as the environment."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.chdir(tmp_path)  # sae_bench's own downloads would land in ./downloaded_saes
    return cache


def cache_saebench(cache: Path, tmp: Path, name: str, arch: str, **kw) -> tuple:
    """Write a random SAE of ``arch`` where ``name`` lives on the hub; returns (spec, folder written)."""
    spec = names.resolve(name)
    folder = random_sae(tmp / "src" / name, arch, d_in=D_IN, d_sae=spec.width, layer=spec.layer,
                        lm_name=spec.model_id, **kw)
    stem = spec.path.rsplit("/", 1)[0]
    files = {f"{stem}/{p.name}": p for p in folder.iterdir()}
    put_in_hub_cache(cache, spec.repo_id, files)
    return spec, folder


def reference_encode(arch: str, folder: Path, x: torch.Tensor) -> torch.Tensor:
    """The architecture's formula, from the raw files (so a wrong key mapping in any loader shows)."""
    relu = torch.relu
    if arch == "gemmascope":
        p = {k: torch.from_numpy(v) for k, v in np.load(folder).items()}
        pre = x @ p["W_enc"] + p["b_enc"]
        return relu(pre) * (pre > p["threshold"])
    sd = torch.load(folder / "ae.pt")
    k = json.loads((folder / "config.json").read_text())["trainer"].get("k")
    if arch in ("jumprelu",):
        pre = x @ sd["W_enc"] + sd["b_enc"]
        return relu(pre) * (pre > sd["threshold"])
    if arch == "matbtopk":
        post = relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])
        return post * (post > sd["threshold"])
    if arch == "gated":
        x_enc = (x - sd["decoder_bias"]) @ sd["encoder.weight"].T
        return (x_enc + sd["gate_bias"] > 0) * relu(sd["r_mag"].exp() * x_enc + sd["mag_bias"])
    post = relu((x - sd["bias"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    if arch == "btopk":
        return post * (post > sd["threshold"])
    if arch == "topk":
        top = post.topk(k, dim=-1)
        return torch.zeros_like(post).scatter(-1, top.indices, top.values)
    return post  # relu, pan


SAE_BENCH_CLASS = {"relu": "ReluSAE", "pan": "ReluSAE", "topk": "TopKSAE", "btopk": "BatchTopKSAE",
                   "matbtopk": "BatchTopKSAE", "jumprelu": "JumpReluSAE", "gated": "GatedSAE"}


@pytest.mark.parametrize("arch", list(SAE_BENCH_CLASS))
def test_saebench_name_loads_offline_through_sae_bench_loader(hub_cache, tmp_path, arch) -> None:
    name = f"py_4k_{arch}_s1"
    spec, folder = cache_saebench(hub_cache, tmp_path, name, arch,
                                  eval_results={"l0": 41.5, "frac_variance_explained": 0.87})
    sae = load_sae(name, device="cpu")
    assert type(sae.module).__name__ == SAE_BENCH_CLASS[arch]
    assert type(sae.module).__module__.startswith("sae_bench.custom_saes.")
    assert (sae.d_in, sae.d_sae, sae.dtype) == (D_IN, 4096, torch.float32)  # pythia: float32
    assert sae.spec.architecture == arch and sae.spec.hook == "blocks.8.hook_resid_post"
    assert sae.spec.model_id == "EleutherAI/pythia-160m-deduped"
    assert sae.info["eval_results"] == {"l0": 41.5, "frac_variance_explained": 0.87}
    # the files came from the hub cache, not from ./downloaded_saes
    assert not (tmp_path / "downloaded_saes").exists()

    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(1))
    acts = sae.encode(x)
    torch.testing.assert_close(acts, reference_encode(arch, folder, x), rtol=1e-5, atol=1e-5)
    frac = (acts > 0).float().mean().item()
    assert 0.0 < frac < 0.5  # some latents fire, most do not: the comparison is not trivial
    latents = torch.tensor([5, 0, 4095, 77, 5, 1234])
    sub = sae.encode_latents(x, latents)
    assert sub.shape == (3, 5, 6)
    torch.testing.assert_close(sub, acts[..., latents], rtol=1e-5, atol=1e-5)
    assert torch.equal(sub > 0, acts[..., latents] > 0)


def test_gemma_canrager_layout_and_bfloat16_default(hub_cache, tmp_path) -> None:
    spec, folder = cache_saebench(hub_cache, tmp_path, "gem_16k_gated_s3", "gated")
    assert spec.repo_id.startswith("canrager/")
    sae = load_sae("gem_16k_gated_s3", device="cpu")
    assert (sae.d_sae, sae.dtype, sae.spec.layer) == (16384, torch.bfloat16, 12)  # gemma: bfloat16
    assert "eval_results" not in sae.info  # optional file absent: fine
    sae32 = load_sae("gem_16k_gated_s3", device="cpu", dtype="float32")
    x = torch.randn(4, D_IN)
    torch.testing.assert_close(sae32.encode(x), reference_encode("gated", folder, x), rtol=1e-5, atol=1e-5)


def test_gemmascope_name_loads_offline_through_sae_bench_loader(hub_cache, tmp_path) -> None:
    spec = names.resolve("gscope_16k_l0_82")
    npz = random_sae(tmp_path / "src", "gemmascope", d_in=D_IN, d_sae=16384)
    put_in_hub_cache(hub_cache, "google/gemma-scope-2b-pt-res", {spec.path: npz})
    sae = load_sae("gscope_16k_l0_82", device="cpu", dtype="float32")
    assert type(sae.module).__name__ == "JumpReluSAE"
    assert (sae.d_in, sae.d_sae, sae.spec.hook) == (D_IN, 16384, "blocks.12.hook_resid_post")
    x = torch.randn(6, D_IN)
    acts = sae.encode(x)
    torch.testing.assert_close(acts, reference_encode("gemmascope", npz, x), rtol=1e-5, atol=1e-5)
    assert (acts > 0).any()
    idx = torch.tensor([3, 16383, 9000])
    torch.testing.assert_close(sae.encode_latents(x, idx), acts[:, idx], rtol=1e-5, atol=1e-5)
    # the same file by local path
    local = load_sae(str(npz), device="cpu", dtype="float32")
    torch.testing.assert_close(local.encode(x), acts)
    assert local.weight_hash == sae.weight_hash


def _saelens_folder(folder: Path, hook: str = "blocks.0.hook_resid_pre", model: str = "gpt2-small") -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=32, metadata=SAEMetadata(hook_name=hook, model_name=model)))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    sae.save_model(folder)
    return folder


def _saelens_reference(folder: Path, x: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file

    p = load_file(folder / "sae_weights.safetensors")
    return torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])


def test_saelens_folder_by_path(tmp_path) -> None:
    folder = _saelens_folder(tmp_path / "my_sae", hook="blocks.3.hook_resid_post", model="pythia-70m-deduped")
    sae = load_sae(str(folder), device="cpu")
    assert type(sae.module).__module__.startswith("sae_lens.")
    assert (sae.spec.hook, sae.spec.layer, sae.spec.architecture) == ("blocks.3.hook_resid_post", 3, "relu")
    assert sae.spec.model_id == "EleutherAI/pythia-70m-deduped"  # TransformerLens name -> hub id
    x = torch.randn(5, D_IN)
    acts = sae.encode(x)
    torch.testing.assert_close(acts, _saelens_reference(folder, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode_latents(x, torch.tensor([31, 2])), acts[:, [31, 2]])


def test_saelens_release_name_loads_offline(hub_cache, tmp_path) -> None:
    src = _saelens_folder(tmp_path / "src")
    put_in_hub_cache(hub_cache, "jbloom/GPT2-Small-SAEs-Reformatted",
                     {f"blocks.0.hook_resid_pre/{p.name}": p for p in src.iterdir()})
    sae = load_sae("saelens:gpt2-small-res-jb/blocks.0.hook_resid_pre", device="cpu")
    assert (sae.spec.model_id, sae.spec.hook, sae.d_sae) == ("gpt2", "blocks.0.hook_resid_pre", 32)
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(sae.encode(x), _saelens_reference(src, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownSaeError) as e:
        load_sae("saelens:gpt2-small-res-jb/blocks.0.hook_resid_prex", device="cpu")
    assert "did you mean blocks.0.hook_resid_pre" in e.value.one_line()


def test_missing_file_offline_names_repo_and_file(hub_cache) -> None:
    with pytest.raises(SaeLoadError) as e:
        load_sae("py_65k_topk_s5", device="cpu")
    line = e.value.one_line()
    assert "adamkarvonen/saebench_pythia-160m-deduped_width-2pow16_date-0108" in line
    assert "TopK_pythia-160m-deduped__0108/resid_post_layer_8/trainer_5/ae.pt" in line
    assert "HF_HUB_OFFLINE=1" in line


def test_offline_flag_is_read_at_call_time(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()


def test_hf_token_never_reaches_spec_info_or_manifest(hub_cache, tmp_path) -> None:
    from sae_sens.stages import record_sae_info
    from sae_sens.store import Store

    cache_saebench(hub_cache, tmp_path, "py_4k_relu_s0", "relu", eval_results={"l0": 3.0})
    sae = load_sae("py_4k_relu_s0", device="cpu")
    store = Store(tmp_path / "evals")
    record_sae_info(store, "default", "py_4k_relu_s0", sae)
    manifest = next((tmp_path / "evals").rglob("manifest.json")).read_text()
    assert json.loads(manifest)["sae_info"]["eval_results"] == {"l0": 3.0}
    assert SECRET not in manifest
    assert SECRET not in json.dumps(sae.spec.to_json()) + json.dumps(sae.info, default=str)


def test_files_that_do_not_match_the_name_are_refused(hub_cache, tmp_path) -> None:
    # a TopK SAE where the name promises gated
    spec = names.resolve("py_4k_gated_s0")
    folder = random_sae(tmp_path / "wrong", "topk", d_in=D_IN, d_sae=4096, layer=8, lm_name=spec.model_id)
    stem = spec.path.rsplit("/", 1)[0]
    put_in_hub_cache(hub_cache, spec.repo_id, {f"{stem}/{p.name}": p for p in folder.iterdir()})
    with pytest.raises(SaeLoadError, match="should be a gated SAE"):
        load_sae("py_4k_gated_s0", device="cpu")
    # the right architecture but the wrong width
    spec = names.resolve("py_4k_relu_s0")
    folder = random_sae(tmp_path / "narrow", "relu", d_in=D_IN, d_sae=64, layer=8, lm_name=spec.model_id)
    stem = spec.path.rsplit("/", 1)[0]
    put_in_hub_cache(hub_cache, spec.repo_id, {f"{stem}/{p.name}": p for p in folder.iterdir()})
    with pytest.raises(SaeLoadError, match="should have 4096 latents"):
        load_sae("py_4k_relu_s0", device="cpu")
    # the right architecture and width, trained on another layer
    folder = random_sae(tmp_path / "layer3", "relu", d_in=D_IN, d_sae=4096, layer=3, lm_name=spec.model_id)
    put_in_hub_cache(hub_cache, spec.repo_id, {f"{stem}/{p.name}": p for p in folder.iterdir()})
    with pytest.raises(SaeLoadError, match="should read layer 8 but .* says layer 3"):
        load_sae("py_4k_relu_s0", device="cpu")


def test_local_folder_errors(tmp_path) -> None:
    folder = save_dictionary_learning_sae(tmp_path / "odd", W_enc=torch.randn(8, 16), b_enc=torch.zeros(16),
                                          trainer_class="MysteryTrainer")
    with pytest.raises(SaeLoadError, match="unknown trainer_class 'MysteryTrainer'"):
        load_sae(str(folder), device="cpu")
    # decoder rows not unit norm: sae_bench refuses a BatchTopK SAE; the error names the folder
    bad = save_dictionary_learning_sae(tmp_path / "bad", W_enc=torch.randn(8, 16), b_enc=torch.zeros(16),
                                       W_dec=3 * torch.randn(16, 8), trainer_class="BatchTopKTrainer", k=2,
                                       threshold=0.5)
    with pytest.raises(SaeLoadError, match="sae_bench could not load"):
        load_sae(str(bad), device="cpu")


def test_packaged_sae_loads_by_name(tmp_path, monkeypatch) -> None:
    root = tmp_path / "demo_saes"
    random_sae(root / "smol_1k_topk", "topk", d_in=D_IN, d_sae=32, k=4, layer=3, lm_name="demo:smollm2")
    monkeypatch.setattr(names, "packaged_dir", lambda: root)
    sae = load_sae("smol_1k_topk", device="cpu")
    assert (sae.spec.model_id, sae.spec.hook, sae.spec.architecture, sae.d_sae) == (
        "demo:smollm2", "blocks.3.hook_resid_post", "topk", 32)
    assert ((sae.encode(torch.randn(7, D_IN)) > 0).sum(-1) <= 4).all()


def test_loader_table_is_sae_bench_trainer_loaders() -> None:
    """Our trainer_class -> loader table must be sae_bench's TRAINER_LOADERS. Importing the module that
    holds it costs seconds (it imports every eval), so its source is read instead."""
    import ast
    import importlib.util

    from sae_sens.sae import TRAINER_ARCH, dictionary_learning_loaders

    origin = importlib.util.find_spec("sae_bench.custom_saes.run_all_evals_dictionary_learning_saes").origin
    tree = ast.parse(Path(origin).read_text())
    (table,) = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "TRAINER_LOADERS" for t in n.targets)]
    theirs = {k.value: (v.value.id, v.attr) for k, v in zip(table.keys, table.values, strict=True)}
    ours = {k: (fn.__module__.rsplit(".", 1)[-1], fn.__name__) for k, fn in dictionary_learning_loaders().items()}
    assert ours == theirs
    assert set(TRAINER_ARCH) == set(theirs)


class FakeHub:
    """A real HTTP server answering the hub's file protocol (HEAD/GET .../resolve/<rev>/<path>, with the
    X-Repo-Commit / ETag / X-Error-Code headers huggingface_hub reads). Records every request."""

    COMMIT = "c" * 40

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files: dict[tuple[str, str], bytes] = {}
        self.gated: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                from urllib.parse import unquote

                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                parts = unquote(self.path).lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "NotAResolveUrl")
                org, name, _resolve, _rev, *rest = parts
                repo, path = f"{org}/{name}", "/".join(rest)
                if repo in hub.gated:
                    return self._error(403, "GatedRepo")
                if not any(r == repo for r, _ in hub.files):
                    return self._error(401, "RepoNotFound")
                data = hub.files.get((repo, path))
                if data is None:
                    return self._error(404, "EntryNotFound")
                import hashlib

                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: close (shutdown) waits for one poll, 0.5 s by default
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(hub_cache, monkeypatch):
    """Online mode against a local fake hub (the real one is unreachable here)."""
    from huggingface_hub import constants

    hub_ = FakeHub()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub_.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub_.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield hub_
    hub_.close()


def test_download_into_the_normal_cache_with_token_then_offline(fake_hub, hub_cache, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    spec = names.resolve("py_4k_jumprelu_s2")
    folder = random_sae(tmp_path / "src", "jumprelu", d_in=D_IN, d_sae=4096, layer=8, lm_name=spec.model_id)
    stem = spec.path.rsplit("/", 1)[0]
    for f in ("ae.pt", "config.json"):  # no eval_results.json in this repo: optional, a 404 is fine
        fake_hub.files[(spec.repo_id, f"{stem}/{f}")] = (folder / f).read_bytes()
    sae = load_sae("py_4k_jumprelu_s2", device="cpu")
    assert sae.d_sae == 4096 and "eval_results" not in sae.info
    snapshot = hub_cache / "models--adamkarvonen--saebench_pythia-160m-deduped_width-2pow12_date-0108" / "snapshots"
    assert (snapshot / FakeHub.COMMIT / spec.path).is_file()  # huggingface_hub's own cache layout
    files = [(p.split("/resolve/main/")[1], auth) for _, p, auth in fake_hub.requests if "/resolve/" in p]
    assert {f for f, _ in files} == {f"{stem}/ae.pt", f"{stem}/config.json", f"{stem}/eval_results.json"}
    assert {auth for _, auth in files} == {f"Bearer {SECRET}"}  # HF_TOKEN is honoured...
    assert SECRET not in json.dumps(sae.spec.to_json()) + json.dumps(sae.info, default=str)  # ...never recorded

    # offline now: served from the cache, no request made
    n = len(fake_hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = load_sae("py_4k_jumprelu_s2", device="cpu")
    assert again.weight_hash == sae.weight_hash and len(fake_hub.requests) == n


def test_hub_errors_are_one_clear_line(fake_hub) -> None:
    fake_hub.files[("adamkarvonen/other", "x")] = b"x"
    with pytest.raises(SaeLoadError) as e:  # repo missing
        load_sae("py_4k_relu_s0", device="cpu")
    assert "adamkarvonen/saebench_pythia-160m-deduped_width-2pow12_date-0108 not found" in e.value.one_line()
    fake_hub.gated.add("google/gemma-scope-2b-pt-res")
    with pytest.raises(SaeLoadError) as e:
        load_sae("gscope_16k_l0_82", device="cpu")
    assert "is gated" in e.value.one_line() and "HF_TOKEN" in e.value.one_line()
    fake_hub.files[("adamkarvonen/saebench_pythia-160m-deduped_width-2pow12_date-0108", "README.md")] = b"hi"
    with pytest.raises(SaeLoadError) as e:  # repo there, file not
        load_sae("py_4k_relu_s0", device="cpu")
    assert "has no file Standard_pythia-160m-deduped__0108/resid_post_layer_8/trainer_0/ae.pt" in e.value.one_line()
