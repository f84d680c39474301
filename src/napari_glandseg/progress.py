"""The progress record every long-running core generator yields (no Qt, no torch)."""

from __future__ import annotations

from dataclasses import dataclass


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
