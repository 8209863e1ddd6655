"""Importing this module registers every command on the app (one module per command)."""

from . import (  # noqa: F401
    collect_cmd,
    demo_cmd,
    export_cmd,
    generate_cmd,
    judge_cmd,
    label_cmd,
    report_cmd,
    run_cmd,
    runs_cmd,
    saes_cmd,
    score_cmd,
    show_cmd,
    sql_cmd,
)
