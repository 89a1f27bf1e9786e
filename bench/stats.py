"""Percentiles and latency summaries (no numpy: the bench needs only the project's deps)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Median, tail and extremes of a sample, in the sample's unit."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            max=max(values),
            mean=sum(values) / len(values),
        )

    def scaled(self, factor: float) -> Summary:
        return Summary(
            self.count,
            self.p50 * factor,
            self.p95 * factor,
            self.p99 * factor,
            self.max * factor,
            self.mean * factor,
        )


def ms(seconds: Sequence[float]) -> Summary:
    """A summary in milliseconds of durations in seconds."""
    return Summary.of(seconds).scaled(1000)
