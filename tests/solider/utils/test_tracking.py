"""RunLogger writes real TensorBoard event files with the tags, and log.jsonl lines."""

import json

import torch
from accelerate import Accelerator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from solider.utils.tracking import RunLogger, flatten_for_hparams


def test_scalars_images_and_jsonl(tmp_path):
    acc = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path))
    run = RunLogger(acc, tmp_path, config={"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0})
    run.log({"train/loss": torch.tensor(1.5), "train/lr": 0.01, "train/nan": float("nan")}, step=3)
    run.log_image("train/crops", torch.rand(3, 8, 4), step=3)
    run.close()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == [{"step": 3, "train/loss": 1.5, "train/lr": 0.01, "train/nan": "nan"}]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"train/loss", "train/lr"} <= set(events.Tags()["scalars"])
    assert "train/crops" in events.Tags()["images"]
    assert events.Scalars("train/loss")[0].step == 3
    # the config is in the run's own folder (HParams tab), with no timestamp-named run beside it
    assert [p.name for p in (tmp_path / "tb").iterdir() if p.is_dir()] == []
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["optim.lr"].number_value == 0.1 and start.hparams["seed"].number_value == 0


def test_flatten_for_hparams():
    flat = flatten_for_hparams({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": "None"}
