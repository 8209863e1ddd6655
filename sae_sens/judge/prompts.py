"""The judge's two prompts and the parsing of its answers.

Placeholders use ``$name`` (``string.Template``) so the ``{{ }}`` marks in the examples need no
escaping. Texts under judgement are shown without marks: a generated text and a real example must
look alike except for what the judge is asked to tell apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from string import Template

from ..hashing import hash_text

PAIR_SYSTEM = (
    "You help evaluate features of a language model. A feature fires on the tokens marked {{like this}} in "
    "the examples you are shown. You then see two texts, A and B. One is another real example of text on "
    "which the feature fires, taken from the same corpus as the examples. The other was written by a "
    "language model asked to imitate the examples. Decide which text is the real example. Answer with a "
    "single letter: A or B."
)
PAIR_USER = (
    "Examples of the feature (activating tokens marked {{like this}}):\n$examples\n\n"
    "Text A:\n$text_a\n\nText B:\n$text_b\n\n"
    "Which text is the real example, A or B? Answer with one letter."
)
DIRECT_SYSTEM = (
    "You help evaluate features of a language model. A feature fires on the tokens marked {{like this}} in "
    "the examples you are shown. You then see a new text. Decide whether the new text shows the same "
    "pattern as the examples (the kind of tokens that are marked, used in a similar way). Answer 'yes' or "
    "'no' on the first line, then give a one-line reason."
)
DIRECT_USER = (
    "Examples of the feature (activating tokens marked {{like this}}):\n$examples\n\n"
    "New text:\n$text\n\n"
    "Does the new text show the pattern of the examples? Answer yes or no, then a one-line reason."
)
PROMPTS_HASH = hash_text("\0".join((PAIR_SYSTEM, PAIR_USER, DIRECT_SYSTEM, DIRECT_USER)))

_MARKS = re.compile(r"\{\{|\}\}")
# a bare letter ("B", "B.", "(A)", "Answer: b"), not the article in "A real example is ..."
_LETTER = re.compile(r"^\W*(?:text\s+|answer\s*:?\s*)?\(?([AB])(?=\W*$|[.):,;]|\s*\n)", re.IGNORECASE)
_LETTER_ANYWHERE = re.compile(r"\b(?:text|answer(?: is)?)\s*:?\s*\(?([AB])\b", re.IGNORECASE)
# ... or a letter closing the first line: "The text is the real example, A."
_LETTER_END = re.compile(r"(?:^|[\s,:(])([AB])[.)!]*\s*$")
_YES_NO = re.compile(r"^\W*(yes|no)\b\W*(.*)$", re.IGNORECASE | re.DOTALL)


def unmarked(text: str) -> str:
    return _MARKS.sub("", text)


def format_examples(examples: Sequence[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(examples, 1))


def pair_prompt(examples: Sequence[str], text_a: str, text_b: str) -> tuple[str, str]:
    user = Template(PAIR_USER).safe_substitute(examples=format_examples(examples), text_a=text_a, text_b=text_b)
    return PAIR_SYSTEM, user


def direct_prompt(examples: Sequence[str], text: str) -> tuple[str, str]:
    return DIRECT_SYSTEM, Template(DIRECT_USER).safe_substitute(examples=format_examples(examples), text=text)


def parse_pair(response: str) -> str | None:
    """``A`` or ``B`` from an answer like "B", "Text A.", "Answer: b"; None when it names neither."""
    text = (response or "").strip()
    first = text.splitlines()[0] if text else ""
    m = _LETTER.match(text) or _LETTER_ANYWHERE.search(text) or _LETTER_END.search(first)
    return m.group(1).upper() if m else None


def parse_direct(response: str) -> tuple[bool | None, str | None]:
    """(yes -> True / no -> False / neither -> None, the one-line reason)."""
    m = _YES_NO.match((response or "").strip())
    if not m:
        return None, None
    rest = [line.strip(" -:.\t") for line in m.group(2).splitlines()]
    reason = next((line for line in rest if line), None)
    return m.group(1).lower() == "yes", reason
