"""An adapter's own Prometheus metrics, on the worker's registry (served with the engine's at ``/metrics`` and
fetched by the pool):

    from python_worker.sdk import metrics

    FITS = metrics.counter("fits", "Models fitted", ["kind"])   # exported as myadapter_fits_total{kind}

    @tool
    def fit(self, kind: str) -> dict: FITS.labels(kind).inc(); ...

Declare each metric once, at import time or in the adapter's ``__init__``: a name declared twice is refused by
``prometheus-client`` (``ValueError: Duplicated timeseries``). Names starting with ``krait_`` are Krait's.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from ..metrics import REGISTRY


def _check(name: str) -> None:
    if name.startswith("krait_"):
        raise ValueError(f"metric name {name!r}: names starting with krait_ are reserved for Krait's own metrics")


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter (exported with the ``_total`` suffix)."""
    _check(name)
    return Counter(name, documentation, list(labels), registry=REGISTRY)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge (a value that goes up and down; ``set_function`` reads it at scrape time)."""
    _check(name)
    return Gauge(name, documentation, list(labels), registry=REGISTRY)


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None
) -> Histogram:
    """A histogram (``buckets``: upper bounds; prometheus-client's defaults when not given)."""
    _check(name)
    if buckets is None:
        return Histogram(name, documentation, list(labels), registry=REGISTRY)
    return Histogram(name, documentation, list(labels), buckets=list(buckets), registry=REGISTRY)


__all__ = ["counter", "gauge", "histogram"]
