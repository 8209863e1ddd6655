"""The judge stage: is a low sensitivity the feature's, or did the generator misread the pattern?

    from sae_sens.judge import JudgeConfig, run_judge
    run_judge(Store("evals"), "default", "py_4k_topk_s0", JudgeConfig(judge="openai:gpt-4.1-mini"))

An LLM (any generate backend) runs a blind pairwise test (generated text vs a held-out real example)
and a direct check (does the text show the pattern?) on every generated text; rows go to
``judgments``, the manifest records ``judge:<judge>``. See ``core.py`` and ``heldout.py``.
"""

from .config import TASKS, JudgeConfig
from .core import JudgeItem, JudgeResult, build_items, judge, plan_judge, run_judge
from .heldout import held_out_candidates, held_out_examples

__all__ = [
    "TASKS",
    "JudgeConfig",
    "JudgeItem",
    "JudgeResult",
    "build_items",
    "held_out_candidates",
    "held_out_examples",
    "judge",
    "plan_judge",
    "run_judge",
]
