"""Counters, gauges and histograms kept as plain numbers on the server's event loop.

prometheus_client's own metric objects are thread-safe: every increment
takes a lock, and a histogram observation walks its buckets in Python (some
3 µs an RPC for a count and a latency). tm's metrics are all changed on the
event loop, and read there too (the endpoint renders scrapes on the loop), so
they need no lock: a child here is a number incremented in place, and a
histogram's bucket is found by ``bisect``. They are rendered as
prometheus_client metric families when scraped, so the exposition is the
official library's.

Label values are bound once (``labels`` returns the child to keep), so a
hot path costs an attribute increment. Nothing here is thread-safe: change
and collect them from the loop only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString


class Value:
    """One counter's or gauge's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount``."""
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Takes ``amount`` off (gauges only)."""
        self.value -= amount

    def set(self, value: float) -> None:
        """Sets the value (gauges only)."""
        self.value = value


class Observations:
    """One histogram's buckets (not cumulative: each observation counts in one) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Counts ``value`` in the first bucket whose bound is at least it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """A family of children by label values, registered with a registry as a collector."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labels)
        self._children: dict[tuple[str, ...], object] = {}
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """The family, without samples."""
        return [self._family()]

    def _family(self) -> Metric:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        """The family with its children's values."""
        raise NotImplementedError

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")


class Counter(_Family):
    """A counter family (exposed as ``NAME_total``)."""

    def labels(self, *values: str) -> Value:
        """The child of these label values (made at first use)."""
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = Value()
        assert isinstance(child, Value)
        return child

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        """The family with every child's value."""
        family = self._family()
        for values, child in self._children.items():
            assert isinstance(child, Value)
            family.add_metric(values, child.value)
        return [family]


class Gauge(Counter):
    """A gauge family."""

    def _family(self) -> GaugeMetricFamily:  # type: ignore[override]
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


def _bound_name(bound: float) -> str:
    name: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return name


class Histogram(_Family):
    """A histogram family with fixed bucket bounds."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labels, registry)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._names = [_bound_name(b) for b in self.bounds] + ["+Inf"]
        if not self.labelnames:
            self.labels()  # an unlabelled histogram shows its zeros at once

    def labels(self, *values: str) -> Observations:
        """The child of these label values (made at first use)."""
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = Observations(self.bounds)
        assert isinstance(child, Observations)
        return child

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        """The family with every child's cumulative buckets, sum and count."""
        family = self._family()
        for values, child in self._children.items():
            assert isinstance(child, Observations)
            running = 0
            buckets: list[tuple[str, float]] = []
            for name, count in zip(self._names, child.counts, strict=True):
                running += count
                buckets.append((name, running))
            family.add_metric(values, buckets, child.sum)
        return [family]


__all__ = ["Counter", "Gauge", "Histogram", "Observations", "Value"]
