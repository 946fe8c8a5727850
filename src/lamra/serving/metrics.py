"""Prometheus metrics of one server (``GET /metrics``), through ``prometheus-client``.

Each app has its own registry (no process-wide globals, so tests can run apps side by side).
Routes are labelled by their template (``/items/{item_id}``), never by the raw path, so an id
in a URL cannot grow the label set; unmatched paths share the label ``unmatched``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .middleware import ObserveResponses

# Model calls take milliseconds (tiny models, GPUs) to a minute (a request timeout).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's counters, histograms and gauges, in one registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lamra_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("lamra_request_duration_seconds", "Time from a request's arrival to the end of "
                                 "its response, by route.", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("lamra_batch_size", "Items encoded together in one model call.",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("lamra_queue_depth", "Items waiting for the model.", registry=registry)
        self.items_encoded = Counter("lamra_items_encoded", "Items the retriever encoded.", registry=registry)
        self.candidates_reranked = Counter("lamra_candidates_reranked", "Candidates the reranker scored.",
                                           ["mode"], registry=registry)
        self.model_load = Gauge("lamra_model_load_seconds", "Seconds taken to load the models at start.",
                                registry=registry)
        self.model = Info("lamra_model", "The served models and their fingerprints.", registry=registry)

    def describe_models(self, retriever: dict, reranker: dict | None, *, fingerprint: str,
                        reranker_fingerprint: str | None) -> None:
        labels = {"model": str(retriever.get("model")), "adapter": str(retriever.get("adapter")),
                  "dim": str(retriever.get("dim")), "prompt_format": str(retriever.get("prompt_format")),
                  "fingerprint": fingerprint}
        if reranker is not None:
            labels.update(reranker=str(reranker.get("model")), reranker_adapter=str(reranker.get("adapter")),
                          reranker_fingerprint=str(reranker_fingerprint))
        self.model.info(labels)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RecordRequests(ObserveResponses):
    """ASGI middleware: count and time every request (refusals by inner middleware included)."""

    def __init__(self, app, metrics: Metrics):
        super().__init__(app)
        self.metrics = metrics

    def observe(self, scope, status: int, seconds: float) -> None:
        label = route_label(scope)
        self.metrics.requests.labels(label, scope.get("method", "?"), str(status)).inc()
        self.metrics.latency.labels(label).observe(seconds)


def route_label(scope) -> str:
    """The template of the route a request went to (or would have: a 401 is refused before routing)."""
    route = scope.get("route")
    if route is None and scope.get("app") is not None:
        from starlette.routing import Match

        route = next((r for r in scope["app"].router.routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"
