"""Every command's ``--help`` reads at 80 columns: nothing cut, commands whole (copyable), flags
without a value, brackets kept, every generator kind and every view named."""

from __future__ import annotations

import pytest

from sae_sens.cli.app import main  # noqa: F401  (the commands register on import of main's module)
from sae_sens.report.views import META_VIEWS, TABLE_VIEWS
from tests.support.cli import CliRunner

COMMANDS = ("collect", "generate", "score", "report", "run", "runs", "saes", "show", "sql", "export", "judge",
            "label", "demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns(command: str, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = cli.ok(command, "--help").out
    assert "…" not in text and "<bool>" not in text
    # placeholders say what to type (INTEGER, TEXT, PATH), never a Python annotation
    assert not any(t in text for t in ("<int", "<float", "<str>", "<list[", "<path>")), text
    assert "{" not in text.splitlines()[0]  # usage: FEATURE, not {feature}
    for line in text.splitlines():
        # prose wraps at 80; only a command line (kept whole so it can be copied) may run longer
        assert len(line) <= 80 or line.lstrip().startswith(("sae-sens ", "echo ")), line
    assert "Example" in text


def test_the_command_list_wraps_rather_than_cuts(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = cli.ok("--help").out
    commands = text.split("Commands:", 1)[1]
    assert "..." not in commands and "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "importance-weighted samples." in " ".join(text.split())  # collect's whole first sentence


def test_help_names_what_it_must(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    generate = cli.ok("generate", "--help").out
    for kind in ("openai:", "hf:", "table:", "corpus:", "baseline:", "inject:", "--negatives", "--batch"):
        assert kind in generate, kind
    report = " ".join(cli.ok("report", "--help").out.split())
    for view in TABLE_VIEWS + META_VIEWS:
        assert f" {view}" in report, view
    assert "'sae-sens[ray]'" in " ".join(cli.ok("collect", "--help").out.split())  # brackets survive
    run = cli.ok("run", "--help").out
    assert ("    sae-sens run --model pythia-160m-deduped --sae-names py_4k_btopk_s0 py_4k_gated_s0 --features 50 "
            "--output-path evals/mine") in run  # one line: copyable as it is


def test_habits_and_typos_get_the_right_option(cli: CliRunner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("report", "--json")
    assert code == 2 and "use --format json" in err and "Possible options" not in err
    code, _, err = cli("saes", "--csv")
    assert code == 2 and "use --format csv" in err


def test_saes_filter_words_are_whole_parts_and_piped_output_is_tsv(cli: CliRunner) -> None:
    out = cli.ok("saes", "--filter", "py 4k topk").out
    lines = out.strip().splitlines()
    assert lines[0].split("\t")[:2] == ["name", "model"]  # TSV off a terminal, not a box
    names = [line.split("\t")[0] for line in lines[1:]]
    assert names == [f"py_4k_topk_s{i}" for i in range(6)]  # not btopk, not matbtopk


def test_a_mistyped_grouping_key_gets_a_did_you_mean() -> None:
    from sae_sens.errors import UsageError
    from sae_sens.report.summary import _keys

    with pytest.raises(UsageError) as e:
        _keys(["widht"])
    assert "did you mean --by width?" in e.value.one_line()


def test_runs_writes_its_table_with_o(cli: CliRunner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from sae_sens.store import Store

    Store(tmp_path / "evals").manifest("r1", "py_4k_topk_s0").save()
    out = tmp_path / "runs.json"
    err = cli.ok("runs", "--store", str(tmp_path / "evals"), "-o", str(out)).err
    rows = json.loads(out.read_text())
    assert [(r["run"], r["sae"], r["collect"]) for r in rows] == [("r1", "py_4k_topk_s0", "missing")]
    assert f"wrote {out}" in " ".join(err.split())


SHARED = ("--store", "--device", "--dtype", "--model", "--hook", "--base-url", "--max-workers", "--force", "--wait",
          "--checkpoint-every", "--max-cost", "--timeout", "--max-retries", "--price-in", "--price-out", "--batch",
          "--batch-poll", "--prompt-template", "--corpus", "--total-tokens", "--context-size", "--alive-rule",
          "--dead-min-firings", "--from-saebench", "--saebench-file", "--executor", "--address", "--gpus-per-task")
# options whose default is each command's own, on purpose (a judge decodes short and greedily)
OWN_DEFAULTS = {"--batch-size", "--max-tokens", "--temperature", "--seed", "--features"}


def test_every_shared_option_has_one_default_and_one_help() -> None:
    import typer.main

    import sae_sens.cli.commands  # noqa: F401  (registers them)
    from sae_sens.cli.base import app

    seen: dict[str, list[tuple[str, object, str]]] = {}
    for name, cmd in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        for p in cmd.params:
            if p.opts and p.opts[0].startswith("--"):
                seen.setdefault(p.opts[0], []).append((name, p.default, p.help or ""))
    for option in SHARED:
        uses = seen.get(option, [])
        assert uses, option
        assert len({repr(d) for _, d, _ in uses}) == 1 and len({h for _, _, h in uses}) == 1, (option, uses)
    for option, uses in seen.items():  # the same help means the same option: the same default too
        if option not in OWN_DEFAULTS and len({h for _, _, h in uses}) == 1:
            assert len({repr(d) for _, d, _ in uses}) == 1, (option, uses)
    assert len(seen["--store"]) >= 12  # every command that reads or writes a store
