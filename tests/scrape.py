"""Scrapes a tm server's metrics endpoint over real HTTP and reads the samples back."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """One scrape's samples, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample named ``name`` with exactly these labels, if there is one."""
        for sample in self.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
        return None

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include these."""
        return sum(
            float(s.value)
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str) -> list[dict[str, str]]:
        """The label sets of the samples named ``name``."""
        return [dict(s.labels) for s in self.samples if s.name == name]


def fetch(port: int, path: str = "/metrics", headers: dict[str, str] | None = None,
          method: str = "GET") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One HTTP request to 127.0.0.1:PORT: status, headers (lower-case names) and body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def scrape(port: int) -> Scrape:
    """``GET /metrics``, parsed."""
    status, headers, body = fetch(port)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(body.decode())


def scrape_until(port: int, ok: Callable[[Scrape], bool], timeout: float = 10.0,
                 what: str = "") -> Scrape:  # fmt: skip
    """Scrapes until ``ok`` holds; fails after ``timeout`` seconds with the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        found = scrape(port)
        if ok(found):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or 'the metrics'}:\n{found.text}")
        time.sleep(0.05)


def metrics_port(log: str) -> int:
    """The metrics port a ``tm-server`` log names ("metrics on http://HOST:PORT/metrics")."""
    match = re.search(r"metrics on http://\S+:(\d+)/metrics", log)
    assert match is not None, log
    return int(match.group(1))
