"""The search for the limit of one dimension: the highest value whose probe passes.

Two searches share it: the knee of paced load (a rate, msgprof.experiment.knee) and the capacity
of a server (a client count, msgprof.experiment.capacity). The first probe is lo (if it fails,
no value passes). Then either hi (if it passes, the limit lies above the range), or, without a
hi, lo grown by `growth` each time until a probe fails (or `limit`, the most that can be tried,
passes). Once a passing and a failing value bracket the limit, the geometric mean of the highest
passing and the lowest failing one, rounded by `rounding` (3 significant figures for a rate, a
whole step for a count), until the probes run out or the two are less than the stop ratio (or
`min_gap`) apart. The mean is geometric because the stop rule is a ratio and values span
decades. Pure: the probe is a callable, so the search is tested without running a point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

#: The search stops once the lowest failing value is less than this many times the highest
#: passing one.
STOP_RATIO = 1.05


def three_figures(rate: float) -> float:
    """A rate rounded to 3 significant figures, so its name and record read well."""
    return float(f"{rate:.3g}")


def whole_steps(step: int) -> Callable[[float], float]:
    """Rounding to the nearest multiple of `step` (at least one step): for a count."""
    return lambda value: float(max(step, step * round(value / step)))


@dataclass
class Bisection:
    """The state of a search: every value tried with its outcome, and what comes next.

    Every value after the first passes and the first failure lies between the highest passing
    and the lowest failing value, so the highest passing value is also the highest that passed
    at all, even when noise makes the outcomes not monotone in the value."""

    lo: float
    #: The top of the range; None: grow from lo by `growth` until a probe fails.
    hi: float | None
    max_probes: int
    stop_ratio: float = STOP_RATIO
    rounding: Callable[[float], float] = three_figures
    #: Also stop once the lowest failing value is at most this above the highest passing one.
    min_gap: float = 0.0
    growth: float = 2.0
    #: Without a hi: the most that may be tried (growing stops there).
    limit: float | None = None
    #: (value, passed) in the order tried.
    tried: list[tuple[float, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hi is not None and not 0 < self.lo < self.hi:
            raise ValueError(f"need 0 < lo < hi, got lo {self.lo:g}, hi {self.hi:g}")
        if self.hi is None and not 0 < self.lo:
            raise ValueError(f"need 0 < lo, got {self.lo:g}")
        if self.hi is None and self.growth <= 1:
            raise ValueError(f"need growth > 1, got {self.growth:g}")
        if self.max_probes < 2:
            raise ValueError(f"need at least 2 probes, got {self.max_probes}")

    @property
    def passing(self) -> float | None:
        """The highest value that passed."""
        return max((value for value, ok in self.tried if ok), default=None)

    @property
    def failing(self) -> float | None:
        """The lowest value that failed."""
        return min((value for value, ok in self.tried if not ok), default=None)

    def next_value(self) -> float | None:
        """The value to probe next, or None when the search is over."""
        if not self.tried:
            return self.lo
        if len(self.tried) >= self.max_probes or self.passing is None:
            return None  # out of probes, or even lo failed
        if self.failing is None:
            if self.hi is not None:
                return self.hi if len(self.tried) == 1 else None  # else hi passed
            return self._grown(self.passing)
        low, high = self.passing, self.failing
        if high / low < self.stop_ratio or high - low <= self.min_gap:
            return None
        middle = self.rounding(math.sqrt(low * high))
        return middle if low < middle < high else None

    def _grown(self, passed: float) -> float | None:
        """The next value while growing: `growth` times the last pass, at most `limit`."""
        grown = self.rounding(passed * self.growth)
        if self.limit is not None:
            grown = min(grown, self.limit)
        return grown if grown > passed else None

    @property
    def status(self) -> str:
        """searching, lo_fails (no value passed), above_hi (hi, or the limit, passed),
        no_failure (grown until the probes ran out, all passed) or found (bracketed)."""
        if self.next_value() is not None:
            return "searching"
        if self.passing is None:
            return "lo_fails"
        if self.failing is None:
            grown_out = self.hi is None and (self.limit is None or self.passing < self.limit)
            return "no_failure" if grown_out else "above_hi"
        return "found"

    def run(
        self,
        probe: Callable[[float], bool],
        after_each: Callable[[Bisection], None] | None = None,
    ) -> Bisection:
        """Probe (probe(value) says whether it passed) until the search is over; `after_each`
        sees the state after every probe."""
        while (value := self.next_value()) is not None:
            self.tried.append((value, probe(value)))
            if after_each is not None:
                after_each(self)
        return self
