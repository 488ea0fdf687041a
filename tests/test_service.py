"""The HTTP service through the real app (lifespan included) with the shipped model."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.bitstream import Container, pack, unpack
from service.codec import Codec
from service.pipeline import cpu_count
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.from_dir(REPO / "models" / "default", threads=2)


def _settings(**overrides) -> Settings:
    return Settings(model_dir=REPO / "models" / "default", **overrides)


@pytest.fixture()
def client(codec):
    with TestClient(create_app(_settings(), codec=codec)) as test_client:
        yield test_client


def _png(size=(96, 64), index: int = 1) -> bytes:
    with Image.open(KODAK / f"kodim{index:02d}.png") as image:
        crop = image.convert("RGB").crop((100, 100, 100 + size[0], 100 + size[1]))
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return buffer.getvalue()


def test_round_trip_at_every_level(client, codec):
    image = (KODAK / "kodim05.png").read_bytes()
    response = client.post("/compress?level=all", content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    assert response.headers["X-SSLIC-Levels"] == "1,2,3,4"
    assert response.headers["X-SSLIC-Model-Id"] == codec.model_id
    assert int(response.headers["X-SSLIC-Bytes"]) == len(response.content)
    assert response.content == codec.compress(image, "all")
    container = response.content
    original = np.asarray(Image.open(KODAK / "kodim05.png").convert("RGB"))
    qualities = []
    for level in range(1, 5):
        decoded = client.post(f"/decompress?level={level}", content=container)
        assert decoded.status_code == 200 and decoded.headers["content-type"] == "image/png"
        assert decoded.headers["X-SSLIC-Level"] == str(level)
        pixels = np.asarray(Image.open(io.BytesIO(decoded.content)))
        assert pixels.shape == original.shape
        qualities.append(10 * np.log10(255**2 / np.mean((pixels.astype(float) - original) ** 2)))
        single = client.post(f"/extract?level={level}", content=container)
        assert single.status_code == 200 and unpack(single.content).level_numbers == [level]
    assert all(a < b for a, b in zip(qualities, qualities[1:])), qualities


def test_multipart_and_output_formats(client):
    response = client.post("/compress?level=2", files={"file": ("crop.png", _png(), "image/png")})
    assert response.status_code == 200
    for fmt, media in (("webp", "image/webp"), ("jpeg", "image/jpeg")):
        decoded = client.post(f"/decompress?format={fmt}", files={"file": ("x.sslc", response.content)})
        assert decoded.status_code == 200 and decoded.headers["content-type"] == media
        assert Image.open(io.BytesIO(decoded.content)).size == (96, 64)


def test_alpha_is_restored_over_http(client):
    image = Image.open(io.BytesIO(_png())).convert("RGBA")
    alpha = np.tile(np.arange(96, dtype=np.uint8), (64, 1))
    image.putalpha(Image.fromarray(alpha))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    container = client.post("/compress?level=1", content=buffer.getvalue()).content
    decoded = Image.open(io.BytesIO(client.post("/decompress", content=container).content))
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(decoded)[:, :, 3], alpha)
    assert client.post("/decompress?format=jpeg", content=container).status_code == 400


def test_targets_pick_levels_measured_on_the_image(client, codec):
    image = (KODAK / "kodim03.png").read_bytes()
    sizes = {lv: len(codec.compress(image, lv)) * 8 / (768 * 512) for lv in range(1, 5)}
    budget = (sizes[2] + sizes[3]) / 2
    response = client.post(f"/compress?target_bpp={budget}", content=image)
    assert response.status_code == 200 and response.headers["X-SSLIC-Levels"] == "2"
    assert float(response.headers["X-SSLIC-BPP"]) <= budget
    too_small = client.post(f"/compress?target_bpp={sizes[1] / 2}", content=image)
    assert too_small.status_code == 422 and too_small.json()["error"] == "target_unreachable"

    response = client.post("/compress?target_psnr=10", content=image)
    assert response.status_code == 200 and response.headers["X-SSLIC-Levels"] == "1"
    assert float(response.headers["X-SSLIC-PSNR"]) >= 10
    assert client.post("/compress?target_psnr=99", content=image).status_code == 422


def test_error_statuses(client, codec):
    def check(response, status, code):
        assert response.status_code == status, response.text
        assert response.json()["error"] == code
        assert "detail" in response.json()

    image = _png()
    check(client.post("/compress?level=0", content=image), 400, "invalid_parameter")
    check(client.post("/compress?level=abc", content=image), 400, "invalid_parameter")
    check(client.post("/compress?target_bpp=x", content=image), 400, "invalid_parameter")
    check(client.post("/compress?level=1&target_bpp=0.5", content=image), 400, "invalid_parameter")
    check(client.post("/compress", content=b""), 400, "invalid_parameter")
    check(client.post("/compress", files={"other": ("a.png", image)}), 400, "invalid_parameter")
    check(client.post("/compress", content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_image_type")
    check(client.post("/compress", content=b"%PDF-1.4 not an image", headers={"Content-Type": "image/png"}), 415, "unsupported_image_type")
    check(client.post("/compress", content=image[:100], headers={"Content-Type": "image/png"}), 422, "undecodable_image")
    container = client.post("/compress?level=1,2", content=image).content
    check(client.post("/decompress?level=3", content=container), 400, "level_not_in_stream")
    check(client.post("/decompress?format=gif", content=container), 400, "invalid_parameter")
    check(client.post("/decompress", content=container[:-7]), 422, "truncated_stream")
    corrupted = bytearray(container)
    corrupted[60] ^= 0xFF
    check(client.post("/decompress", content=bytes(corrupted)), 422, "checksum_mismatch")
    check(client.post("/decompress", content=b"RIFFxxxxWEBP"), 422, "bad_magic")
    parsed = unpack(container)
    foreign = pack(Container("ab" * 16, parsed.width, parsed.height, parsed.mode, parsed.levels))
    check(client.post("/decompress", content=foreign), 409, "unknown_model")
    check(client.get("/no-such-endpoint"), 404, "not_found")
    check(client.get("/compress"), 405, "method_not_allowed")


def test_png_level_trades_response_bytes_for_time_and_never_pixels(codec, client):
    container = client.post("/compress?level=2", content=_png((192, 128))).content
    responses = {}
    for level in (0, 9):
        with TestClient(create_app(_settings(png_level=level), codec=codec)) as tuned:
            responses[level] = tuned.post("/decompress", content=container)
            assert responses[level].status_code == 200
    assert len(responses[0].content) > 2 * len(responses[9].content)
    pixels = [np.asarray(Image.open(io.BytesIO(r.content))) for r in responses.values()]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    with pytest.raises(ValueError, match="png_level"):
        _settings(png_level=10)


def test_body_and_pixel_limits(codec):
    settings = _settings(max_body_bytes=4096, max_pixels=5000)
    with TestClient(create_app(settings, codec=codec)) as client:
        big = client.post("/compress", content=(KODAK / "kodim01.png").read_bytes())
        assert big.status_code == 413 and big.json()["error"] == "body_too_large"
        chunks = (b"x" * 1024 for _ in range(10))  # no Content-Length: the limit holds while streaming
        assert client.post("/compress", content=chunks).status_code == 413
        flat = io.BytesIO()
        Image.new("RGB", (100, 60), (120, 80, 40)).save(flat, format="PNG")
        many = client.post("/compress", content=flat.getvalue())
        assert many.status_code == 422 and many.json()["error"] == "image_too_large"


def test_request_id_is_echoed_validated_or_generated(client):
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    bad = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request_id"


def test_operational_endpoints_and_metrics(client, codec):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_id"] == codec.model_id
    model = client.get("/v1/model").json()
    assert model["model_id"] == codec.model_id and len(model["levels"]) == 4
    assert model["limits"]["max_pixels"] == 50_000_000 and "CPUExecutionProvider" in model["providers"]
    assert model["entropy_coding"]["method"] == "channel-context" and model["entropy_coding"]["buckets"] == 16
    assert model["entropy_coding"]["activity"] == "learned"  # tables format 4
    assert model["entropy_coding"]["spatial_buckets"] == [0, 8, 8, 8]  # the checkerboard at levels 2-4
    assert model["entropy_coding"]["signs"] == ["learned"] * 4  # tables format 6
    assert [entry["rdoq_lambda"] for entry in model["levels"]] == [0.6, 0.15, 0.2, 0.0]  # fitted for, in the manifest
    assert model["refinement"] == {"available": True, "default_steps": 0, "max_steps": 200}
    assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
    container = client.post("/compress?level=2", content=_png()).content
    client.post("/decompress", content=container)
    client.post("/compress", content=b"junk", headers={"Content-Type": "text/plain"})
    text = client.get("/metrics").text
    for series in (
        'sslic_requests_total{endpoint="/compress",status="200"} 1.0',
        'sslic_requests_total{endpoint="/compress",status="415"} 1.0',
        'sslic_request_duration_seconds_count{endpoint="/decompress"} 1.0',
        'sslic_stage_duration_seconds_count{stage="encoder"} 1.0',
        'sslic_stage_duration_seconds_count{stage="decoder"} 1.0',
        'sslic_stage_duration_seconds_count{stage="decode_input"} 1.0',
        'sslic_stage_duration_seconds_count{stage="encode_output"} 1.0',
        'sslic_batch_size_count{graph="encoder"} 1.0',
        'sslic_bpp_count{level="2"} 1.0',
        "sslic_queue_depth 0.0",
        f'model_id="{codec.model_id}"',
    ):
        assert series in text, series
    assert 'sslic_bytes_out_total{endpoint="/compress"}' in text


async def _concurrent(app, requests):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sslic", timeout=60) as client:
            return await asyncio.gather(*(client.post(url, content=body) for url, body in requests))


def test_bytes_do_not_depend_on_the_batch(codec):
    images = [_png((128, 128), index) for index in range(1, 7)]
    alone = [codec.compress(image, "all") for image in images]
    app = create_app(_settings(max_batch=6, max_queue_delay_ms=500), codec=codec)
    responses = asyncio.run(_concurrent(app, [("/compress?level=all", image) for image in images]))
    assert [r.status_code for r in responses] == [200] * 6
    assert [r.content for r in responses] == alone
    text = generate_metrics_text(app)
    assert 'sslic_batch_size_count{graph="encoder"} 1.0' in text  # all six ran as one batch
    assert 'sslic_batch_size_sum{graph="encoder"} 6.0' in text


def generate_metrics_text(app) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app.state.metrics.registry).decode()


def test_full_queue_answers_429_at_once(codec):
    app = create_app(_settings(max_batch=8, max_queue_delay_ms=1500, queue_size=2), codec=codec)
    image = _png()
    responses = asyncio.run(_concurrent(app, [("/compress?level=1", image)] * 4))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429]
    refused = [r for r in responses if r.status_code == 429][0]
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"] == "queue_full"


def test_request_waiting_past_its_timeout_gets_503(codec):
    app = create_app(_settings(max_batch=8, max_queue_delay_ms=2000, request_timeout_s=0.2), codec=codec)
    (response,) = asyncio.run(_concurrent(app, [("/compress?level=1", _png())]))
    assert response.status_code == 503 and response.json()["error"] == "timeout"


def test_not_ready_before_the_model_is_loaded(codec):
    client = TestClient(create_app(_settings(), codec=codec))  # no context manager: no lifespan
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = client.post("/compress", content=_png())
    assert response.status_code == 503 and response.json()["error"] == "not_ready"


def test_fuzzed_requests_never_get_a_500(client):
    import random

    rng = random.Random(3)
    container = client.post("/compress?level=1", content=_png((64, 64))).content
    image = _png((64, 64))
    for _ in range(150):
        target = rng.choice([container, image])
        data = bytearray(target)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = bytes(data[: rng.randint(1, len(data))]) if rng.random() < 0.3 else bytes(data)
        endpoint = rng.choice(["/compress", "/decompress", "/extract"])
        query = rng.choice(["", "?level=1", "?level=all", "?level=-1", "?format=webp", "?target_bpp=0.1"])
        response = client.post(endpoint + query, content=cut, headers={"Content-Type": "application/octet-stream"})
        assert response.status_code < 500 or response.json()["error"] in ("timeout", "queue_full"), response.text


def test_rdoq_lambda_setting_reaches_the_encoder(codec, monkeypatch):
    body = _png((192, 128))
    sizes = {}
    for rdoq_lambda in (0.0, 1.0):
        with TestClient(create_app(_settings(rdoq_lambda=rdoq_lambda), codec=codec)) as tuned:
            response = tuned.post("/compress?level=3", content=body)
            assert response.status_code == 200
            assert tuned.post("/decompress", content=response.content).status_code == 200
            sizes[rdoq_lambda] = len(response.content)
    assert sizes[1.0] < sizes[0.0]
    monkeypatch.setenv("SSLIC_RDOQ_LAMBDA", "0.25")
    assert Settings().rdoq_lambda == [0.25]
    monkeypatch.setenv("SSLIC_RDOQ_LAMBDA", "0.1, 0.1, 0.2, 0")
    assert Settings().rdoq_lambda == [0.1, 0.1, 0.2, 0.0]
    with pytest.raises(ValueError, match="rdoq_lambda"):
        _settings(rdoq_lambda=-1)
    with pytest.raises(ValueError, match="rdoq_lambda"):
        _settings(rdoq_lambda="0.1,x")


def test_rdoq_per_request(client):
    body = _png((192, 128))
    sizes = {}
    for rdoq in ("0", "1", "0,0,2,0"):
        response = client.post(f"/compress?level=3&rdoq={rdoq}", content=body)
        assert response.status_code == 200
        assert client.post("/decompress", content=response.content).status_code == 200
        assert unpack(response.content).plainly_rounded(3) == (rdoq == "0")  # plain where the default is RDO
        sizes[rdoq] = len(response.content)
    assert sizes["1"] < sizes["0"] and sizes["0,0,2,0"] < sizes["0"]
    for bad in ("x", "-1", "nan", "0.1,0.2", "1e9"):
        response = client.post(f"/compress?level=3&rdoq={bad}", content=body)
        assert response.status_code == 400 and response.json()["error"] == "invalid_parameter", bad


def test_cpu_steps_run_in_at_most_cpu_workers_threads(codec, monkeypatch):
    """Concurrent requests share a limiter of ``SSLIC_CPU_WORKERS`` threads (default: the CPUs available) and all
    get their answer."""
    monkeypatch.delenv("SSLIC_CPU_WORKERS", raising=False)
    with TestClient(create_app(_settings(), codec=codec)) as default:
        assert default.app.state.service.cpu_limiter.total_tokens == cpu_count() >= 1
    monkeypatch.setenv("SSLIC_CPU_WORKERS", "1")
    assert Settings().cpu_workers == 1
    with pytest.raises(ValueError, match="cpu_workers"):
        _settings(cpu_workers=-1)
    body = _png((64, 64))
    with TestClient(create_app(_settings(cpu_workers=1), codec=codec)) as one:
        assert one.app.state.service.cpu_limiter.total_tokens == 1
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: one.post("/compress?level=2", content=body), range(8)))
        assert [r.status_code for r in responses] == [200] * 8
        assert len({r.content for r in responses}) == 1 and responses[0].content == codec.compress(body, 2)


def test_cpu_count_follows_the_cgroup_quota(tmp_path):
    affinity = cpu_count(tmp_path / "no-cgroup")
    assert affinity >= 1
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two threads
    assert cpu_count(v2) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_count(v2) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_count(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_count(v1) == affinity


def test_refine_per_request_and_as_a_setting(client, codec, monkeypatch):
    body = _png((128, 96))
    refined = client.post("/compress?level=2&refine=4", content=body)
    assert refined.status_code == 200
    assert refined.content == codec.compress(body, 2, refine_steps=4) != codec.compress(body, 2)
    assert client.post("/decompress", content=refined.content).status_code == 200
    for bad in ("x", "-1", "1.5", "201"):
        response = client.post(f"/compress?level=2&refine={bad}", content=body)
        assert response.status_code == 400 and response.json()["error"] == "invalid_parameter", bad
    monkeypatch.setenv("SSLIC_REFINE_STEPS", "4")
    assert Settings().refine_steps == 4
    with pytest.raises(ValueError, match="refine_steps"):
        _settings(refine_steps=-1)
    with TestClient(create_app(_settings(refine_steps=4), codec=codec)) as refining:
        assert refining.post("/compress?level=2", content=body).content == refined.content
        assert refining.post("/compress?level=2&refine=0", content=body).content == codec.compress(body, 2)
        metrics = refining.get("/metrics").text
        assert 'sslic_stage_duration_seconds_count{stage="refinement"} 1.0' in metrics


def test_targets_with_refinement_refine_only_the_levels_they_try(client, codec, monkeypatch):
    body = _png((128, 96))
    refined_levels = []
    real_refine = codec.refine

    def recording_refine(level, *args):
        refined_levels.append(level)
        return real_refine(level, *args)

    monkeypatch.setattr(codec, "refine", recording_refine)
    expected = {lv: codec.compress(body, lv, refine_steps=3) for lv in range(1, 5)}
    bpp = {lv: len(data) * 8 / (128 * 96) for lv, data in expected.items()}
    refined_levels.clear()

    response = client.post("/compress?target_psnr=10&refine=3", content=body)
    assert response.headers["X-SSLIC-Levels"] == "1" and response.content == expected[1]
    assert refined_levels == [1]
    refined_levels.clear()
    response = client.post("/compress?target_bpp=100&refine=3", content=body)
    assert response.headers["X-SSLIC-Levels"] == "4" and response.content == expected[4]
    assert refined_levels == [4]
    refined_levels.clear()
    response = client.post(f"/compress?target_bpp={(bpp[2] + bpp[3]) / 2}&refine=3", content=body)
    assert response.headers["X-SSLIC-Levels"] == "2" and response.content == expected[2]
    assert refined_levels == [4, 3, 2]
    refined_levels.clear()
    response = client.post(f"/compress?target_bpp={bpp[1] / 2}&refine=3", content=body)
    assert response.status_code == 422 and response.json()["error"] == "target_unreachable"
    assert f"{bpp[1]:.4f} bpp" in response.json()["detail"] and refined_levels == [4, 3, 2, 1]


def test_refinement_past_the_request_timeout_gets_503(codec):
    with TestClient(create_app(_settings(request_timeout_s=0.3), codec=codec)) as slow:
        response = slow.post("/compress?level=4&refine=200", content=_png((256, 192)))
    assert response.status_code == 503 and response.json()["error"] == "refinement_timeout"
    assert "Retry-After" in response.headers
