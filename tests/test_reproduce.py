import json

import pytest
import yaml

from model_export.reproduce import load_recipe, main, plan


def _write_configs(tmp_path, data_dir):
    base = {
        "model": {"backbone_checkpoint": "checkpoints/does-not-matter.pt", "attention_window": 4,
                  "pyramid_channels": 16, "latent_channels": [8, 8, 8], "decoder_channels": 16},
        "loss": {"alpha": [100.0, 300.0, 900.0], "beta": [0.1, 0.2, 0.4], "gamma": [1.0, 0.9, 0.8]},
        "train": {"data_dir": str(data_dir), "val_dir": str(data_dir), "crop": 64, "batch_size": 2, "steps": 4,
                  "log_every": 1, "eval_every": 100, "checkpoint_every": 1, "threads": 1},
    }
    paths = []
    for index in (1, 2):
        path = tmp_path / f"codec{index}.yaml"
        path.write_text(yaml.safe_dump({"name": f"codec{index}", **base}))
        paths.append(path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "simclr": {"args": ["--steps", "2", "--batch-size", "4", "--source-crop", "64", "--view-size", "32",
                            "--data", str(data_dir), "--threads", "1"]},
        "codec": [{"config": str(paths[0])}, {"config": str(paths[1]), "max_steps": 3}],
    }))
    return recipe


def test_recipe_of_the_shipped_model_names_existing_configs():
    recipe = load_recipe("configs/recipe.yaml")
    assert len(recipe.stages) >= 4
    for stage in recipe.stages:
        assert (yaml.safe_load(open(stage.config))["name"]).startswith("default")


def test_recipe_ends_with_the_run_and_step_that_ship():
    shipped = json.loads(open("checkpoints/sslic_default.json").read())
    final = load_recipe("configs/recipe.yaml").stages[-1]
    config = yaml.safe_load(open(final.config))
    assert config["name"] == shipped["name"]
    assert (final.max_steps or config["train"]["steps"]) == shipped["step"]


@pytest.mark.parametrize("text, message", [
    ("codec: []", "non-empty"),
    ("codec: [{max_steps: 3}]", "needs a 'config'"),
    ("codec: [{config: a.yaml, steps: 3}]", "unknown keys"),
    ("codec: [{config: a.yaml, max_steps: 0}]", "positive integer"),
    ("codec: [{config: a.yaml}]\nsimclr: {args: [--out, x.pt]}", "must not set --out"),
    ("codec: [{config: a.yaml, start: resume}]", "must be 'init' or 'continue'"),
    ("codec: [{config: a.yaml, start: continue}]", "no previous stage"),
])
def test_bad_recipes_are_rejected_with_a_reason(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_recipe(path)


def test_reproduce_runs_every_stage_in_order_chained_and_resumes(tmp_path, small_image_dir):
    recipe = _write_configs(tmp_path, small_image_dir)
    work = tmp_path / "work"
    out = tmp_path / "final.pt"
    final = main(["--recipe", str(recipe), "--work", str(work), "--out", str(out)])
    assert final == out and out.is_file()
    backbone = work / "simclr_backbone.pt"
    assert json.loads(backbone.with_suffix(".json").read_text())["step"] == 2
    first, second = "stage1-codec1", "stage2-codec2"
    for stage in (first, second):
        config = yaml.safe_load((work / f"{stage}.yaml").read_text())
        assert config["model"]["backbone_checkpoint"] == str(backbone)
    assert f"initialised from {work / (first + '.pt')}" in (work / second / "train.log").read_text()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["step"] == 3 and summary["val"]["step"] == 3  # stopped at max_steps, final weights measured

    # a second call finds every stage done and runs nothing
    ran = []
    main(["--recipe", str(recipe), "--work", str(work)], run=lambda command: ran.append(command) or 0)
    assert ran == []

    # an interrupted stage resumes from its last.pt instead of starting again
    (work / f"{second}.pt").unlink()
    commands = plan(load_recipe(recipe), work, backbone)
    second_command = commands[-1][1]
    assert "--resume" in second_command and "--init-from" not in second_command


def test_a_continue_stage_starts_from_the_previous_runs_state(tmp_path, small_image_dir):
    recipe = _write_configs(tmp_path, small_image_dir)
    raw = yaml.safe_load(recipe.read_text())
    raw["codec"][1]["start"] = "continue"
    recipe.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    commands = plan(load_recipe(recipe), work, tmp_path / "backbone.pt")
    second = commands[-1][1]
    assert second[second.index("--continue-from") + 1] == str(work / "stage1-codec1" / "last.pt")
    assert "--init-from" not in second
