"""Prometheus metrics of an inspector and its station: images, decisions, input errors,
inspection latency and its stages, messages delivered and failed per sink, outbox backlog. ``GET /metrics``
renders them in the text format; each app has its own registry, so two apps in one process
(the tests) never share counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: seconds, from decoded image to committed record: a CPU inspection is 10 ms – a few s
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: seconds, one stage of one image: decoding a small PNG is ~1 ms, a model 5 ms – seconds
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
#: the stages of an inspection, in order (see :class:`~costfilter.serve.inspection.Inspector`)
STAGES = ("decode", "model", "draw", "encode", "store")


class _Backlog(Collector):
    """The outbox backlog per sink, read from the database at scrape time (so it survives restarts)."""

    def __init__(self, backlog: Callable[[], dict[str, int]], sinks: Callable[[], list[str]]):
        self.backlog, self.sinks = backlog, sinks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("costfilter_outbox_backlog", "Messages committed but not yet acknowledged by the sink",
                              labels=["sink"])
        try:
            counts = self.backlog()
        except Exception:  # noqa: BLE001 - a scrape must answer even when the database does not
            counts = {}
        for sink in sorted(set(self.sinks()) | set(counts)):
            g.add_metric([sink], counts.get(sink, 0))
        yield g


class Metrics:
    """The counters one app (and its station) update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.images = Counter("costfilter_images", "Images inspected and stored", ["source"], registry=r)
        self.decisions = Counter("costfilter_decisions", "Decisions by kind", ["decision"], registry=r)
        self.input_errors = Counter("costfilter_input_errors", "Inputs that could not be inspected", ["source"],
                                    registry=r)
        self.latency = Histogram("costfilter_inspection_seconds", "Decoded image to committed record",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("costfilter_inspection_stage_seconds",
                               "One stage of one image's inspection (decode, model, draw, encode, store)",
                               ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.delivered = Counter("costfilter_messages_delivered", "Messages a sink acknowledged", ["sink"], registry=r)
        self.sink_failures = Counter("costfilter_sink_failures", "Failed delivery attempts", ["sink"], registry=r)

    def watch_backlog(self, backlog: Callable[[], dict[str, int]], sinks: Callable[[], list[str]]) -> None:
        """Export the outbox backlog (read at each scrape)."""
        self.registry.register(_Backlog(backlog, sinks))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
