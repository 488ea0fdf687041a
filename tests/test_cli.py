"""The ``sslic`` command: every Kodak image at every level, and exit codes for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.bitstream import unpack
from service.cli import EXIT_BAD_INPUT, EXIT_IO, EXIT_MODEL, main
from service.codec import Codec

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"
KODAK_IMAGES = sorted(KODAK.glob("*.png"))


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.from_dir(REPO / "models" / "default", threads=2)


@pytest.mark.skipif(not KODAK_IMAGES, reason="../shared/data/kodak not found")
@pytest.mark.parametrize("path", KODAK_IMAGES, ids=lambda p: p.stem)
def test_kodak_round_trip_through_the_cli(path, tmp_path, codec, capsys):
    container = tmp_path / "all.sslc"
    assert main(["--threads", "2", "compress", str(path), str(container), "--level", "all"]) == 0
    data = container.read_bytes()
    parsed = unpack(data)
    assert parsed.level_numbers == [1, 2, 3, 4]
    with Image.open(path) as original:
        size, mode = original.size, original.mode

    bpp = []
    for level in range(1, 5):
        single = tmp_path / f"level{level}.sslc"
        assert main(["extract", str(container), str(single), "--level", str(level)]) == 0
        bpp.append(single.stat().st_size * 8 / (size[0] * size[1]))
        decoded_path = tmp_path / f"level{level}.png"
        assert main(["--threads", "2", "decompress", str(container), str(decoded_path), "--level", str(level)]) == 0
        with Image.open(decoded_path) as decoded:
            assert decoded.size == size and decoded.mode == mode
    assert all(a < b for a, b in zip(bpp, bpp[1:])), bpp

    # the symbols the decoder reads are exactly those the encoder produced
    encoded = codec.symbols(codec.load_image(path.read_bytes()), [1, 2, 3, 4])
    container_obj = codec.parse(data)
    for level in range(1, 5):
        np.testing.assert_array_equal(codec.decode_symbols(container_obj, level)[1], encoded[level])

    assert main(["info", str(container)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["width"] == size[0] and info["bytes"] == len(data)


def _sslic() -> list[str]:
    installed = shutil.which("sslic", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "service.cli"]


def test_exit_codes_and_messages(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    run = lambda *args: subprocess.run([*_sslic(), *args], capture_output=True, text=True, cwd=REPO)  # noqa: E731

    result = run("compress", str(text), str(tmp_path / "x.sslc"))
    assert result.returncode == EXIT_BAD_INPUT and "unsupported_image_type" in result.stderr

    result = run("decompress", str(text), str(tmp_path / "x.png"))
    assert result.returncode == EXIT_BAD_INPUT and "bad_magic" in result.stderr

    result = run("compress", str(tmp_path / "missing.png"), str(tmp_path / "x.sslc"))
    assert result.returncode == EXIT_IO and "missing.png" in result.stderr

    result = run("--model-dir", str(tmp_path), "compress", str(KODAK_IMAGES[0]), str(tmp_path / "x.sslc"))
    assert result.returncode == EXIT_MODEL and "manifest.json" in result.stderr

    result = run("compress", str(KODAK_IMAGES[0]), str(tmp_path / "x.sslc"), "--level", "9")
    assert result.returncode == EXIT_BAD_INPUT and "outside 1..4" in result.stderr

    result = run("compress", str(KODAK_IMAGES[0]), str(tmp_path / "k.sslc"), "--level", "1")
    assert result.returncode == 0, result.stderr
    result = run("decompress", str(tmp_path / "k.sslc"), str(tmp_path / "k.bmp"))
    assert result.returncode == EXIT_BAD_INPUT and "output format" in result.stderr
    result = run("decompress", str(tmp_path / "k.sslc"), str(tmp_path / "k.png"), "--level", "3")
    assert result.returncode == EXIT_BAD_INPUT and "level_not_in_stream" in result.stderr

    result = run("compress", str(KODAK_IMAGES[0]), str(tmp_path / "x.sslc"), "--rdoq", "-1")
    assert result.returncode == 2 and "--rdoq" in result.stderr and "between 0 and 100" in result.stderr
    result = run("compress", str(KODAK_IMAGES[0]), str(tmp_path / "x.sslc"), "--rdoq", "0.1,0.2")
    assert result.returncode == EXIT_BAD_INPUT and "one per level" in result.stderr
    result = run("compress", str(KODAK_IMAGES[0]), str(tmp_path / "plain.sslc"), "--level", "1", "--rdoq", "0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plain.sslc").stat().st_size > (tmp_path / "k.sslc").stat().st_size

    result = run("nonsense-command")
    assert result.returncode == 2


def test_refine_option(tmp_path, codec, capsys):
    source = tmp_path / "crop.png"
    with Image.open(KODAK_IMAGES[0]) as image:
        image.convert("RGB").crop((0, 0, 96, 64)).save(source)
    refined = tmp_path / "refined.sslc"
    assert main(["--threads", "2", "compress", str(source), str(refined), "--level", "1", "--refine", "3"]) == 0
    assert refined.read_bytes() == codec.compress(source.read_bytes(), 1, refine_steps=3)
    assert main(["compress", str(source), str(tmp_path / "x.sslc"), "--refine", "999"]) == EXIT_BAD_INPUT
    assert "refinement steps must be an integer 0..200" in capsys.readouterr().err
