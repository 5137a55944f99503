"""Fair scheduling between authors: round-robin over authors, FIFO within one author.

Pure bookkeeping, no I/O, so the fairness rules are easy to test on their own.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


@dataclass
class FairQueue(Generic[T]):
    global_limit: int
    per_author_limit: int
    _queues: "OrderedDict[str, deque[tuple[Hashable, T]]]" = field(default_factory=OrderedDict)
    _running: dict[str, int] = field(default_factory=dict)
    _keys: set[Hashable] = field(default_factory=set)

    def push(self, author: str, key: Hashable, item: T) -> bool:
        """Add once per key; returns False for a key already waiting or running."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._queues.setdefault(author, deque()).append((key, item))
        return True

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def pop_ready(self) -> list[tuple[str, Hashable, T]]:
        """Everything that may start now, one author at a time in rotation."""
        started: list[tuple[str, Hashable, T]] = []
        progress = True
        while progress and self.running < self.global_limit:
            progress = False
            for author in list(self._queues):
                if self.running >= self.global_limit:
                    break
                queue = self._queues[author]
                if self._running.get(author, 0) >= self.per_author_limit:
                    continue
                key, item = queue.popleft()
                self._running[author] = self._running.get(author, 0) + 1
                started.append((author, key, item))
                progress = True
                del self._queues[author]
                if queue:
                    self._queues[author] = queue  # to the back of the rotation
        return started

    def done(self, author: str, key: Hashable) -> None:
        self._keys.discard(key)
        count = self._running.get(author, 0) - 1
        if count > 0:
            self._running[author] = count
        else:
            self._running.pop(author, None)
