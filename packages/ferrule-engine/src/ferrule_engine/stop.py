"""Finding stop strings in text that grows a few characters at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class StopMatch(NamedTuple):
    """A stop string ``stop`` found at ``text[start:end]``."""

    start: int
    end: int
    stop: str


def find_stop(text: str, stops: Sequence[str], new_chars: int) -> StopMatch | None:
    """The stop string that completes first among the last ``new_chars`` characters of ``text``.

    Only occurrences that end in the new characters are considered (earlier text was searched
    before), so a stop string spanning several updates is found once it is complete. "First"
    means the earliest end, so the result does not depend on how the text was split into
    updates; among matches ending at the same character the longest wins.

    >>> find_stop("say abcd", ["bc", "abcd"], new_chars=4)
    StopMatch(start=5, end=7, stop='bc')
    """
    best: StopMatch | None = None
    first_end = len(text) - new_chars + 1  # an occurrence must end at or after this
    for stop in stops:
        start = text.find(stop, max(0, first_end - len(stop)))
        if start < 0:
            continue
        match = StopMatch(start, start + len(stop), stop)
        if best is None or (match.end, match.start) < (best.end, best.start):
            best = match
    return best
