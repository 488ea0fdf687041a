import json

from bench.train_step import main


def test_train_step_benchmark_times_both_precisions_and_writes_the_report(tmp_path, tiny_config_file):
    out = tmp_path / "report.json"
    report = main(["--config", str(tiny_config_file), "--steps", "2", "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert len(report["steps_s"]["fp32"]) == 2 and len(report["steps_s"]["bf16"]) == 2
    assert all(s > 0 for s in report["median_s_per_step"].values())
    assert report["speedup_bf16"] > 0
