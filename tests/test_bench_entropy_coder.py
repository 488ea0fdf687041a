"""bench/bench_entropy_coder.py on the shipped model: it codes, checks the round trip and reports per level."""

import json

import pytest

from bench.bench_entropy_coder import main
from tests.conftest import REPO, SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "kodak").is_dir(), reason="needs ../shared/data/kodak")
def test_the_entropy_coder_bench_reports_every_level_of_every_folder(tmp_path):
    kodak = SHARED_DATA / "kodak"
    model, twin = REPO / "models" / "default", tmp_path / "twin"
    twin.symlink_to(model, target_is_directory=True)
    report = main([str(model), str(twin), "--data", str(kodak), "--limit", "1", "--repeats", "1",
                   "--out", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    assert report["images"] == ["kodim01.png"]
    rows, twin_rows = report["results"][str(model)], report["results"][str(twin)]
    assert sorted(rows) == ["1", "2", "3", "4"] and all(row["encode_s"][0] > 0 for row in rows.values())
    assert [rows[level]["bytes"] for level in rows] == [twin_rows[level]["bytes"] for level in rows]
    assert rows["1"]["bytes"][0] < rows["2"]["bytes"][0] < rows["3"]["bytes"][0] < rows["4"]["bytes"][0]
