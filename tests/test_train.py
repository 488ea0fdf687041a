import json
import time

import pytest
import torch

import model_export.train as train_module

from model_export.checkpoint import load_codec_checkpoint, save_codec_checkpoint
from model_export.config import ConfigError, ExperimentConfig
from model_export.train import Trainer, learning_rate, main


def _config(data_dir, steps=4, **loss):
    return ExperimentConfig.from_dict({
        "name": "smoke",
        "model": {"backbone_checkpoint": None, "attention_window": 4, "pyramid_channels": 16,
                  "latent_channels": [8, 8, 8], "decoder_channels": 16},
        "loss": {"alpha": [100.0, 300.0, 900.0], "beta": [0.1, 0.2, 0.4], "gamma": [1.0, 0.9, 0.8], **loss},
        "train": {"data_dir": str(data_dir), "val_dir": str(data_dir), "crop": 64, "batch_size": 2,
                  "steps": steps, "log_every": 1, "eval_every": 2, "checkpoint_every": 1, "lr": 1e-3,
                  "lr_schedule": [[0.0, 1e-3], [0.5, 5e-4]]},
    })


def test_learning_rate_schedule():
    schedule = [[0.0, 1e-3], [0.5, 5e-4], [0.9, 1e-4]]
    assert learning_rate(schedule, 0.0) == 1e-3
    assert learning_rate(schedule, 0.6) == 5e-4
    assert learning_rate(schedule, 0.95) == 1e-4


def test_training_runs_resumes_and_exports(tmp_path, small_image_dir):
    config = _config(small_image_dir, steps=4)
    trainer = Trainer(config, tmp_path, torch.device("cpu"), quiet=True)
    trainer.run(max_steps=2)
    assert trainer.step == 2
    log = (tmp_path / "train.log").read_text()
    assert "L1" in log and "dB" in log and "P " in log
    weights_after_two = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    resumed = Trainer(_config(small_image_dir, steps=4), tmp_path, torch.device("cpu"), quiet=True)
    resumed.load_state(torch.load(tmp_path / "last.pt", weights_only=False))
    assert resumed.step == 2
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, weights_after_two[key])
    resumed.run()
    assert resumed.step == 4
    records = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(len(r["bpp"]) == 3 and len(r["psnr"]) == 3 for r in records)

    path = resumed.export(tmp_path / "codec.pt", half=True)
    model, loaded_config, summary = load_codec_checkpoint(path)
    assert loaded_config.model.latent_channels == [8, 8, 8]
    assert summary["step"] in (2, 4) and summary["val"]["bpp"]
    assert summary["train_data"]["sha256"] and summary["val_data"]["images"] == 6
    assert json.loads(path.with_suffix(".json").read_text())["name"] == "smoke"
    x = torch.rand(1, 3, 40, 50)
    x_hat, _ = model.reconstruct(x, 3)
    assert x_hat.shape == x.shape


def test_cli_trains_from_a_config_file(tmp_path, small_image_dir):
    config_path = tmp_path / "cfg.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(_config(small_image_dir, steps=2).to_dict()))
    main(["--config", str(config_path), "--run-dir", str(tmp_path / "run"), "--quiet",
          "--export", str(tmp_path / "out.pt")])
    assert (tmp_path / "run" / "last.pt").is_file()
    assert (tmp_path / "out.pt").is_file() and (tmp_path / "out.json").is_file()


def test_vgg19_perceptual_option_needs_weights(tmp_path, small_image_dir):
    config = _config(small_image_dir, perceptual="vgg19")
    with pytest.raises(SystemExit, match="vgg19_weights"):
        Trainer(config, tmp_path, torch.device("cpu"), quiet=True)


def test_a_non_finite_batch_is_skipped_not_applied(tmp_path, small_image_dir):
    trainer = Trainer(_config(small_image_dir), tmp_path, torch.device("cpu"), quiet=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_batch = trainer.sampler.batch

    def poisoned(size):
        x = real_batch(size)
        x[0, 0, 0, 0] = float("nan")
        return x

    trainer.sampler.batch = poisoned
    loss, _, applied = trainer.train_step()
    assert not applied and loss != loss  # NaN
    assert trainer.skipped == 1
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, before[key], equal_nan=True)
    trainer.sampler.batch = real_batch
    _, _, applied = trainer.train_step(reference_loss=1e-6)  # far above 20x the running loss: a spike
    assert not applied and trainer.skipped == 2
    _, _, applied = trainer.train_step()
    assert applied
    assert "skipped update" in (tmp_path / "train.log").read_text()


def test_a_new_run_drops_or_zeroes_the_decoder_input_offsets_it_does_not_share(tmp_path, small_image_dir):
    """Offsets fit one decoder: a run without them in its config drops a checkpoint's, a run with them starts them
    at 0 from a checkpoint without."""
    from model_export.fit_offsets import with_input_offsets

    first = Trainer(_config(small_image_dir, steps=1), tmp_path / "a", torch.device("cpu"), quiet=True)
    (tmp_path / "a").mkdir()
    first.run()
    plain_path = first.export(tmp_path / "plain.pt", half=False)
    with_offsets, config = with_input_offsets(first.model, first.config)
    with torch.no_grad():
        for offsets in with_offsets.decoder.input_offsets:
            offsets.offsets.fill_(0.25)
    offsets_path = save_codec_checkpoint(tmp_path / "offsets.pt", with_offsets, config, {"name": "offsets"})
    (tmp_path / "b").mkdir()
    plain = Trainer(_config(small_image_dir, steps=1), tmp_path / "b", torch.device("cpu"), quiet=True)
    plain.init_from(offsets_path)
    assert plain.model.decoder.input_offsets is None
    torch.testing.assert_close(plain.model.decoder.entry[0].weight, first.model.decoder.entry[0].weight)
    assert "not carried over" in (tmp_path / "b" / "train.log").read_text()
    offsets_config = _config(small_image_dir, steps=1)
    offsets_config.model.decoder_input_offsets = True
    (tmp_path / "c").mkdir()
    fitted = Trainer(offsets_config, tmp_path / "c", torch.device("cpu"), quiet=True)
    fitted.init_from(plain_path)
    assert all(not offsets.offsets.any() for offsets in fitted.model.decoder.input_offsets)


def test_a_new_run_can_start_from_a_codec_checkpoint(tmp_path, small_image_dir):
    first = Trainer(_config(small_image_dir, steps=2), tmp_path / "a", torch.device("cpu"), quiet=True)
    (tmp_path / "a").mkdir()
    first.run()
    path = first.export(tmp_path / "a.pt", half=False)
    (tmp_path / "b").mkdir()
    second = Trainer(_config(small_image_dir, steps=2), tmp_path / "b", torch.device("cpu"), quiet=True)
    second.init_from(path)
    exported, _, _ = load_codec_checkpoint(path)
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value)
    assert second.step == 0

    # the lineage travels into the next export: steps and seconds add up over the chain of runs
    second.run()
    _, _, summary = load_codec_checkpoint(second.export(tmp_path / "b.pt", half=False))
    assert summary["init_checkpoint"]["name"] == "smoke" and summary["init_checkpoint"]["total_steps"] == 2
    assert summary["total_steps"] == 4
    assert summary["total_train_seconds"] >= summary["train_seconds"] > 0


def test_a_new_run_can_continue_from_another_runs_state(tmp_path, small_image_dir):
    first = Trainer(_config(small_image_dir, steps=3), tmp_path / "a", torch.device("cpu"), quiet=True)
    (tmp_path / "a").mkdir()
    first.run()
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    config = _config(small_image_dir, steps=2).to_dict()
    config["name"] = "follow-up"
    config["train"]["lr_schedule"] = [[0.0, 2e-4]]
    (tmp_path / "b").mkdir()
    second = Trainer(ExperimentConfig.from_dict(config), tmp_path / "b", torch.device("cpu"), quiet=True)
    second.continue_from(tmp_path / "a" / "last.pt")
    assert second.step == 0 and second.val_history == []
    for key, value in state["model"].items():
        torch.testing.assert_close(second.model.state_dict()[key], value)
    moments = state["optimizer"]["state"]
    assert moments and all(
        torch.equal(second.optimizer.state_dict()["state"][k]["exp_avg_sq"], v["exp_avg_sq"]) for k, v in moments.items()
    )
    assert [g["lr_scale"] for g in second.optimizer.param_groups] == [g["lr_scale"] for g in first.optimizer.param_groups]

    second.run()
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)  # the new schedule, not the old one
    _, _, summary = load_codec_checkpoint(second.export(tmp_path / "b.pt", half=False))
    assert summary["init_checkpoint"]["name"] == "smoke" and summary["init_checkpoint"]["total_steps"] == 3
    assert summary["total_steps"] == 5


def test_continue_from_refuses_another_model(tmp_path, small_image_dir):
    first = Trainer(_config(small_image_dir, steps=1), tmp_path / "a", torch.device("cpu"), quiet=True)
    (tmp_path / "a").mkdir()
    first.run()
    config = _config(small_image_dir, steps=1).to_dict()
    config["model"]["finetune_backbone"] = True
    (tmp_path / "b").mkdir()
    second = Trainer(ExperimentConfig.from_dict(config), tmp_path / "b", torch.device("cpu"), quiet=True)
    with pytest.raises(ValueError, match="finetune_backbone differ"):
        second.continue_from(tmp_path / "a" / "last.pt")
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    del state["config"]["model"]["decoder_input_offsets"]  # a state saved before the key existed: its default
    torch.save(state, tmp_path / "a" / "older.pt")
    (tmp_path / "c").mkdir()
    Trainer(_config(small_image_dir, steps=1), tmp_path / "c", torch.device("cpu"), quiet=True).continue_from(
        tmp_path / "a" / "older.pt")


def test_init_from_and_continue_from_exclude_each_other(tmp_path, small_image_dir):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(_config(small_image_dir).to_dict()))
    with pytest.raises(SystemExit, match="exclude"):
        main(["--config", str(config), "--run-dir", str(tmp_path / "r"), "--quiet",
              "--init-from", "a.pt", "--continue-from", "b/last.pt"])


def test_a_time_limited_stop_validates_the_final_weights(tmp_path, small_image_dir):
    trainer = Trainer(_config(small_image_dir, steps=50), tmp_path, torch.device("cpu"), quiet=True)
    trainer.run(max_minutes=1e-6)  # the deadline passes after the first step
    assert trainer.step == 1
    assert [r["step"] for r in trainer.val_history] == [1]
    assert (tmp_path / "best.pt").is_file()


def test_the_perceptual_features_come_from_their_own_checkpoint_when_one_is_named(tmp_path, small_image_dir):
    from model_export.backbone import ResNet50Group1
    from model_export.simclr import SimCLR, backbone_checkpoint

    paths = {}
    for name, seed in (("encoder", 1), ("perceptual", 2)):
        torch.manual_seed(seed)
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(backbone_checkpoint(SimCLR(), {"kind": "sslic-simclr-backbone"}), paths[name])
    data = _config(small_image_dir).to_dict()
    data["model"]["backbone_checkpoint"] = str(paths["encoder"])
    stems = {}
    for perceptual in (None, str(paths["perceptual"])):
        data["loss"]["perceptual_checkpoint"] = perceptual
        trainer = Trainer(ExperimentConfig.from_dict(data), tmp_path / str(bool(perceptual)), torch.device("cpu"),
                          quiet=True)
        network = trainer.perceptual.network.backbone
        assert isinstance(network, ResNet50Group1)
        stems[perceptual] = network.conv1.weight
        assert torch.equal(trainer.model.encoder.backbone.conv1.weight,
                           torch.load(paths["encoder"], weights_only=True)["state_dict"]["conv1.weight"])
    assert torch.equal(stems[None], torch.load(paths["encoder"], weights_only=True)["state_dict"]["conv1.weight"])
    assert torch.equal(stems[str(paths["perceptual"])],
                       torch.load(paths["perceptual"], weights_only=True)["state_dict"]["conv1.weight"])


def test_finetuned_backbone_trains_at_its_own_rate_with_frozen_batch_norm(tmp_path, small_image_dir):
    data = _config(small_image_dir, steps=2).to_dict()
    data["model"]["finetune_backbone"] = True
    data["train"]["backbone_lr_scale"] = 0.1
    config = ExperimentConfig.from_dict(data)
    trainer = Trainer(config, tmp_path, torch.device("cpu"), quiet=True)
    backbone = trainer.model.encoder.backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainer.run()
    groups = trainer.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in backbone.parameters()}
    after = backbone.state_dict()
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    for key in [k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]:
        assert torch.equal(after[key], before[key]), key


def test_a_frozen_backbone_after_fine_tuning_keeps_the_fine_tuned_weights(tmp_path, small_image_dir):
    data = _config(small_image_dir, steps=2).to_dict()
    data["model"]["finetune_backbone"] = True
    data["train"]["backbone_lr_scale"] = 0.5
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tuned = Trainer(ExperimentConfig.from_dict(data), tmp_path / "a", torch.device("cpu"), quiet=True)
    tuned.run()
    path = tuned.export(tmp_path / "a.pt", half=False)
    tuned_backbone, _, _ = load_codec_checkpoint(path)

    frozen = Trainer(_config(small_image_dir, steps=2), tmp_path / "b", torch.device("cpu"), quiet=True)
    fresh_summary = frozen.summary(frozen.state())
    frozen.init_from(path)
    frozen.run()
    _, config, summary = load_codec_checkpoint(frozen.export(tmp_path / "b.pt", half=False))
    assert not config.model.finetune_backbone
    for key, value in tuned_backbone.encoder.backbone.state_dict().items():
        torch.testing.assert_close(frozen.model.encoder.backbone.state_dict()[key], value, rtol=0, atol=0)
    assert summary["backbone_fine_tuned"] and summary["init_checkpoint"]["backbone_fine_tuned"]
    assert not fresh_summary["backbone_fine_tuned"]


def test_bf16_autocast_step_matches_fp32_and_keeps_the_entropy_model_in_fp32(tmp_path, small_image_dir):
    def trainer(precision):
        config = _config(small_image_dir)
        config.train.precision = precision
        return Trainer(config, tmp_path / precision, torch.device("cpu"), quiet=True)

    fp32, bf16 = trainer("fp32"), trainer("bf16")
    bf16.model.load_state_dict(fp32.model.state_dict())
    x = fp32.sampler.batch(2)
    fp32.model.eval(), bf16.model.eval()  # rounding instead of noise, so both see the same latents
    with torch.no_grad():
        reference, _ = fp32.criterion(x, fp32.model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = bf16.model(x)
            loss, terms = bf16.criterion(x, output)
    assert output["x_hat"][0].dtype == torch.bfloat16
    assert all(likelihood.dtype == torch.float32 for likelihood in output["likelihoods"])
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(reference), rel=0.03)

    bf16.model.train()
    bf16.sampler = fp32.sampler
    bf16.autocast_bf16 = True  # the autocast step itself, also on a CPU where the trainer would fall back
    value, _, applied = bf16.train_step()
    assert applied and value == value


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16_instructions(tmp_path, small_image_dir, monkeypatch):
    config = _config(small_image_dir)
    config.train.precision = "bf16"
    monkeypatch.setattr(train_module, "native_bf16", lambda device: False)
    emulated = Trainer(config, tmp_path / "emulated", torch.device("cpu"), quiet=True)
    assert not emulated.autocast_bf16 and "fp32" in emulated.precision_note
    monkeypatch.setattr(train_module, "native_bf16", lambda device: True)
    native = Trainer(config, tmp_path / "native", torch.device("cpu"), quiet=True)
    assert native.autocast_bf16 and native.precision_note is None



def test_an_accumulated_update_equals_one_update_of_the_whole_batch(tmp_path, small_image_dir):
    def trainer(batch_size, accumulate):
        config = _config(small_image_dir)
        config.train.batch_size, config.train.accumulate = batch_size, accumulate
        config.train.grad_clip = 0.0  # clipping would hide a wrong scale of the summed gradients
        return Trainer(config, tmp_path / f"{batch_size}x{accumulate}", torch.device("cpu"), quiet=True)

    whole, parts = trainer(4, 1), trainer(2, 2)
    parts.model.load_state_dict(whole.model.state_dict())
    x = whole.sampler.batch(4)
    whole.next_batch = lambda: x
    halves = iter([x[:2], x[2:]])
    parts.next_batch = lambda: next(halves)
    whole.model.eval(), parts.model.eval()  # rounding instead of noise, so both see the same latents
    whole_loss, whole_terms, applied = whole.train_step()
    assert applied
    parts_loss, parts_terms, applied = parts.train_step()
    assert applied
    assert parts_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole_terms, parts_terms):
        assert float(b.bpp) == pytest.approx(float(a.bpp), rel=1e-5)
        assert float(b.mse) == pytest.approx(float(a.mse), rel=1e-5)
    gradients = 0
    for (name, a), (_, b) in zip(whole.model.named_parameters(), parts.model.named_parameters()):
        if a.grad is not None and name.split(".")[0] != "entropy":
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7, msg=name)
            gradients += 1
    assert gradients > 10
    config = _config(small_image_dir).to_dict()
    config["train"]["accumulate"] = 0
    with pytest.raises(ConfigError, match="accumulate"):
        ExperimentConfig.from_dict(config)

def test_a_channels_last_step_matches_the_default_layout(tmp_path, small_image_dir):
    def trainer(channels_last):
        config = _config(small_image_dir)
        config.train.channels_last = channels_last
        config.train.grad_clip = 0.0
        return Trainer(config, tmp_path / str(channels_last), torch.device("cpu"), quiet=True)

    plain, last = trainer(False), trainer(True)
    assert last.next_batch().is_contiguous(memory_format=torch.channels_last)
    last.model.load_state_dict(plain.model.state_dict())
    convolutions = [m.weight for m in last.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    x = plain.sampler.batch(2)
    plain.next_batch = lambda: x
    last.next_batch = lambda: x.contiguous(memory_format=torch.channels_last)
    plain.model.eval(), last.model.eval()  # rounding instead of noise, so both see the same latents
    plain_loss, _, applied = plain.train_step()
    last_loss, _, last_applied = last.train_step()
    assert applied and last_applied
    assert last_loss == pytest.approx(plain_loss, rel=1e-5)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), last.model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    restored = trainer(False)
    restored.model.load_state_dict(last.model.state_dict())
    for a, b in zip(restored.model.state_dict().values(), last.model.state_dict().values()):
        assert torch.equal(a, b)


def test_unknown_precision_is_rejected(small_image_dir):
    from model_export.config import ConfigError

    data = _config(small_image_dir).to_dict()
    data["train"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match="precision"):
        ExperimentConfig.from_dict(data)


def test_crops_cut_on_threads_equal_crops_cut_in_line(small_image_dir):
    from concurrent.futures import ThreadPoolExecutor

    from model_export.data import BatchPrefetcher, CropSampler, ImageSet, crops_to_float

    images = ImageSet.from_dir(small_image_dir).images
    in_line = CropSampler(images, 96, downscale_min_side=100, seed=3)
    threaded = CropSampler(images, 96, downscale_min_side=100, seed=3)
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            torch.testing.assert_close(threaded.batch(4, pool), in_line.batch(4), rtol=0, atol=0)
    reference = CropSampler(images, 96, downscale_min_side=100, seed=5)
    prefetcher = BatchPrefetcher(CropSampler(images, 96, downscale_min_side=100, seed=5), 4, threads=2)
    try:
        for _ in range(3):
            crops = prefetcher.next()
            assert crops.dtype == torch.uint8 and crops.shape == (4, 96, 96, 3)
            torch.testing.assert_close(crops_to_float(crops), reference.batch(4), rtol=0, atol=0)
    finally:
        prefetcher.close()


def test_a_trainer_with_crop_threads_trains_on_the_batches_it_would_cut_in_line(tmp_path, small_image_dir):
    in_line = Trainer(_config(small_image_dir), tmp_path / "a", torch.device("cpu"), quiet=True)
    threaded = Trainer(_config(small_image_dir), tmp_path / "b", torch.device("cpu"), quiet=True, loader_threads=2)
    try:
        for _ in range(3):
            expected, batch = in_line.next_batch(), threaded.next_batch()
            assert batch.dtype == torch.float32 and batch.shape == (2, 3, 64, 64)
            torch.testing.assert_close(batch, expected, rtol=0, atol=0)
    finally:
        threaded.prefetcher.close()


class _SecondPerReading:
    """The ``time`` module of model_export.train with a clock that advances one second per reading, so a
    time-budgeted run takes the same steps on a fast machine and on a loaded one."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_time_budget_snapshots_are_adopted_validated_and_exported(tmp_path, small_image_dir, monkeypatch):
    monkeypatch.setattr(train_module, "time", _SecondPerReading())
    config = _config(small_image_dir, steps=1000).to_dict()
    config["train"]["eval_every"] = 1000
    config_path = tmp_path / "cfg.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config))
    # "elsewhere": packed images, no validation, crops on threads, a time budget instead of a step count
    from model_export.pack_data import pack_images

    pack_images(small_image_dir, tmp_path / "packed", quality=92)
    main(["--config", str(config_path), "--run-dir", str(tmp_path / "away"), "--quiet", "--no-val",
          "--data-dir", str(tmp_path / "packed"),
          "--loader-threads", "2", "--time-budget", "0.05", "--snapshots", "0.5",
          "--snapshot-dir", str(tmp_path / "snapshots")])
    snapshots = sorted((tmp_path / "snapshots").glob("snapshot-*.pt"))
    # one step a second: the 0.5 snapshot after step 2 (2 s of the 3), the last after step 3
    assert [p.name for p in snapshots] == ["snapshot-000002.pt", "snapshot-000003.pt"]
    assert not (tmp_path / "away" / "val.jsonl").exists()
    state = torch.load(snapshots[-1], weights_only=False)
    assert "optimizer" not in state and state["step"] == 3 and state["elapsed"] >= 3.0
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())

    # "here": validate them in step order, keep the best, export with the lineage of the snapshots
    main(["--config", str(config_path), "--run-dir", str(tmp_path / "home"), "--quiet",
          "--adopt-snapshots", str(tmp_path / "snapshots"), "--export", str(tmp_path / "codec.pt"), "--half"])
    records = [json.loads(line) for line in (tmp_path / "home" / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == sorted(torch.load(p, weights_only=False)["step"] for p in snapshots)
    _, _, summary = load_codec_checkpoint(tmp_path / "codec.pt")
    best = min(records, key=lambda r: r["val_loss"])
    assert summary["step"] == best["step"] and summary["device"] == "cpu"
    assert summary["train_data"]["dir"] == str(tmp_path / "packed")  # what it was trained on, not what is here
    assert summary["val"]["bpp"] == pytest.approx(best["bpp"], rel=1e-6)


def test_one_time_budget_spans_a_stopped_call_and_its_resume(tmp_path, small_image_dir, monkeypatch):
    """A lease's two calls share one schedule: --max-minutes stops the first before its --time-budget is spent
    (with a snapshot), and a --resume with the same budget goes on where it stopped, the learning rate never
    stepping back up."""
    monkeypatch.setattr(train_module, "time", _SecondPerReading())
    config = _config(small_image_dir, steps=1000).to_dict()
    config["train"]["lr_schedule"] = [[0.0, 1e-3], [0.4, 5e-4], [0.7, 1e-4]]
    config_path = tmp_path / "cfg.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config))
    common = ["--config", str(config_path), "--run-dir", str(tmp_path / "away"), "--quiet", "--no-val",
              "--time-budget", "0.5", "--snapshots", "0.9", "--snapshot-dir", str(tmp_path / "snapshots")]
    main([*common, "--max-minutes", "0.25"])
    log = (tmp_path / "away" / "train.log").read_text()
    assert "--max-minutes reached" in log
    first_call = sorted((tmp_path / "snapshots").glob("snapshot-*.pt"))
    assert len(first_call) == 1
    stopped = torch.load(first_call[0], weights_only=False)
    assert 0 < stopped["elapsed"] < 30.0

    main([*common, "--resume"])
    log = (tmp_path / "away" / "train.log").read_text()
    rates = [float(line.split(" lr ")[1].split()[0]) for line in log.splitlines() if line.startswith("step ")]
    assert rates == sorted(rates, reverse=True) and {1e-3, 5e-4, 1e-4} <= set(rates)
    final = torch.load(sorted((tmp_path / "snapshots").glob("snapshot-*.pt"))[-1], weights_only=False)
    assert final["step"] > stopped["step"] and final["elapsed"] >= 30.0


def test_snapshot_options_are_checked(tmp_path, small_image_dir):
    config_path = tmp_path / "cfg.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(_config(small_image_dir).to_dict()))
    with pytest.raises(SystemExit, match="time-budget"):
        main(["--config", str(config_path), "--snapshots", "0.5"])
    with pytest.raises(SystemExit, match="adopt-snapshots"):
        main(["--config", str(config_path), "--no-val", "--export", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="no snapshot"):
        main(["--config", str(config_path), "--run-dir", str(tmp_path / "r"), "--adopt-snapshots", str(tmp_path)])


def test_pack_data_writes_full_chroma_jpegs(tmp_path, small_image_dir):
    from PIL import Image, JpegImagePlugin

    from model_export.pack_data import pack_images

    count, size = pack_images(small_image_dir, tmp_path / "packed", quality=92)
    assert count == 6 and size == sum(p.stat().st_size for p in (tmp_path / "packed").glob("*.jpg"))
    with Image.open(next((tmp_path / "packed").glob("*.jpg"))) as image:
        assert image.format == "JPEG" and JpegImagePlugin.get_sampling(image) == 0  # 4:4:4
