"""Bisection on a rate between lo and hi, where a probe at a rate passes or fails.

The first probe is lo (if it fails, no rate passes), the second hi (if it passes, the limit lies
above the range); then the geometric mean of the highest passing and the lowest failing rate,
rounded to 3 significant figures, until the probes run out or the two are less than the stop
ratio apart. The mean is geometric because the stop rule is a ratio and rates span decades.
Pure: the probe is a callable, so the search is tested without running a point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

#: The search stops once the lowest failing rate is less than this many times the highest
#: passing one.
STOP_RATIO = 1.05


def three_figures(rate: float) -> float:
    """A rate rounded to 3 significant figures, so its name and record read well."""
    return float(f"{rate:.3g}")


@dataclass
class Bisection:
    """The state of a search: every rate tried with its outcome, and what comes next.

    Every rate after lo and hi lies between the highest passing and the lowest failing rate, so
    the highest passing rate is also the highest that passed at all, even when noise makes the
    outcomes not monotone in the rate."""

    lo: float
    hi: float
    max_probes: int
    stop_ratio: float = STOP_RATIO
    #: (rate, passed) in the order tried.
    tried: list[tuple[float, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi:
            raise ValueError(f"need 0 < lo < hi, got lo {self.lo:g}, hi {self.hi:g}")
        if self.max_probes < 2:
            raise ValueError(f"need at least 2 probes (lo and hi), got {self.max_probes}")

    @property
    def passing(self) -> float | None:
        """The highest rate that passed."""
        return max((rate for rate, ok in self.tried if ok), default=None)

    @property
    def failing(self) -> float | None:
        """The lowest rate that failed."""
        return min((rate for rate, ok in self.tried if not ok), default=None)

    def next_rate(self) -> float | None:
        """The rate to probe next, or None when the search is over."""
        if not self.tried:
            return self.lo
        if len(self.tried) >= self.max_probes or self.passing is None:
            return None  # out of probes, or even lo failed
        if self.failing is None:
            return self.hi if len(self.tried) == 1 else None  # else hi passed
        low, high = self.passing, self.failing
        if high / low < self.stop_ratio:
            return None
        middle = three_figures(math.sqrt(low * high))
        return middle if low < middle < high else None

    @property
    def status(self) -> str:
        """searching, lo_fails (no rate passed), above_hi (hi passed) or found (bracketed)."""
        if self.next_rate() is not None:
            return "searching"
        if self.passing is None:
            return "lo_fails"
        if self.failing is None:
            return "above_hi"
        return "found"

    def run(
        self,
        probe: Callable[[float], bool],
        after_each: Callable[[Bisection], None] | None = None,
    ) -> Bisection:
        """Probe (probe(rate) says whether it passed) until the search is over; `after_each`
        sees the state after every probe."""
        while (rate := self.next_rate()) is not None:
            self.tried.append((rate, probe(rate)))
            if after_each is not None:
                after_each(self)
        return self
