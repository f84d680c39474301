"""The progress record every long-running core generator yields (no Qt, no torch)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    """One step of a long job: ``done`` of ``total`` units, a message, seconds elapsed, and
    optional numbers (e.g. training loss) in ``metrics``."""

    done: int
    total: int
    message: str = ""
    elapsed: float = 0.0
    metrics: dict | None = None

    @property
    def eta(self) -> float | None:
        """Seconds left, estimated from the rate so far."""
        if not self.done or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)


def run_to_end(gen: Generator[Progress, None, T],
               on_progress: Callable[[Progress], object] | None = None) -> T:
    """Drive a progress generator to its end and return what it returns.

    The blocking twin of every ``iter_*`` function; ``on_progress`` (optional) sees each
    yielded :class:`Progress`.

    >>> def job():
    ...     yield Progress(1, 2)
    ...     yield Progress(2, 2)
    ...     return "done"
    >>> seen = []
    >>> run_to_end(job(), lambda p: seen.append(p.done)), seen
    ('done', [1, 2])
    """
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)
