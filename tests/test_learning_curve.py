import json

import numpy as np
import pytest
import torch

from model_export.learning_curve import append_run, fit_power_law, rate_curves, steps_to_reach


def test_power_law_fit_recovers_the_curve_and_inverts():
    steps = np.array([800, 1600, 2400, 3200, 4800, 6400, 8000], dtype=float)
    psnr = 30.0 - 400.0 * steps ** -0.6
    fit = fit_power_law(steps, psnr)
    assert fit["q_inf"] == pytest.approx(30.0, abs=0.05)
    assert fit["b"] == pytest.approx(0.6, abs=0.02)
    assert fit["rmse_db"] < 0.01
    reach = steps_to_reach(fit, 29.0)
    assert 30.0 - 400.0 * reach ** -0.6 == pytest.approx(29.0, abs=0.05)
    assert steps_to_reach(fit, 31.0) is None
    assert fit_power_law(steps[:3], psnr[:3]) is None


def _history():
    return {"runs": [{"name": "first", "steps": 200, "val": [
        {"step": 100, "run_step": 100, "bpp": [0.1, 0.2, 0.4, 0.8], "psnr": [20.0, 22.0, 24.0, 26.0]},
        {"step": 200, "run_step": 200, "bpp": [0.1, 0.3, 0.6, 1.2], "psnr": [21.0, 23.0, 25.0, 27.0]},
    ]}]}


def _run_folder(tmp_path, records, step, elapsed):
    """A finished run's folder as append_run reads it: val.jsonl and last.pt's step and time."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.save({"step": step, "elapsed": elapsed}, run / "last.pt")
    return run


def test_rate_curves_interpolate_in_log_rate_and_skip_unbracketed_points():
    curves = rate_curves(_history(), rates=(0.2, 1.0))
    assert curves["0.2"] == [(100, 22.0), (200, pytest.approx(21.0 + 2 * np.log(2) / np.log(3)))]
    assert curves["1.0"] == [(200, pytest.approx(25.0 + 2 * np.log(1 / 0.6) / np.log(2)))]


def test_append_run_continues_the_step_axis(tmp_path):
    records = [{"step": 50, "bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [20, 21, 22, 23]},
               {"step": 100, "bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [21, 22, 23, 24]}]
    run = _run_folder(tmp_path, records, step=100, elapsed=123.4)
    history = _history()
    entry = append_run(history, run, "configs/default_continue3.yaml", "cpu")
    assert entry["name"] == "default-c4" and entry["init_from"] == "first"
    assert [p["step"] for p in entry["val"]] == [250, 300]
    assert entry["steps"] == 100 and entry["train_seconds"] == 123
    append_run(history, run, "configs/default_continue3.yaml", "cpu")
    assert [r["name"] for r in history["runs"]] == ["first", "default-c4"]
    assert [p["step"] for p in history["runs"][-1]["val"]] == [250, 300]  # re-appending does not shift the run


def test_append_run_from_an_earlier_step_drops_the_abandoned_points(tmp_path):
    record = {"step": 50, "bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [20, 21, 22, 23]}
    run = _run_folder(tmp_path, [record], step=50, elapsed=10.0)
    history = _history()
    first = history["runs"][0]
    kept = [p["run_step"] for p in first["val"] if p["run_step"] <= 100]
    entry = append_run(history, run, "configs/default_continue3.yaml", "cpu", init_step=100)
    assert [p["run_step"] for p in history["runs"][0]["val"]] == kept
    assert history["runs"][0]["steps"] == 100
    start = first["val"][0]["step"] - first["val"][0]["run_step"]
    assert [p["step"] for p in entry["val"]] == [start + 100 + 50]
    with pytest.raises(ValueError, match="not a step of"):
        append_run(history, run, "configs/default_continue3.yaml", "cpu", init_step=10_000)


def test_a_run_marked_not_fitted_stays_on_the_axis_but_out_of_the_fits(tmp_path):
    record = {"step": 50, "bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [30, 31, 32, 33]}
    run = _run_folder(tmp_path, [record], step=50, elapsed=10.0)
    history = _history()
    before = rate_curves(history, fitted=True)
    entry = append_run(history, run, "configs/default_continue3.yaml", "cuda", fitted=False)
    assert entry["fitted"] is False
    assert rate_curves(history, fitted=True) == before
    assert [step for step, _ in rate_curves(history, fitted=False)["0.25"]] == [entry["val"][0]["step"]]
    assert len(rate_curves(history)["0.25"]) == len(before["0.25"]) + 1
