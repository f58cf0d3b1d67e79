"""Backend health as a small state machine with HAProxy-style rise/fall hysteresis (sans-IO).

Active probes and passive signals (a refused connect, a completed session) are both fed to
record(); the I/O shell decides what counts as a success and acts on the returned flips.
"""

from __future__ import annotations

__all__ = ["HealthState"]


class HealthState:
    """Up/down state that only flips after a streak: `fall` consecutive failures take an up
    backend down, `rise` consecutive successes bring a down backend back. The streaks keep one
    flapping probe from bouncing a backend in and out of rotation."""

    __slots__ = (
        "_failures",
        "_fall",
        "_rise",
        "_successes",
        "_up",
        "checks_total",
        "failures_total",
    )

    def __init__(self, rise: int, fall: int, up: bool = True) -> None:
        if rise < 1:
            raise ValueError(f"rise must be at least 1, not {rise}")
        if fall < 1:
            raise ValueError(f"fall must be at least 1, not {fall}")
        self._rise = rise
        self._fall = fall
        self._up = up
        self._successes = 0
        self._failures = 0
        self.checks_total = 0
        self.failures_total = 0

    @property
    def up(self) -> bool:
        return self._up

    @property
    def rise(self) -> int:
        return self._rise

    @property
    def fall(self) -> int:
        return self._fall

    @property
    def consecutive_successes(self) -> int:
        return self._successes

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def record(self, ok: bool) -> bool | None:
        """Feed one result; return the new state if it flipped, else None."""
        self.checks_total += 1
        if ok:
            self._successes += 1
            self._failures = 0
            if not self._up and self._successes >= self._rise:
                self._up = True
                return True
        else:
            self.failures_total += 1
            self._failures += 1
            self._successes = 0
            if self._up and self._failures >= self._fall:
                self._up = False
                return False
        return None

    def __repr__(self) -> str:
        state = "up" if self._up else "down"
        return (
            f"HealthState({state}, rise={self._rise}, fall={self._fall}, "
            f"successes={self._successes}, failures={self._failures})"
        )
