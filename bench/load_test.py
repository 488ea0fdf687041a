"""HTTP load test of the sslic service against the bare in-process engine.

    python bench/load_test.py [--model-dir models/default] [--kodak ../shared/data/kodak]
        [--concurrency 1,4,16] [--requests 48] [--kodak-requests 24] [--max-seconds 30] [--levels 2]
        [--sets kodak,thumbs] [--ops compress,decompress] [--modes off,on] [--batch-size 8] [--batch-delay-ms 5]
        [--threads 0] [--limit N] [--out docs/results/load.json] [--markdown docs/benchmarks_table.md]

What it does, in order:

1. Loads the images: the Kodak PNG files as they are on disk (768×512 and 512×768) and 256×256 "thumbnails",
   centre crops of the same photos saved as PNG in memory.
2. Bare engine, no HTTP: ``Codec`` in this process (same ``--threads``), sequentially on the same images:
   compress = ``Codec.compress(png_bytes, levels=[L])``, decompress = ``Codec.decompress(container, L)`` plus
   PNG encoding (what the endpoint returns), after one untimed warm-up; images/s and megapixels/s. The
   single-level containers made here are the bodies of the HTTP decompress runs.
3. For each batching mode (``off``: max_batch=1, no queue delay; ``on``: ``--batch-size``, ``--batch-delay-ms``)
   it starts the real service in a subprocess, ``python -m service.cli serve --host 127.0.0.1 --port <free>``
   with ``SSLIC_*`` variables, waits for ``/readyz``, runs every image set × operation × concurrency, and
   stops it with SIGTERM. Loopback only; the server's stdout and stderr go to a log file under /tmp.
4. One run = N asyncio workers (``httpx.AsyncClient``) taking request numbers from a shared counter until
   the run's request budget (``--requests``; ``--kodak-requests`` for Kodak) is used up or ``--max-seconds``
   have passed (requests in flight then finish). Request i sends image ``i mod len(images)``. Each (set,
   operation) gets one untimed warm-up request per image shape first. Every request's latency and status are
   recorded; any non-200 (429 queue full, 503 timeout, …) or transport error counts as an error.
   Throughput = successful requests / wall time of the run (first send to last answer); megapixels/s counts
   the pixels of successful requests; p50/p90/p99 are over successful requests (linear interpolation).
   The mean model batch size during the run comes from the server's ``/metrics``.
5. HTTP overhead = HTTP throughput at concurrency 1 with batching off / bare throughput (1.0 = no overhead;
   the client shares the machine's cores with the server, so the ratio includes the client's cost too).

Prints tables, writes everything (machine, versions, model id, settings per mode, all numbers, raw latencies)
as JSON to ``--out`` and, with ``--markdown``, tables ready to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/load_test.py` from anywhere
    sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"  # never anything else
THUMB_SIZE = 256
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 300.0


# -- statistics (pure; tested in tests/test_load_test.py) ---------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def throughput(count: int, megapixels: float, elapsed_s: float) -> tuple[float, float]:
    """(requests/s, megapixels/s) of ``count`` requests covering ``megapixels`` in ``elapsed_s`` seconds."""
    if elapsed_s <= 0:
        return (0.0, 0.0)
    return count / elapsed_s, megapixels / elapsed_s


def summarize(
    latencies_s: Sequence[float], statuses: Sequence[int | str], megapixels: Sequence[float], elapsed_s: float
) -> dict:
    """Numbers of one run from per-request latency (s), status (200 = success) and megapixels."""
    if not len(latencies_s) == len(statuses) == len(megapixels):
        raise ValueError("latencies, statuses and megapixels must have one entry per request")
    ok = [i for i, status in enumerate(statuses) if status == 200]
    ok_latencies = [latencies_s[i] for i in ok]
    rps, mps = throughput(len(ok), sum(megapixels[i] for i in ok), elapsed_s)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 3)

    return {
        "requests": len(statuses),
        "ok": len(ok),
        "errors": len(statuses) - len(ok),
        "status_counts": {str(k): v for k, v in sorted(Counter(str(s) for s in statuses).items())},
        "elapsed_s": round(elapsed_s, 4),
        "requests_per_s": round(rps, 4),
        "megapixels_per_s": round(mps, 4),
        "latency_ms": {
            "mean": ms(sum(ok_latencies) / len(ok_latencies)) if ok_latencies else None,
            "p50": ms(percentile(ok_latencies, 50)),
            "p90": ms(percentile(ok_latencies, 90)),
            "p99": ms(percentile(ok_latencies, 99)),
            "max": ms(max(ok_latencies)) if ok_latencies else None,
        },
    }


def overhead_ratio(http_rps: float | None, bare_ips: float | None) -> float | None:
    """HTTP throughput / bare engine throughput (1.0: HTTP costs nothing; lower: it costs that much)."""
    if not http_rps or not bare_ips:
        return None
    return http_rps / bare_ips


# -- images -----------------------------------------------------------------------------------------------
@dataclass
class Item:
    name: str
    png: bytes  # the compress body
    width: int
    height: int
    containers: dict[int, bytes] = field(default_factory=dict)  # level → single-level container

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def load_sets(kodak: Path, wanted: Sequence[str], limit: int | None = None) -> dict[str, list[Item]]:
    """The image sets named in ``wanted`` ("kodak", "thumbs") from the first ``limit`` PNGs of ``kodak``."""
    from PIL import Image

    if not kodak.is_dir():
        raise SystemExit(f"image folder not found: {kodak}")
    paths = sorted(p for p in kodak.iterdir() if p.suffix.lower() == ".png")[:limit]
    if not paths:
        raise SystemExit(f"no PNG images in {kodak}")
    sets: dict[str, list[Item]] = {name: [] for name in wanted}
    for path in paths:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if "kodak" in sets:
                sets["kodak"].append(Item(path.stem, data, image.width, image.height))
            if "thumbs" in sets:
                left = (image.width - THUMB_SIZE) // 2
                top = (image.height - THUMB_SIZE) // 2
                crop = image.crop((left, top, left + THUMB_SIZE, top + THUMB_SIZE))
                buffer = io.BytesIO()
                crop.save(buffer, format="PNG")
                sets["thumbs"].append(Item(path.stem, buffer.getvalue(), THUMB_SIZE, THUMB_SIZE))
    return sets


def shapes(items: Sequence[Item]) -> list[Item]:
    """One item per distinct (width, height): the warm-up set (the batcher and ONNX see each shape once)."""
    seen: dict[tuple[int, int], Item] = {}
    for item in items:
        seen.setdefault((item.width, item.height), item)
    return list(seen.values())


# -- bare engine ------------------------------------------------------------------------------------------
def bare_engine(
    model_dir: Path, threads: int, sets: dict[str, list[Item]], levels: Sequence[int], budget: dict[str, int],
    max_seconds: float,
) -> tuple[dict, dict]:
    """Sequential in-process compress / decompress; fills ``item.containers``; returns (results, model info)."""
    from service.codec import Codec
    from service.imageio import encode_image

    codec = Codec.from_dir(model_dir, threads=threads)
    info = {
        "model_id": codec.model_id,
        "name": str(codec.model.manifest.get("name", "")),
        "levels": codec.levels,
        "providers": list(codec.model.providers),
    }
    for level in levels:
        if not 1 <= level <= codec.levels:
            raise SystemExit(f"level {level} is outside 1..{codec.levels}")
    results: dict = {}
    for set_name, items in sets.items():
        for level in levels:
            for item in items:  # the decompress bodies (not timed)
                item.containers[level] = codec.compress(item.png, levels=[level])
            operations = {
                "compress": lambda item, lv=level: codec.compress(item.png, levels=[lv]),
                "decompress": lambda item, lv=level: encode_image(codec.decompress(item.containers[lv], lv), "png"),
            }
            for op, run in operations.items():
                for item in shapes(items):
                    run(item)  # warm-up
                samples, pixels = [], 0.0
                start = time.perf_counter()
                for i in range(budget[set_name]):
                    if time.perf_counter() - start > max_seconds:
                        break
                    item = items[i % len(items)]
                    t0 = time.perf_counter()
                    run(item)
                    samples.append(time.perf_counter() - t0)
                    pixels += item.megapixels
                elapsed = time.perf_counter() - start
                ips, mps = throughput(len(samples), pixels, elapsed)
                results[f"{set_name}/{op}/L{level}"] = {
                    "set": set_name,
                    "op": op,
                    "level": level,
                    "images": len(samples),
                    "elapsed_s": round(elapsed, 4),
                    "images_per_s": round(ips, 4),
                    "megapixels_per_s": round(mps, 4),
                    "latency_ms": {
                        "mean": round(1000 * sum(samples) / len(samples), 3) if samples else None,
                        "p50": round(1000 * percentile(samples, 50), 3) if samples else None,
                    },
                    "mean_bytes": round(sum(len(i.containers[level]) for i in items) / len(items), 1),
                }
                print(
                    f"  bare {set_name:6s} {op:10s} L{level}: {len(samples):3d} images in {elapsed:6.2f} s = "
                    f"{ips:7.2f} img/s, {mps:6.2f} MP/s",
                    flush=True,
                )
    return results, info  # the codec goes with this frame, before any server starts


# -- the server subprocess --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """``python -m service.cli serve`` on 127.0.0.1 with the given SSLIC_* settings."""

    def __init__(self, env: dict[str, str], label: str):
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        handle, path = tempfile.mkstemp(prefix=f"sslic_load_{label}_", suffix=".log", dir="/tmp")
        os.close(handle)
        self.log_path = Path(path)
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    def start(self) -> float:
        import httpx

        command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        start = time.perf_counter()
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False) as client:
            while time.perf_counter() - start < READY_TIMEOUT_S:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}; log: {self.log_path}\n"
                                       + self.log_tail())
                try:
                    if client.get("/readyz").status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready after {READY_TIMEOUT_S:g} s; log: {self.log_path}")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            self.returncode = None if self.process is None else self.process.returncode
            return self.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.process.kill()
            self.returncode = self.process.wait()
        return self.returncode

    @property
    def clean_exit(self) -> bool:
        """Stopped by our SIGTERM after a graceful shutdown (uvicorn re-raises the signal: exit code −15)."""
        return not self.killed and self.returncode in (0, -signal.SIGTERM)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def batch_sizes(base_url: str) -> dict[str, tuple[float, float]]:
    """{graph: (sum, count)} of the server's sslic_batch_size histogram."""
    import httpx

    out: dict[str, list[float]] = {}
    try:
        text = httpx.get(base_url + "/metrics", timeout=10.0, trust_env=False).text
    except httpx.HTTPError:
        return {}
    for line in text.splitlines():
        for suffix, index in (("_sum", 0), ("_count", 1)):
            prefix = f"sslic_batch_size{suffix}{{"
            if line.startswith(prefix):
                labels, _, value = line[len(prefix):].partition("} ")
                graph = labels.split('graph="', 1)[-1].split('"', 1)[0]
                out.setdefault(graph, [0.0, 0.0])[index] = float(value)
    return {graph: (s, c) for graph, (s, c) in out.items()}


def mean_batch(before: dict, after: dict, graph: str) -> float | None:
    s0, c0 = before.get(graph, (0.0, 0.0))
    s1, c1 = after.get(graph, (0.0, 0.0))
    return round((s1 - s0) / (c1 - c0), 3) if c1 > c0 else None


# -- one load run -----------------------------------------------------------------------------------------
def request_for(item: Item, op: str, level: int) -> tuple[str, bytes, dict[str, str]]:
    if op == "compress":
        return f"/compress?level={level}", item.png, {"Content-Type": "image/png"}
    return f"/decompress?level={level}", item.containers[level], {"Content-Type": "application/octet-stream"}


async def load_run(
    base_url: str, items: Sequence[Item], op: str, level: int, concurrency: int, requests: int, max_seconds: float
) -> dict:
    """``concurrency`` workers share a request counter; stops at ``requests`` sent or ``max_seconds``."""
    import httpx

    latencies: list[float] = []
    statuses: list[int | str] = []
    pixels: list[float] = []
    next_index = 0
    first_error: str | None = None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT_S, limits=limits, trust_env=False
    ) as client:
        start = time.perf_counter()
        deadline = start + max_seconds
        last_done = start

        async def worker() -> None:
            nonlocal next_index, last_done, first_error
            while next_index < requests and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                item = items[index % len(items)]
                path, body, headers = request_for(item, op, level)
                t0 = time.perf_counter()
                try:
                    response = await client.post(path, content=body, headers=headers)
                    status: int | str = response.status_code
                    if status != 200 and first_error is None:
                        first_error = f"{status}: {response.text[:200]}"
                except httpx.HTTPError as error:
                    status = f"exc:{type(error).__name__}"
                    if first_error is None:
                        first_error = f"{status}: {error}"
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                statuses.append(status)
                pixels.append(item.megapixels)
                last_done = max(last_done, t1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = summarize(latencies, statuses, pixels, last_done - start)
    result["stopped_by"] = "requests" if len(statuses) >= requests else "time"
    result["first_error"] = first_error
    result["latencies_ms"] = [round(x * 1000.0, 2) for x in latencies]
    result["statuses"] = [str(s) for s in statuses]
    return result


async def warm_up(base_url: str, items: Sequence[Item], op: str, level: int) -> list[str]:
    """One untimed request per image shape; returns the problems (non-200 answers)."""
    import httpx

    problems = []
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S, trust_env=False) as client:
        for item in shapes(items):
            path, body, headers = request_for(item, op, level)
            response = await client.post(path, content=body, headers=headers)
            if response.status_code != 200:
                problems.append(f"{op} {item.width}×{item.height}: {response.status_code} {response.text[:200]}")
            elif op == "decompress" and not response.content.startswith(b"\x89PNG"):
                problems.append(f"{op} {item.width}×{item.height}: the answer is not a PNG")
    return problems


# -- report -----------------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = ["batching", "set", "op", "level", "conc", "n", "ok", "err", "req/s", "MP/s", "p50 ms", "p90 ms",
          "p99 ms", "batch"]


def table_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for run in runs:
        lat = run["latency_ms"]
        batch = run.get("mean_batch", {})
        mean_b = batch.get("encoder" if run["op"] == "compress" else "decoder")
        rows.append([
            run["mode"], run["set"], run["op"], str(run["level"]), str(run["concurrency"]), str(run["requests"]),
            str(run["ok"]), str(run["errors"]), fmt(run["requests_per_s"], 2), fmt(run["megapixels_per_s"], 2),
            fmt(lat["p50"]), fmt(lat["p90"]), fmt(lat["p99"]), fmt(mean_b, 2),
        ])
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int) -> str:
    align = "|" + "|".join("---:" if i >= text_columns else "---" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", align]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bare_rows(bare: dict) -> list[list[str]]:
    return [
        [b["set"], b["op"], str(b["level"]), str(b["images"]), fmt(b["images_per_s"], 2),
         fmt(b["megapixels_per_s"], 2), fmt(b["latency_ms"]["mean"])]
        for b in bare.values()
    ]


BARE_HEADER = ["set", "op", "level", "n", "img/s", "MP/s", "mean ms"]
OVERHEAD_HEADER = ["set", "op", "level", "bare img/s", "HTTP req/s (c=1, off)", "ratio", "extra ms/request"]


def overhead_rows(overhead: list[dict]) -> list[list[str]]:
    return [
        [o["set"], o["op"], str(o["level"]), fmt(o["bare_images_per_s"], 2), fmt(o["http_requests_per_s"], 2),
         fmt(o["ratio"], 3), fmt(o["extra_ms_per_request"])]
        for o in overhead
    ]


def machine_info() -> dict:
    import fastapi
    import httpx
    import numpy
    import onnxruntime
    import uvicorn

    from service import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "httpx": httpx.__version__,
            "sslic": __version__,
        },
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def csv_words(text: str, allowed: Sequence[str]) -> list[str]:
    words = [part.strip() for part in text.split(",") if part.strip()]
    bad = [w for w in words if w not in allowed]
    if bad or not words:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
    return words


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N Kodak files (smoke runs)")
    parser.add_argument("--concurrency", type=csv_ints, default=[1, 4, 16], help="comma list (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=48, help="requests per run on thumbnails (default 48)")
    parser.add_argument("--kodak-requests", type=int, default=24, help="requests per run on Kodak (default 24)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="wall-time bound of one run (default 30)")
    parser.add_argument("--levels", type=csv_ints, default=[2], help="level(s) to compress/decode (default 2)")
    parser.add_argument("--sets", type=lambda t: csv_words(t, ("kodak", "thumbs")), default=["kodak", "thumbs"])
    parser.add_argument("--ops", type=lambda t: csv_words(t, ("compress", "decompress")),
                        default=["compress", "decompress"])
    parser.add_argument("--modes", type=lambda t: csv_words(t, ("off", "on")), default=["off", "on"],
                        help="batching off (max_batch=1, no delay) and/or on")
    parser.add_argument("--batch-size", type=int, default=8, help="SSLIC_MAX_BATCH with batching on (default 8)")
    parser.add_argument("--batch-delay-ms", type=float, default=5.0,
                        help="SSLIC_MAX_QUEUE_DELAY_MS with batching on (default 5)")
    parser.add_argument("--queue-size", type=int, default=64, help="SSLIC_QUEUE_SIZE (default 64: no 429 by design)")
    parser.add_argument("--request-timeout-s", type=float, default=120.0,
                        help="SSLIC_REQUEST_TIMEOUT_S (default 120: no 503 by design on a slow machine)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads, server and bare (0: one per core)")
    parser.add_argument("--server-log-level", default="warning",
                        help="SSLIC_LOG_LEVEL (default warning: no access log)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "load.json")
    parser.add_argument("--markdown", type=Path, default=None, help="also write markdown tables here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.kodak_requests < 1 or args.max_seconds <= 0 or not args.concurrency:
        parser.error("--requests, --kodak-requests, --max-seconds and --concurrency must be positive")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency values must be ≥ 1")
    if any(c > args.queue_size for c in args.concurrency):
        print(f"warning: concurrency above --queue-size {args.queue_size} can get 429s", file=sys.stderr)
    return args


def mode_settings(args: argparse.Namespace, mode: str) -> dict[str, str]:
    batch, delay = (1, 0.0) if mode == "off" else (args.batch_size, args.batch_delay_ms)
    return {
        "SSLIC_MODEL_DIR": str(args.model_dir.resolve()),
        "SSLIC_MAX_BATCH": str(batch),
        "SSLIC_MAX_QUEUE_DELAY_MS": f"{delay:g}",
        "SSLIC_QUEUE_SIZE": str(args.queue_size),
        "SSLIC_REQUEST_TIMEOUT_S": f"{args.request_timeout_s:g}",
        "SSLIC_THREADS": str(args.threads),
        "SSLIC_LOG_LEVEL": args.server_log_level,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    machine = machine_info()
    sets = load_sets(args.kodak, args.sets, args.limit)
    budget = {"kodak": args.kodak_requests, "thumbs": args.requests}
    print("images: " + ", ".join(f"{name} {len(items)}" for name, items in sets.items())
          + f"; {machine['cpus_usable']} CPUs, load average {machine['load_average_start']}", flush=True)

    print("bare engine (in-process Codec, sequential):", flush=True)
    bare, model = bare_engine(args.model_dir, args.threads, sets, args.levels, budget, args.max_seconds)

    runs: list[dict] = []
    modes: dict[str, dict] = {}
    failed = False
    for mode in args.modes:
        env = mode_settings(args, mode)
        server = Server(env, mode)
        modes[mode] = {"settings": env, "log": str(server.log_path)}
        print(f"batching {mode}: {' '.join(f'{k}={v}' for k, v in env.items() if k != 'SSLIC_MODEL_DIR')}"
              f" (port {server.port}, log {server.log_path})", flush=True)
        try:
            modes[mode]["ready_s"] = round(server.start(), 2)
            for set_name, items in sets.items():
                for level in args.levels:
                    for op in args.ops:
                        problems = asyncio.run(warm_up(server.base_url, items, op, level))
                        if problems:
                            print("  warm-up failed: " + "; ".join(problems), flush=True)
                            modes[mode].setdefault("warm_up_problems", []).extend(problems)
                        for concurrency in args.concurrency:
                            before = batch_sizes(server.base_url)
                            result = asyncio.run(load_run(
                                server.base_url, items, op, level, concurrency, budget[set_name], args.max_seconds
                            ))
                            after = batch_sizes(server.base_url)
                            result["mean_batch"] = {g: mean_batch(before, after, g) for g in ("encoder", "decoder")}
                            result = {"mode": mode, "set": set_name, "op": op, "level": level,
                                      "concurrency": concurrency, **result}
                            runs.append(result)
                            lat = result["latency_ms"]
                            print(
                                f"  {set_name:6s} {op:10s} L{level} c={concurrency:<3d} {result['ok']:3d}/"
                                f"{result['requests']:<3d} ok in {result['elapsed_s']:6.2f} s: "
                                f"{result['requests_per_s']:7.2f} req/s {result['megapixels_per_s']:6.2f} MP/s  "
                                f"p50 {fmt(lat['p50'])} p90 {fmt(lat['p90'])} p99 {fmt(lat['p99'])} ms"
                                + (f"  ERRORS {result['status_counts']} {result['first_error']}"
                                   if result["errors"] else ""),
                                flush=True,
                            )
        except (RuntimeError, OSError) as error:
            failed = True
            print(f"  batching {mode} failed: {error}", file=sys.stderr, flush=True)
            modes[mode]["failure"] = str(error)
        finally:
            modes[mode]["exit_code"] = server.stop()
            modes[mode]["clean_exit"] = server.clean_exit
            if not server.clean_exit:
                print(f"  server exited with {modes[mode]['exit_code']}; log {server.log_path}:\n"
                      + server.log_tail(), file=sys.stderr)

    overhead = []
    for key, b in bare.items():
        match = [r for r in runs if r["mode"] == "off" and r["concurrency"] == 1
                 and (r["set"], r["op"], r["level"]) == (b["set"], b["op"], b["level"])]
        if not match:
            continue
        http = match[0]
        ratio = overhead_ratio(http["requests_per_s"], b["images_per_s"])
        extra = None
        if http["latency_ms"]["mean"] is not None and b["latency_ms"]["mean"] is not None:
            extra = round(http["latency_ms"]["mean"] - b["latency_ms"]["mean"], 3)
        overhead.append({
            "set": b["set"], "op": b["op"], "level": b["level"], "bare_images_per_s": b["images_per_s"],
            "http_requests_per_s": http["requests_per_s"], "ratio": None if ratio is None else round(ratio, 4),
            "extra_ms_per_request": extra,
        })

    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "model": model,
        "parameters": {
            "concurrency": args.concurrency, "requests": args.requests, "kodak_requests": args.kodak_requests,
            "max_seconds": args.max_seconds, "levels": args.levels, "sets": args.sets, "ops": args.ops,
            "threads": args.threads, "limit": args.limit, "images": {name: len(items) for name, items in sets.items()},
            "thumb_size": THUMB_SIZE, "client": "httpx.AsyncClient, one process, loopback",
        },
        "modes": modes,
        "bare": bare,
        "http": runs,
        "overhead": overhead,
    }

    print()
    print(text_table(HEADER, table_rows(runs)))
    if bare:
        print("\nbare engine (no HTTP, sequential):")
        print(text_table(BARE_HEADER, bare_rows(bare)))
    if overhead:
        print("\nHTTP overhead (HTTP c=1 batching off / bare):")
        print(text_table(OVERHEAD_HEADER, overhead_rows(overhead)))
    errors = sum(r["errors"] for r in runs)
    print(f"\n{len(runs)} runs, {sum(r['requests'] for r in runs)} requests, {errors} errors; "
          f"{report['duration_s']:.0f} s in all; load average {machine['load_average_end']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.markdown is not None:
        settings_line = "; ".join(
            f"batching {m}: max_batch={s['settings']['SSLIC_MAX_BATCH']}, "
            f"max_queue_delay_ms={s['settings']['SSLIC_MAX_QUEUE_DELAY_MS']}"
            for m, s in modes.items()
        )
        text = [
            f"Model `{model['model_id']}` ({model['name']}), {machine['cpus_usable']} CPUs, {machine['platform']}, "
            f"onnxruntime {machine['versions']['onnxruntime']}, threads={args.threads or 'all'}, "
            f"queue_size={args.queue_size}; {settings_line}. Client: httpx.AsyncClient on the same machine "
            f"(loopback). Latencies over successful requests; `batch` = mean model batch size during the run.",
            "",
            markdown_table(HEADER, table_rows(runs), 3),
        ]
        if bare:
            text += ["", "Bare engine (in-process `Codec`, sequential, no HTTP):", "",
                     markdown_table(BARE_HEADER, bare_rows(bare), 2)]
        if overhead:
            text += ["", "HTTP overhead (HTTP throughput at concurrency 1, batching off / bare throughput):", "",
                     markdown_table(OVERHEAD_HEADER, overhead_rows(overhead), 2)]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(text) + "\n")
        print(f"wrote {args.markdown}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
