"""The statistics of bench/load_test.py on known numbers (no server, no model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("sslic_bench_load_test", REPO / "bench" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_percentile_interpolates_linearly(load_test):
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert load_test.percentile(values, 0) == 1.0
    assert load_test.percentile(values, 100) == 4.0
    assert load_test.percentile(values, 50) == pytest.approx(2.5)
    one_to_ten = [float(v) for v in range(1, 11)]
    assert load_test.percentile(one_to_ten, 90) == pytest.approx(9.1)
    one_to_hundred = [float(v) for v in range(1, 101)]
    assert load_test.percentile(one_to_hundred, 50) == pytest.approx(50.5)
    assert load_test.percentile(one_to_hundred, 99) == pytest.approx(99.01)
    assert load_test.percentile([7.0], 99) == 7.0
    assert load_test.percentile([], 50) is None
    with pytest.raises(ValueError):
        load_test.percentile(values, 101)


def test_throughput(load_test):
    assert load_test.throughput(10, 3.932160, 2.0) == pytest.approx((5.0, 1.96608))
    assert load_test.throughput(3, 1.0, 0.0) == (0.0, 0.0)


def test_summarize_counts_errors_and_uses_successes_only(load_test):
    latencies = [0.1, 0.2, 0.3, 0.4, 5.0]
    statuses = [200, 200, 200, 200, 429]
    megapixels = [0.393216] * 5
    summary = load_test.summarize(latencies, statuses, megapixels, elapsed_s=2.0)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (5, 4, 1)
    assert summary["status_counts"] == {"200": 4, "429": 1}
    assert summary["requests_per_s"] == pytest.approx(2.0)
    assert summary["megapixels_per_s"] == pytest.approx(4 * 0.393216 / 2.0, abs=1e-4)
    latency = summary["latency_ms"]
    assert latency["p50"] == pytest.approx(250.0)
    assert latency["p90"] == pytest.approx(370.0)
    assert latency["p99"] == pytest.approx(397.0)
    assert latency["mean"] == pytest.approx(250.0)
    assert latency["max"] == pytest.approx(400.0)  # the 5 s error is not in the latency numbers


def test_summarize_all_failed_and_mismatched_lengths(load_test):
    summary = load_test.summarize([1.0, 2.0], [503, "exc:ConnectError"], [0.1, 0.1], elapsed_s=3.0)
    assert (summary["ok"], summary["errors"], summary["requests_per_s"]) == (0, 2, 0.0)
    assert summary["latency_ms"]["p50"] is None
    with pytest.raises(ValueError):
        load_test.summarize([1.0], [200, 200], [0.1], elapsed_s=1.0)


def test_overhead_ratio_and_batch_mean(load_test):
    assert load_test.overhead_ratio(4.0, 5.0) == pytest.approx(0.8)
    assert load_test.overhead_ratio(None, 5.0) is None
    assert load_test.overhead_ratio(4.0, 0.0) is None
    before = {"encoder": (10.0, 5.0)}
    after = {"encoder": (34.0, 8.0), "decoder": (6.0, 2.0)}
    assert load_test.mean_batch(before, after, "encoder") == pytest.approx(8.0)
    assert load_test.mean_batch(before, after, "decoder") == pytest.approx(3.0)
    assert load_test.mean_batch(before, before, "encoder") is None
