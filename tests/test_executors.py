"""Executors without a cluster: planning groups from SAE specs, and `--executor ray` without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_sens.errors import UsageError
from sae_sens.executors import get_executor, plan_groups
from sae_sens.stages import ModelOptions

ROOT = Path(__file__).parents[1]


def test_groups_follow_model_and_hook_and_split_on_request() -> None:
    names = ["py_4k_topk_s0", "gem_4k_topk_s0", "py_4k_relu_s1", "py_16k_gated_s2", "gem_16k_relu_s0"]
    groups = plan_groups(names, ModelOptions())
    assert [g.saes for g in groups] == [("py_4k_topk_s0", "py_4k_relu_s1", "py_16k_gated_s2"),
                                        ("gem_4k_topk_s0", "gem_16k_relu_s0")]
    assert groups[0].key[:2] == ("EleutherAI/pythia-160m-deduped", "blocks.8.hook_resid_post")
    split = plan_groups(names, ModelOptions(), max_saes=2)
    assert [len(g.saes) for g in split] == [2, 1, 2]
    assert sorted(s for g in split for s in g.saes) == sorted(names)
    # --hook overrides every SAE's own: one model, one hook -> the SAEs of each model still apart
    assert len(plan_groups(names, ModelOptions(hook="blocks.3.hook_resid_post"))) == 2


def test_local_executor_refuses_ray_options() -> None:
    with pytest.raises(UsageError, match="--executor ray"):
        get_executor("local", address="auto")
    with pytest.raises(UsageError) as e:
        get_executor("dask")
    assert "one of: local, ray" in e.value.one_line()


@pytest.mark.slow  # a fresh interpreter that cannot import ray
def test_executor_ray_without_ray_says_how_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from sae_sens.cli import main\n"
            f"main(['run', '--sae', 'py_4k_topk_s0', '--store', {str(tmp_path / 'evals')!r}, '--executor', 'ray'])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'sae-sens[ray]'" in lines[0], proc.stderr
    assert not (tmp_path / "evals").exists()  # refused before anything was written
