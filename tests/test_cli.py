"""The CLI as a user meets it: startup without heavy imports (counted through ``sys.modules`` in a
real subprocess), usage errors as one line with exit 2, bare help, -h, --version, completion,
device checks before loading, "did you mean --run", and progress lines off a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sae_sens import __version__
from sae_sens.cli.progress import LineProgress, RichProgress
from sae_sens.devices import _torch_build_has_cuda
from sae_sens.schemas import make_table
from sae_sens.store import Store

HEAVY = ("torch", "transformers", "sae_bench", "sae_lens", "duckdb", "datasets")
ROOT = Path(__file__).resolve().parents[1]

# Runs the real entry point, then reports its exit code and which heavy modules it imported.
PROBE = """
import json, sys
from sae_sens.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
heavy = sorted(m for m in HEAVY if m in sys.modules)
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
""".replace("HEAVY", repr(HEAVY))


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["HF_HUB_OFFLINE"] = "1"
    e.pop("SAE_SENS_DEBUG", None)
    e.update(extra)
    return e


def probe(*args: str, **extra_env: str) -> tuple[int, list[str], str, str]:
    """(exit code, heavy modules imported, stdout, stderr without the probe line)."""
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env(**extra_env),
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    err, _, tail = p.stderr.rpartition("\nPROBE ")
    assert tail, p.stderr
    info = json.loads(tail)
    return info["code"], info["heavy"], p.stdout, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ----- answers at once ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["collect", "--help"], ["report", "-h"], []])
def test_help_imports_nothing_heavy_and_exits_0(args: list[str]) -> None:
    code, heavy, out, err = probe(*args)
    assert code == 0 and heavy == []
    assert "Usage: sae-sens" in out and "Error" not in out + err
    if not args:  # bare `sae-sens`: the command list, not an error
        assert "collect" in out and "report" in out and err.strip() == ""


def test_version() -> None:
    code, heavy, out, _ = probe("--version")
    assert (code, heavy, out.strip()) == (0, [], f"sae-sens {__version__}")


@pytest.mark.parametrize(("args", "must"), [
    (["collect", "--sae", "py_4k_topq_s0"], ["unknown SAEBench SAE 'py_4k_topq_s0'", "py_4k_topk_s0"]),
    (["score", "--sae", "no_such_sae"], ["unknown SAE 'no_such_sae'", "sae-sens saes"]),
    (["run", "--sae", "gscope_16k_l0_83"], ["GemmaScope has no SAE with L0 83", "gscope_16k_l0_82"]),
    (["collect"], ["Missing option '--sae'", "sae-sens collect --help"]),
    (["collect", "--sae", "py_4k_topk_s0", "--features", "abc"], ["'--features'", "integer"]),
    (["generate", "--sae", "py_4k_topk_s0", "--max-workers", "0"], ["'--max-workers'", "greater than or equal to 1"]),
    (["collect", "--sae", "py_4k_topk_s0", "--dtype", "f8"], ["--dtype 'f8'", "bfloat16"]),
    (["collect", "--sae", "py_4k_topk_s0", "--device", "tpu"], ["unknown device 'tpu'", "cuda:N"]),
    (["colect"], ["No such command 'colect'"]),
    (["report", "--compare", "a"], ["'--compare' requires 2 arguments", "see 'sae-sens report --help'"]),
    (["show", "--sae", "x", "nine"], ["'feature'", "integer", "see 'sae-sens show --help'"]),
])
def test_usage_errors_are_one_line_exit_2_without_heavy_imports(args: list[str], must: list[str]) -> None:
    code, heavy, out, err = probe(*args)
    lines = error_lines(err)
    assert code == 2 and heavy == [] and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(m in lines[0] for m in must), lines[0]
    for leak in ("Traceback", "MissingParameter", "BadParameter", "NoSuchOption", "UsageError", "Exception"):
        assert leak not in err


@pytest.mark.parametrize("command", [["generate", "--dry-run"], ["generate"], ["run"]])
def test_unknown_generator_fails_before_torch(command: list[str], tmp_path: Path) -> None:
    # `run` checks it before its collect stage, which would otherwise pass over a corpus first
    code, heavy, _, err = probe(*command, "--sae", "py_4k_topk_s0", "--generator", "foo:bar", "--store", str(tmp_path))
    assert code == 2 and "torch" not in heavy and "transformers" not in heavy
    assert error_lines(err) == [error_lines(err)[0]] and "unknown generator 'foo:bar'" in err


@pytest.mark.skipif(_torch_build_has_cuda() is not False, reason="needs a CPU-only build of torch")
def test_device_cuda_on_a_cpu_build_is_one_line_before_loading_anything() -> None:
    code, heavy, _, err = probe("collect", "--sae", "smol_576_topk", "--device", "cuda", "--corpus", "demo:wiki")
    assert code == 2 and heavy == []  # not even torch: the build is read from torch/version.py
    lines = error_lines(err)
    assert len(lines) == 1 and "--device cuda" in lines[0] and "CPU-only" in lines[0] and "--device cpu" in lines[0]


def test_device_check_reads_the_torch_build_like_torch_does() -> None:
    import torch

    assert _torch_build_has_cuda() is (torch.version.cuda is not None)


@pytest.mark.slow  # five fresh interpreters
def test_shell_completion_completes_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        p = subprocess.run([sys.executable, "-m", "sae_sens"], capture_output=True, text=True, cwd=ROOT,
                           env=env(_SAE_SENS_COMPLETE="complete_bash", COMP_WORDS=words,
                                   COMP_CWORD=str(len(words.split()) - 1)))
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    assert complete("sae-sens col") == ["collect"]
    assert "--device" in complete("sae-sens collect --dev")
    assert complete("sae-sens score --sae py_16k_gat") == [f"py_16k_gated_s{i}" for i in range(6)]
    assert complete("sae-sens run --sae smol_576") == ["smol_576_topk"]
    # completing after an unknown SAE must not fail (validation is skipped while completing)
    assert "--dtype" in complete("sae-sens collect --sae nope --dt")


# ----- did you mean --run ---------------------------------------------------------------------


@pytest.mark.slow  # two fresh interpreters (it checks what they import)
def test_missing_table_in_this_run_suggests_the_run_that_has_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "evals")
    rows = [{"feature_index": 0, "example_index": 0, "kind": "top", "max_activation": 1.0, "text": "a {{b}} c"}]
    store.write_table("demo", "smol_576_topk", "examples", make_table("examples", rows))
    code, heavy, _, err = probe("generate", "--sae", "smol_576_topk", "--store", str(store.root), "--dry-run")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "torch" not in heavy
    assert "no examples table for run 'default'" in lines[0] and "did you mean --run demo?" in lines[0]
    # nowhere in the store: the hint says which command makes it
    code, _, _, err = probe("generate", "--sae", "smol_1152_topk", "--store", str(store.root), "--dry-run")
    assert code == 1 and "sae-sens collect --run default --sae smol_1152_topk" in err and "did you mean" not in err


# ----- progress off a terminal ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_a_line_per_interval_with_rate_and_eta() -> None:
    from sae_sens.progress import warn

    out, clock = io.StringIO(), Clock()
    p = LineProgress(out, interval=10, clock=clock)
    p.start("collect pass", total=100)
    for _ in range(4):  # 4 batches of 5 over 4 s: under the interval, so no line
        clock.t += 1
        p.advance("collect pass", 5)
    assert out.getvalue() == ""  # a task quicker than the interval says nothing
    clock.t += 6  # 10 s in, 25 done: 2.5/s, 75 left -> 30 s
    p.advance("collect pass", 5, info="batch 5")
    warn(p, "something [ray] kept")  # plain text: brackets are text, never markup
    clock.t += 20
    p.finish("collect pass")
    assert out.getvalue().splitlines() == [
        "collect pass: 25/100 (25%), 2.5/s, ETA 30s, elapsed 10s · batch 5",
        "warning: something [ray] kept",
        "collect pass: finished 100 in 30s",
    ]


def test_line_progress_without_total_and_slow_items() -> None:
    out, clock = io.StringIO(), Clock()
    p = LineProgress(out, interval=10, clock=clock)
    p.start("generate")
    clock.t += 40
    p.advance("generate", 2)
    assert out.getvalue().splitlines() == ["generate: 2, 20s each, elapsed 40s"]
    p.start("tokenize", total=5)
    p.advance("tokenize", 5)
    p.finish("tokenize")  # quick: no line at all, not even "finished"
    assert len(out.getvalue().splitlines()) == 1


def test_line_progress_heartbeat_covers_a_task_that_does_not_advance() -> None:
    out, clock = io.StringIO(), Clock()
    p = LineProgress(out, interval=10, clock=clock)
    p.start("score", total=8)
    p.advance("score", 2)
    clock.t += 9
    p.heartbeat()  # not yet 10 s since the last line
    clock.t += 3
    p.heartbeat()  # one slow batch: the log still hears from the task
    p.finish("score")
    clock.t += 30
    p.heartbeat()  # finished tasks stay quiet
    assert out.getvalue().splitlines() == [
        "score: 2/8 (25%), 0.167/s, ETA 36s, elapsed 12s", "score: finished 8 in 12s"]
    with LineProgress(io.StringIO(), interval=10) as q:  # as a context manager a thread calls heartbeat()
        ticker = q._ticker
        assert ticker is not None and ticker.is_alive()
    assert not ticker.is_alive()


def test_cli_sink_off_a_terminal_writes_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with RichProgress() as p:  # pytest's captured stderr is not a terminal
        assert isinstance(p._sink, LineProgress)
        p.start("score", total=3)
        p.log("loading model [m] …")
        p.advance("score", 3)
        p.finish("score")
    # plain text as written (brackets too); the quick task silent
    assert capsys.readouterr().err.splitlines() == ["loading model [m] …"]


# ----- sae-sens demo ----------------------------------------------------------------------------


def test_demo_assets_pinned_like_the_makefile() -> None:
    from sae_sens.cli.demo_cmd import DEMO_ASSETS

    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("DEMO_ASSETS :="))
    assert tuple(line.split(":=", 1)[1].split()) == DEMO_ASSETS


def test_demo_command_runs_the_demo_with_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_sens.cli import demo_cmd, main

    monkeypatch.setattr(demo_cmd, "missing_assets", lambda: [])
    seen: list[tuple[tuple[object, ...], dict[str, object]]] = []
    # the demo itself is tested in test_demo_smoke.py, through the same command
    monkeypatch.setattr(demo_cmd, "run_demo", lambda *a, **kw: seen.append((a, kw)))
    main(["demo", "--store", "s", "--features", "2", "--samples", "3", "--sae", "smol_576_topk", "--negatives", "0"])
    assert seen == [(("s", "demo", ["smol_576_topk"]), {"tokens": 20000, "features": 2, "samples": 3,
                                                         "max_tokens": 384, "judge_texts": 1, "negatives": 0})]


def test_demo_command_without_assets_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from sae_sens.cli import demo_cmd, main

    monkeypatch.setattr(demo_cmd, "DEMO_ASSETS", ("no-such-asset-wheel==1.0",))
    with pytest.raises(SystemExit) as e:
        main(["demo", "--no-install"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "pip install --no-deps no-such-asset-wheel==1.0" in err


@pytest.mark.slow  # builds a model and collects through the CLI
def test_collect_off_a_terminal_prints_loading_and_stage_lines(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from sae_sens.cli import main
    from tests.support.testing import build_tiny_model, save_dictionary_learning_sae, tiny_corpus

    docs = tiny_corpus(60, seed=3)
    model = build_tiny_model(tmp_path / "model", texts=docs, hidden=32, layers=1)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    g = torch.Generator().manual_seed(0)
    sae = save_dictionary_learning_sae(tmp_path / "sae", W_enc=torch.randn(32, 40, generator=g), b_enc=torch.zeros(40),
                                       layer=0, lm_name=str(model))
    capsys.readouterr()
    main(["collect", "--sae", str(sae), "--store", str(tmp_path / "evals"), "--corpus", str(corpus),
          "--total-tokens", "1500", "--context-size", "48", "--features", "2", "--device", "cpu"])
    err = capsys.readouterr().err.splitlines()
    assert f"loading SAE {sae} …" in err
    assert any(line.startswith(f"loading model {model} (up to blocks.0.hook_resid_post)") for line in err)
    # anything else is a stage's timed line (stages over 10 s) or its end: plain text, no bars, no colour
    status = re.compile(r"^(tokenize|collect pass|collect examples): ([\d,]+/[\d,]+ \(\d+%\), .*elapsed|finished )")
    assert all(line.startswith("loading ") or status.match(line) for line in err), err


def test_device_check_asks_torch_when_the_build_has_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from sae_sens import devices
    from sae_sens.errors import UsageError

    monkeypatch.setattr(devices, "_torch_build_has_cuda", lambda: True)  # as on a CUDA build of torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="torch sees no CUDA device"):
        devices.check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.check_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError, match="has 2 CUDA device"):
        devices.check_device("cuda:2")
    assert devices.check_device(None) == "auto" and devices.check_device("CPU") == "cpu"


def test_help_prose_reflows_to_the_terminal_width() -> None:
    from sae_sens.cli.commands import _reflow

    doc = """First line.

    Prose wrapped
    in the source.

    Example:

      sae-sens run --sae a
      --features 5
    """
    assert _reflow(doc) == ("First line.\n\nProse wrapped in the source.\n\nExample:\n\n"
                            "  sae-sens run --sae a\n  --features 5")
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "sae_sens", "sql", "--help"], capture_output=True, text=True,
                         env=env).stdout
    lines = [line.rstrip() for line in out.splitlines()]
    # the source breaks after "on a": reflowed, the sentence runs on to fill the 80-column line
    assert any("on a read-only snapshot of the store" in line for line in lines), out
    # prose fits 80 columns; a command line is kept whole (copyable) however long
    assert max(len(line) for line in lines if not line.lstrip().startswith(("sae-sens ", "echo "))) <= 80


def test_sae_sens_store_is_read_once_by_the_cli(tmp_path, monkeypatch, cli) -> None:  # type: ignore[no-untyped-def]
    import json

    from sae_sens.schemas import make_table
    from sae_sens.store import Store

    st = Store(tmp_path / "elsewhere")
    st.write_table("r", "py_4k_topk_s0", "feature_stats", make_table("feature_stats", [
        {"feature_index": 0, "generator": "g", "generated_sensitivity": 0.5}]))
    monkeypatch.setenv("SAE_SENS_STORE", str(st.root))
    rows = json.loads(cli.ok("runs", "--format", "json").out)  # the option's environment variable
    assert [r["sae"] for r in rows] == ["py_4k_topk_s0"]
    assert Store().root.name == "evals"  # the library takes the folder it is given, never the environment


def test_the_library_writes_no_markup() -> None:
    """Warnings and progress lines are plain data (progress.warn); only the CLI styles them."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "sae_sens"
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if "cli" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\[(?:yellow|red|bold|dim|green|cyan)[^\]]*\]|\[/\]", line)]
    assert not offenders, offenders
