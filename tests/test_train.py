"""``leworld train``: a tiny run writes a loadable model and TensorBoard logs; runs resume exactly."""

from __future__ import annotations

import glob
import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import world_models
from tests.conftest import run_cli
from tests.test_collect import assert_one_line_error
from world_models.lewm import train as train_module
from world_models.lewm.train import TrainConfig, lr_at, train
from world_models.video import gif_frame_count

SCALARS = [
    "train/loss",
    "train/prediction",
    "train/sigreg",
    "train/lr",
    "train/grad_norm",
    "train/clips_per_s",
    "val/loss",
    "val/prediction",
    "val/sigreg",
    *[f"rollout/mse_h{h}" for h in range(1, 6)],
    *[f"rollout/copy_last_mse_h{h}" for h in range(1, 6)],
    *[f"probe/r2_{f}" for f in ("agent_x", "agent_y", "block_x", "block_y", "sin_angle", "cos_angle")],
]


def events(run_dir) -> EventAccumulator:
    files = glob.glob(str(run_dir / "tb" / "events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    acc = EventAccumulator(files[0], size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tiny_run(short_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_cli(
        "train",
        "--preset",
        "tiny",
        "--data",
        str(short_dataset),
        "--steps",
        "20",
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--val-every",
        "10",
        "--probe-steps",
        "50",
        "--recalibration-batches",
        "2",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "parameters: encoder.backbone" in result.stdout and "probe R^2" in result.stdout
    return out


def test_tiny_run_writes_a_loadable_model(tiny_run, short_dataset):
    from world_models.data.dataset import PushTClips

    wm = world_models.load(tiny_run / "model", backend="torch")
    assert wm.config.image_size == 64 and wm.config.frameskip == 5
    batch = PushTClips(short_dataset, split="all").sample(3)
    z = wm.encode(batch.pixels[:, 0])
    assert z.shape == (3, wm.config.latent_dim) and z.dtype == np.float32 and np.isfinite(z).all()
    nxt = wm.predict(np.stack([wm.encode(batch.pixels[:, i]) for i in range(3)], 1), batch.actions[:, :3])
    assert nxt.shape == (3, wm.config.latent_dim)
    assert wm.probe(z).shape == (3, 5)


def test_tiny_run_logs_every_scalar_the_image_strip_and_the_video(tiny_run):
    acc = events(tiny_run)
    tags = acc.Tags()
    missing = [t for t in SCALARS if t not in tags["scalars"]]
    assert not missing, missing
    assert [e.step for e in acc.Scalars("train/loss")][-1] == 20
    assert all(np.isfinite(e.value) for t in SCALARS for e in acc.Scalars(t))
    assert "rollout/real_vs_imagined" in tags["images"]
    image = acc.Images("rollout/real_vs_imagined")[-1]
    assert image.width == 5 * 64 and image.height == 4 * 2 * 64
    # The open-loop video (a GIF summary, written without moviepy): one frame per horizon,
    # four clips stacked, observed | imagined side by side.
    video = acc.Images("rollout/open_loop_video")[-1]
    assert video.width == 2 * 64 and video.height == 4 * 64
    assert [e.step for e in acc.Images("rollout/open_loop_video")] == [10, 20]
    assert gif_frame_count(video.encoded_image_string) == 5


def test_existing_run_needs_resume(tiny_run, short_dataset):
    result = run_cli("train", "--data", str(short_dataset), "--out", str(tiny_run), "--steps", "5")
    assert_one_line_error(result, "already holds a training run", "--resume")


def test_resumed_run_equals_an_uninterrupted_one(short_dataset, tmp_path, monkeypatch):
    common = dict(
        data=str(short_dataset),
        batch_size=8,
        val_every=1000,
        checkpoint_every=4,
        probe_steps=10,
        warmup=3,
        steps=8,
        recalibration_batches=1,
        probe_clips=256,
    )
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **common), progress=False)

    real_step = train_module.train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # Ctrl-C during step 6: the checkpoint holds 5 finished steps
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "resumed"), **common), progress=False)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", counting)
    resumed = train(TrainConfig(out=str(tmp_path / "resumed"), **common), resume=True, progress=False)
    assert counted["n"] == 3  # steps 6, 7 and 8: the run went on from its checkpoint

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(data="", out="", steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(x >= y for x, y in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)


def test_torchrun_two_processes_train_validate_and_save(short_dataset, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as free:  # a free loopback port for the process group's store
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "world_models.lewm.train",
            "--data",
            str(short_dataset),
            "--out",
            str(out),
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--val-every",
            "2",
            "--probe-steps",
            "10",
            "--recalibration-batches",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wm = world_models.load(out / "model")
    assert wm.config.history == 3
    assert [e.step for e in events(out).Scalars("val/loss")] == [2, 4]


def test_bad_training_input(short_dataset, tmp_path):
    result = run_cli("train", "--data", str(short_dataset), "--out", str(tmp_path / "r"), "--preset", "huge")
    assert_one_line_error(result, "unknown preset 'huge'", "tiny")
    result = run_cli("train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "no such dataset")
    result = run_cli(
        "train",
        "--data",
        str(short_dataset),
        "--out",
        str(tmp_path / "r"),
        "--preset",
        "slim_48d_2e_2p",
        "--steps",
        "1",
    )
    assert_one_line_error(result, "frames are 64px", "224")
    result = run_cli("train", "--data", str(short_dataset), "--out", str(tmp_path / "r"), "--val-every", "0")
    assert_one_line_error(result, "--val-every", "at least 1")


def test_probe_command_reports_r2(tiny_run, short_dataset):
    before = (tiny_run / "model" / "probe.safetensors").read_bytes()
    result = run_cli(
        "probe", "--model", str(tiny_run / "model"), "--data", str(short_dataset), "--steps", "20", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert "probe R^2 on held-out episodes: agent_x" in result.stdout
    assert (tiny_run / "model" / "probe.safetensors").read_bytes() == before  # --dry-run wrote nothing
    result = run_cli("probe", "--model", str(tiny_run / "nope"), "--data", str(short_dataset))
    assert_one_line_error(result, "no such model folder")
