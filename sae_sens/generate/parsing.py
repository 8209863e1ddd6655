"""Split a generator's response into samples, whatever format it actually used.

The prompt asks for samples separated by a separator line. Models that ignore it usually number
their samples or leave blank lines between them; those are recognised too. The method used is
recorded per query (``parse_method``) so weak generators are visible in SQL.
"""

from __future__ import annotations

import re

# numbering: "1. ", "2) ", "(3) ", "[4] ", "Sample 5: ", "**Example 6:**"
_NUMBER_RE = re.compile(
    r"^\s*(?:\*\*)?(?:(?:sample|example|text)\s*#?\s*(\d{1,3})\s*[:.)\-]?|[(\[]?(\d{1,3})[.):\]])(?:\*\*)?:?\s+",
    re.IGNORECASE,
)
_BULLET_RE = re.compile(r"^\s*[-*\u2022]\s+")
_MARK_RE = re.compile(r"\{\{|\}\}")
_BLANK_RE = re.compile(r"\n\s*\n")
_QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"))


def _number(line: str) -> int | None:
    m = _NUMBER_RE.match(line)
    return int(m.group(1) or m.group(2)) if m else None


def _strip_marker(s: str) -> str:
    return _BULLET_RE.sub("", _NUMBER_RE.sub("", s, count=1), count=1)


def _clean(sample: str, strip_marker: bool) -> str:
    s = sample.strip()
    if strip_marker:
        s = _strip_marker(s)
    s = _MARK_RE.sub("", s).strip()  # copied activation marks would change the tokens scored
    for left, right in _QUOTE_PAIRS:  # a sample wrapped whole in quotes, with none inside
        inner = s[1:-1]
        if len(s) >= 2 and s[0] == left and s[-1] == right and left not in inner and right not in inner:
            s = inner.strip()
    return s


def _list_items(lines: list[str]) -> list[str] | None:
    """Group lines into items at each numbered or bulleted line; None if fewer than two items.
    Text before the first item is a preamble ("Here are 11 samples:"), not a sample."""
    starts = [i for i, line in enumerate(lines) if _NUMBER_RE.match(line) or _BULLET_RE.match(line)]
    if len(starts) < 2:
        return None
    bounds = starts + [len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def _is_numbered(parts: list[str]) -> bool:
    """True when the parts carry the numbering 1, 2, 3... (the model numbered its samples anyway);
    a lone leading "- " or "3." may be the very pattern the feature responds to, so it stays."""
    nums = [_number(p) for p in parts]
    first = nums[0] if nums else None
    return len(nums) >= 2 and first is not None and nums == list(range(first, first + len(nums)))


def parse_samples(response: str | None, separator: str) -> tuple[list[str], str]:
    """Samples in ``response`` and how they were found: separator | numbered | blank_lines | single | empty."""
    text = (response or "").strip()
    if not text:
        return [], "empty"
    if separator.lower() in text.lower():
        parts = [p for p in re.split(re.escape(separator), text, flags=re.IGNORECASE) if p.strip()]
        method, strip = "separator", _is_numbered(parts)
    elif (items := _list_items(text.splitlines())) is not None:
        parts, method, strip = items, "numbered", True
    elif len(blocks := [b for b in _BLANK_RE.split(text) if b.strip()]) >= 2:
        parts, method = blocks, "blank_lines"
        strip = _is_numbered(parts)
    else:
        parts, method, strip = [text], "single", False
    samples = [s for s in (_clean(p, strip) for p in parts) if s]
    return samples, (method if samples else "empty")
