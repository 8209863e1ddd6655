"""The demo application: ``make demo`` / ``python -m sae_sens.demo`` runs every stage over every
demo SAE, offline, through the CLI, then the report. The assets it uses live in ``sae_sens.assets``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .assets import DEMO_MODEL, DEMO_SAES_DIR, demo_sae_names


def _cli(args: list[str]) -> None:
    from .cli import main as cli_main

    print("$ sae-sens " + " ".join(args), flush=True)
    try:
        cli_main(args)
    except SystemExit as e:  # the CLI exits only on errors (or an explicit exit 0)
        if e.code not in (0, None):
            raise


def main(argv: list[str] | None = None) -> None:
    """``make demo``: every stage over every demo SAE, offline (an LLM generator, the corpus control and
    an LLM judge), then the report (tables, plots, HTML)."""
    parser = argparse.ArgumentParser(prog="python -m sae_sens.demo", description=main.__doc__)
    parser.add_argument("--store", default="evals", help="artifact store folder")
    parser.add_argument("--run", default="demo", help="run name inside the store")
    # Budget sized for under 10 minutes on a 2-core CPU; generation with the 135M model dominates.
    parser.add_argument("--tokens", type=int, default=20_000, help="corpus tokens read by collect")
    parser.add_argument("--features", type=int, default=4, help="features per SAE")
    parser.add_argument("--samples", type=int, default=10, help="generated texts per feature")
    parser.add_argument("--max-tokens", type=int, default=384,
                        help="generation cap per answer: 11 short samples fit; the 135M model rambles past it")
    parser.add_argument("--judge-texts", type=int, default=1,
                        help="generated texts per feature the judge checks (0 skips the judge)")
    parser.add_argument("--negatives", type=int, default=5,
                        help="near misses per feature the LLM writes for the first SAE (0 skips them)")
    parser.add_argument("--sae", action="append", help="only these demo SAEs (repeatable)")
    args = parser.parse_args(argv)
    saes = args.sae or demo_sae_names()
    if not saes:
        raise SystemExit(f"no demo SAEs in {DEMO_SAES_DIR}: run `make demo-saes`")
    print(f"demo budget: {args.tokens:,} corpus tokens, {args.features} features x {args.samples} generated "
          f"texts per SAE, SAEs: {', '.join(saes)}", flush=True)
    started = time.time()
    out = Path(args.store) / args.run
    base = ["--store", args.store, "--run", args.run]
    sae_args = [a for s in saes for a in ("--sae", s)]
    generator = f"hf:{DEMO_MODEL}"
    _cli(["run", *base, *sae_args,
          "--corpus", "demo:wiki-heldout", "--total-tokens", str(args.tokens), "--context-size", "128",
          "--features", str(args.features), "--generator", generator,
          "--samples-per-feature", str(args.samples), "--max-tokens", str(args.max_tokens)])
    # The generator-free control: real passages with each feature's peak tokens, from held-out
    # documents collect did not read. Its sensitivity needs no LLM at all.
    _cli(["generate", *base, *sae_args, "--generator", "corpus:demo:wiki-heldout",
          "--samples-per-feature", str(args.samples)])
    # The precision side, from the same held-out documents: the base rate (random passages, shared by
    # every feature) and the token-shortcut control (one activating token put into unrelated passages),
    # then a few near misses from the same LLM for the first SAE (texts close to the examples without
    # the pattern).
    _cli(["generate", *base, *sae_args, "--generator", "baseline:demo:wiki-heldout", "--passages", "100"])
    _cli(["generate", *base, *sae_args, "--generator", "inject:demo:wiki-heldout",
          "--samples-per-feature", str(args.samples)])
    if args.negatives > 0:
        _cli(["generate", *base, "--sae", saes[0], "--generator", generator, "--negatives",
              "--samples-per-feature", str(args.negatives), "--max-tokens", str(args.max_tokens)])
    _cli(["score", *base, *sae_args])
    validity: list[str] = []
    if args.judge_texts > 0:
        # Is it the feature or the generator? The same small model judges its own texts: a weak judge,
        # so this shows the machinery; use a strong judge for research.
        _cli(["judge", *base, *sae_args, "--judge", generator, "--generator", generator,
              "--max-texts", str(args.judge_texts), "--max-tokens", "24"])
        validity = ["--validity"]
    _cli(["report", *base, "--thresholds", "--specificity", *validity,
          "--plot", str(out / "sensitivity.png"), "--html", str(out / "report.html")])
    print(f"demo finished in {time.time() - started:.0f} s: {out / 'report.html'}, {out / 'sensitivity.png'}")


if __name__ == "__main__":
    main()
