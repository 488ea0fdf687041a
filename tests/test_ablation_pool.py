import copy
import json
import math

import pytest

from model_export.ablation import REFERENCE
from model_export.ablation_pool import collect_runs, main, pool
from model_export.config import ExperimentConfig

BPPS = [0.1, 0.25, 0.6, 1.5]
PSNRS = [24.0, 27.0, 30.0, 33.0]


def _curve(offset_db: float) -> dict:
    points = {"bpp": list(BPPS), "psnr": [p + offset_db for p in PSNRS]}
    return {"val": points, "kodak": copy.deepcopy(points)}


def _report(seed: int, variants: dict[str, float]) -> dict:
    config = ExperimentConfig.from_dict({"name": f"abl-seed{seed}", "train": {"seed": seed}}).to_dict()
    return {
        "base_config": config,
        "reference": REFERENCE,
        "datasets": {"val": {"images": 9, "sha256": "a"}, "kodak": {"images": 24, "sha256": "b"}},
        "variants": {name: {"rd": _curve(offset)} for name, offset in variants.items()},
    }


def test_every_variant_run_is_compared_with_every_reference_run():
    reports = {
        "a.json": _report(0, {REFERENCE: 0.0, "simclr_none": -0.5}),
        "b.json": _report(1, {REFERENCE: -0.2, "simclr_none": -0.9}),
    }
    pooled = pool(reports)
    assert pooled["runs"][REFERENCE] == [{"report": "a.json", "seed": 0}, {"report": "b.json", "seed": 1}]
    reference = pooled["reference_pairs"]["summary"]["val"]["bd_psnr_db"]
    assert reference["n"] == 1 and reference["mean"] == pytest.approx(0.2, abs=1e-3)
    none = pooled["variants"]["simclr_none"]
    assert none["runs"] == 2 and len(none["pairs"]) == 4
    val = none["summary"]["val"]["bd_psnr_db"]
    # pairs: -0.5, -0.3 (run a against references a, b) and -0.9, -0.7 (run b)
    assert val["mean"] == pytest.approx(-0.6, abs=1e-3)
    assert val["min"] == pytest.approx(-0.9, abs=1e-3) and val["max"] == pytest.approx(-0.3, abs=1e-3)
    assert none["summary"]["kodak"]["pairs_behind"] == 4
    same = none["summary_same_sample"]["val"]["bd_psnr_db"]
    assert same["n"] == 2 and same["mean"] == pytest.approx(-0.6, abs=1e-3)
    assert none["summary"]["val"]["bd_rate_percent"]["mean"] > 0


def test_a_borrowed_or_reproduced_run_counts_once():
    first = _report(1, {REFERENCE: 0.0, "random_encoder": -0.4})
    later = _report(1, {REFERENCE: 0.0, "simclr_decoder": 0.1})
    later["variants"][REFERENCE]["from_report"] = "first.json"
    runs = collect_runs({"first.json": first, "later.json": later})
    assert [run["report"] for run in runs[REFERENCE]] == ["first.json"]
    pooled = pool({"first.json": first, "later.json": later})
    assert pooled["reference_pairs"]["pairs"] == []
    assert pooled["reference_pairs"]["summary"]["val"]["bd_psnr_db"]["mean"] is None
    (pair,) = pooled["variants"]["simclr_decoder"]["pairs"]
    assert pair["same_sample"] and pair["bd"]["val"]["bd_psnr_db"] == pytest.approx(0.1, abs=1e-3)


def test_reports_of_other_budgets_or_datasets_are_refused(tmp_path):
    base = _report(0, {REFERENCE: 0.0})
    longer = _report(1, {REFERENCE: 0.1})
    longer["base_config"]["train"]["steps"] += 1
    with pytest.raises(ValueError, match="another budget"):
        pool({"a.json": base, "b.json": longer})
    other_data = _report(1, {REFERENCE: 0.1})
    other_data["datasets"]["kodak"]["images"] = 2
    with pytest.raises(ValueError, match="other datasets"):
        pool({"a.json": base, "b.json": other_data})
    with pytest.raises(ValueError, match="no report has a run of the reference"):
        pool({"a.json": {**base, "variants": {"simclr_none": {"rd": _curve(0.0)}}}})

    paths = []
    for name, report in (("a.json", base), ("b.json", longer)):
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="cannot pool"):
        main(paths + ["--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="not a readable ablations report"):
        main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")])


def test_the_pooled_report_is_written_with_a_row_per_variant(tmp_path):
    paths = []
    for seed, variants in ((0, {REFERENCE: 0.0, "simclr_both": -0.1}), (1, {REFERENCE: -0.3})):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps(_report(seed, variants)))
        paths.append(str(path))
    pooled = main(paths + ["--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "pooled.json").read_text()) == pooled
    markdown = (tmp_path / "out" / "pooled.md").read_text()
    assert f"| `{REFERENCE}` vs itself | 2 | 1 | 0.30 dB (0.30 to 0.30) | – |" in markdown
    assert "| `simclr_both` | 1 | 2 | +0.05 dB (-0.10 to +0.20) | 1 of 2 |" in markdown
    same_sample = markdown.split("Same-sample pairs only")[1]
    # against its own report's reference alone: -0.1 dB, not the +0.2 dB against the other seed's
    assert "| `simclr_both` | 1 | 1 | -0.10 dB (-0.10 to -0.10) | 1 of 1 |" in same_sample
    assert "| `simclr_both` | -0.10 (-0.10 to -0.10), 1 of 1 behind |" in same_sample


def test_psnr_at_equal_rate_is_pooled_per_level_of_the_reference(tmp_path):
    reference = _report(0, {REFERENCE: 0.0})
    doubled = {"bpp": [2 * rate for rate in BPPS], "psnr": list(PSNRS)}
    reference["variants"]["learned_encoder"] = {"rd": {"val": doubled, "kodak": copy.deepcopy(doubled)}}
    second = _report(1, {REFERENCE: -0.1, "learned_encoder": 0.2})
    pooled = pool({"a.json": reference, "b.json": second})
    (same_sample, *_) = [pair for pair in pooled["variants"]["learned_encoder"]["pairs"] if pair["same_sample"]]
    # the doubled curve at the reference's 0.25 bpp: between its 0.2 bpp (24 dB) and 0.5 bpp (27 dB) in ln(bpp)
    at_level_2 = 24.0 + 3.0 * math.log(0.25 / 0.2) / math.log(0.5 / 0.2) - 27.0
    assert same_sample["bd"]["val"]["equal_rate_db"][0] is None
    assert same_sample["bd"]["val"]["equal_rate_db"][1] == pytest.approx(at_level_2, abs=1e-3)
    levels = pooled["variants"]["learned_encoder"]["summary"]["val"]["equal_rate_db"]
    assert len(levels) == 4
    # level 1: only the second run (+0.2 dB everywhere) covers the references' 0.1 bpp
    assert levels[0]["n"] == 2 and levels[0]["pairs_behind"] == 0
    assert levels[0]["mean"] == pytest.approx(0.25, abs=1e-3)
    assert levels[1]["n"] == 4 and levels[1]["pairs_behind"] == 2
    spread = pooled["reference_pairs"]["summary"]["kodak"]["equal_rate_db"]
    assert [level["mean"] for level in spread] == pytest.approx([0.1] * 4, abs=1e-3)
    assert all(level["pairs_behind"] is None for level in spread)

    paths = []
    for name, report in (("a.json", reference), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps(report))
        paths.append(str(tmp_path / name))
    main(paths + ["--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "pooled.md").read_text()
    assert "PSNR at the reference run's rate of each level, Kodak" in markdown
    assert "| `simclr_encoder` vs itself | 0.10 (0.10 to 0.10) | 0.10 (0.10 to 0.10) |" in markdown
    assert "| `learned_encoder` | +0.25 (+0.20 to +0.30), 0 of 2 behind |" in markdown
