"""The prompts of one Codex rollout file: the first, and how many were typed.

Codex writes a typed prompt twice, as a `response_item` user message and as an
`event_msg/user_message` (older versions only one of the two, newer ones also inject
instruction blocks both ways). Each distinct text is counted by kind; a prompt counts the
larger of its two counts, so a prompt written both ways counts once and one written one way
counts too. The counts are kept by a short hash in spill maps (bounded memory), and merged
in key order.
"""

from __future__ import annotations

import hashlib
import marshal

from jobvault.sources import spill

Order = tuple[str, int, int]
_COUNT: spill.Codec[int] = spill.Codec(marshal.dumps, marshal.loads)


def prompt_key(text: str) -> str:
    """A prompt's identity for counting it once (the same text as an event and an item)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _counts() -> spill.SpillMap[int]:
    return spill.SpillMap(_COUNT, spill.no_order, spill.always)


class PromptTally:
    """One file's prompts, fed in file order (the user's text only: see prompts.codex_typed)."""

    def __init__(self) -> None:
        self.first_event: tuple[Order, str] | None = None
        self.first_item: tuple[Order, str] | None = None
        self.events = _counts()
        self.items = _counts()

    def maps(self) -> list[spill.SpillMap[int]]:
        return [self.events, self.items]

    def event(self, order: Order, text: str) -> None:
        _tally(self.events, text)
        if self.first_event is None:
            self.first_event = (order, text)

    def item(self, order: Order, text: str) -> None:
        _tally(self.items, text)
        if self.first_item is None:
            self.first_item = (order, text)

    def count(self) -> int:
        """Prompts typed: each distinct text counts the larger of its event and item counts."""
        total = 0
        events, items = self.events.sorted_items(), self.items.sorted_items()
        a, b = next(events, None), next(items, None)
        while a is not None or b is not None:  # a merge of the two key-ordered maps
            if b is None or (a is not None and a[0] < b[0]):
                assert a is not None
                total += a[1]
                a = next(events, None)
            elif a is None or b[0] < a[0]:
                total += b[1]
                b = next(items, None)
            else:
                total += max(a[1], b[1])
                a, b = next(events, None), next(items, None)
        return total


def _tally(counts: spill.SpillMap[int], text: str) -> None:
    key = prompt_key(text)
    counts.put(key, (counts.get(key) or 0) + 1)
