"""The journal's metrics: each batch's size and flush time, and what it wrote so far.

The journal tells of every batch it wrote (``FileJournal.on_batch``): two
histogram observations a batch, on the event loop, off the path of any call.
Its running totals and whether it is failing are read when scraped.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tm_server.journal import FileJournal

from .registry import Metrics


class JournalMetrics:
    """Observes a journal: hooks its batches, and collects its totals when scraped."""

    def __init__(self, metrics: Metrics, journal: FileJournal) -> None:
        self._commit = metrics.journal_commit.labels().observe
        self._batch = metrics.journal_batch.labels().observe
        journal.on_batch = self.batch_written
        metrics.registry.register(JournalCollector(journal))

    def batch_written(self, records: int, seconds: float) -> None:
        """A batch of ``records`` records was written and flushed in ``seconds``."""
        self._commit(seconds)
        self._batch(records)


class JournalCollector:
    """What the journal wrote, and whether it is failing now (its histograms: the registry's)."""

    def __init__(self, journal: FileJournal) -> None:
        self._journal = journal

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        written = CounterMetricFamily(
            "tm_journal_written_bytes", "Bytes the journal wrote to its log"
        )
        compactions = CounterMetricFamily(
            "tm_journal_compactions", "Journal compactions into a snapshot"
        )
        failing = GaugeMetricFamily(
            "tm_journal_failing", "1 while the journal cannot write (a full disk): durable "
            "calls are refused with UNAVAILABLE until it can",
        )  # fmt: skip
        return written, compactions, failing

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """The journal's counts now."""
        written, compactions, failing = self._families()
        stats = self._journal.stats
        written.add_metric([], stats.bytes_written)
        compactions.add_metric([], stats.compactions)
        failing.add_metric([], 0 if self._journal.failure is None else 1)
        return written, compactions, failing


__all__ = ["JournalCollector", "JournalMetrics"]
