"""Prometheus metrics of one app instance (own registry, low-cardinality labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

__all__ = ["Metrics"]

disable_created_metrics()  # no *_created series: they double the output and say nothing useful here

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BPP_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
STAGES = ("decode_input", "encoder", "refinement", "range_coding", "decoder", "encode_output")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sslic_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "sslic_request_duration_seconds", "Request latency", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "sslic_stage_duration_seconds",
            "Seconds per processing stage (for batched stages: per batch)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "sslic_batch_size", "Requests per model batch", ["graph"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r
        )
        self.queue_depth = Gauge("sslic_queue_depth", "Requests waiting for the model", registry=r)
        self.bytes_in = Counter("sslic_bytes_in", "Request body bytes", ["endpoint"], registry=r)
        self.bytes_out = Counter("sslic_bytes_out", "Response body bytes", ["endpoint"], registry=r)
        self.bpp = Histogram("sslic_bpp", "Bits per pixel of compressed images", ["level"], buckets=_BPP_BUCKETS, registry=r)
        self.model_info = Info("sslic_model", "The loaded model", registry=r)
        self.rejected = Counter("sslic_rejected", "Requests refused before the model ran", ["reason"], registry=r)
        for stage in STAGES:
            self.stage.labels(stage)
