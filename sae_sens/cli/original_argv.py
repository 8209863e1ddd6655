"""The original tool's command line, read by ``sae-sens run`` (and ``collect``): argv in, argv out.

Its ``src/run.py`` takes argparse spellings that Typer cannot parse as they are: ``--sae-names A B C``
(one flag, values up to the next option), ``--use-saebench-examples``, and ``--model`` as a short
name (``pythia-160m-deduped``). ``translate`` rewrites those into sae-sens options before Typer
sees the line, and says in one note per spelling what the sae-sens one is, so a script keeps
working and its author learns the new spelling. Spellings both tools share (``--features``,
``--total-tokens``, ``--context-size``, ``--max-workers``, ``--n-top-ex-for-generation``,
``--n-iw-ex-for-generation``, ``--output-path``, ``--verbose``) pass unchanged.
"""

from __future__ import annotations

from ..names import SAEBENCH_MODELS

COMMANDS = ("run", "collect")  # the commands that take the original's SAE and example options
MODELS = {m.short: m.model_id for m in SAEBENCH_MODELS.values()}  # its --model choices -> hub ids
# spellings sae-sens accepts as aliases but documents under another name
ALIASES = {"--dataset-name": "--corpus", "--llm-model": "--generator openai:<model>"}


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _split(arg: str) -> tuple[str, str | None]:
    name, eq, value = arg.partition("=")
    return (name, value) if eq else (arg, None)


def translate(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` with the original's spellings rewritten, and one note per spelling used."""
    command = _command(argv)
    if command not in COMMANDS or "--" in argv:
        return argv, []
    out: list[str] = []
    notes: dict[str, str] = {}
    i = 0
    while i < len(argv):
        name, inline = _split(argv[i])
        if name == "--sae-names":
            values = [inline] if inline is not None else []
            i += 1
            while inline is None and i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            for v in values:
                out += ["--sae", v]
            notes[name] = ("--sae-names is the original tool's spelling; sae-sens repeats --sae "
                           f"({' '.join('--sae ' + v for v in values) or '--sae NAME'})")
            continue
        if name == "--use-saebench-examples":
            out.append("--from-saebench")
            notes[name] = "--use-saebench-examples is the original tool's spelling of --from-saebench"
        elif name == "--model":
            value = inline if inline is not None else (argv[i + 1] if i + 1 < len(argv) else None)
            if value in MODELS:
                out += ["--model", MODELS[value]]
                notes[name] = (f"--model {value} is the original tool's name; sae-sens takes the hub id "
                               f"(--model {MODELS[value]}) and infers it from the SAE when left out")
                i += 1 if inline is not None else 2
                continue
            out.append(argv[i])
        else:
            if name in ALIASES and name not in notes:
                notes[name] = f"{name} is the original tool's spelling of {ALIASES[name]}"
            out.append(argv[i])
        i += 1
    return out, list(notes.values())
