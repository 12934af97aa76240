"""``leworld train`` fails safely: a divergence stops the run (nothing non-finite is written, the last good
checkpoint stays), bad ``--lr`` and ``--out`` values are refused before any work, SIGTERM saves a checkpoint
as Ctrl-C does, a broken checkpoint names the file and what is wrong, and a failed run leaves no empty folder."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import signal_when
from tests.test_leworld_memory import synthetic_latents
from world_models.errors import LeWorldError
from world_models.lewm import train as train_module
from world_models.lewm.train import TrainConfig, train
from world_models.memory import train as memory_module
from world_models.memory.train import MemoryTrainConfig, train_leworld
from world_models.outputs import MARKER
from world_models.signals import Terminated, sigterm_as_ctrl_c, uninterrupted
from world_models.training import Diverged

torch.set_num_threads(1)


def tiny(data: Path, out: Path, **overrides) -> TrainConfig:
    """A LeWM run of a few steps on the short dataset (no validation, a short probe)."""
    settings = dict(
        batch_size=4, steps=6, val_every=1000, checkpoint_every=1000, probe_steps=5, warmup=1, recalibration_batches=1
    )
    return TrainConfig(data=str(data), out=str(out), **{**settings, **overrides})


def tiny_memory(out: Path, **overrides) -> MemoryTrainConfig:
    settings = dict(batch_size=8, horizon=3, phase_steps=(4, 4, 4), checkpoint_every=1000)
    return MemoryTrainConfig(data="", out=str(out), **{**settings, **overrides})


def all_finite(tree) -> bool:
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(all_finite(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return all(all_finite(v) for v in tree)
    return True


def cli(capsys, *args: str) -> tuple[int, str]:
    """``leworld ARGS`` in this process: (exit code, stderr). A usage error exits through SystemExit."""
    from leworld_env.cli.main import main

    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------ divergence
def test_a_huge_learning_rate_stops_the_run_and_leaves_nothing(short_dataset, tmp_path):
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Diverged, match=r"training diverged at step \d+: loss is (nan|inf).*lower --lr") as err:
        train(tiny(short_dataset, out, lr=1e30), progress=False)
    assert "no checkpoint was written" in str(err.value)
    assert not out.exists()  # no model, no checkpoint with NaN weights, and no empty run folder left behind
    assert signal.getsignal(signal.SIGTERM) == before  # the SIGTERM handler is the caller's again


def test_a_divergence_keeps_the_last_good_checkpoint(short_dataset, tmp_path, monkeypatch):
    real_step = train_module.train_step
    calls = {"n": 0}

    def nan_at_step_5(*args, **kwargs):
        calls["n"] += 1
        out = real_step(*args, **kwargs)
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(train_module, "train_step", nan_at_step_5)
    out = tmp_path / "run"
    with pytest.raises(Diverged) as err:
        train(tiny(short_dataset, out, checkpoint_every=2), progress=False)
    message = str(err.value)
    assert "training diverged at step 5: loss is nan" in message
    assert f"the last good checkpoint {out / 'checkpoint.pt'} (step 4) is kept" in message and "--resume" in message
    assert not (out / "model").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and all_finite(state["model"]) and all_finite(state["optimizer"])


def test_non_finite_weights_are_never_checkpointed(short_dataset, tmp_path, monkeypatch):
    real_step = train_module.train_step

    def poison_after_step(module, *args, **kwargs):  # finite loss and gradients, but the weights go bad
        out = real_step(module, *args, **kwargs)
        with torch.no_grad():
            next(module.parameters()).grad.zero_()
            next(module.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(train_module, "train_step", poison_after_step)
    out = tmp_path / "run"
    with pytest.raises(Diverged, match="non-finite weights"):
        train(tiny(short_dataset, out, steps=2, checkpoint_every=1), progress=False)
    assert not (out / "checkpoint.pt").exists() and not (out / "model").exists()


def test_the_memory_trainer_stops_on_a_divergence(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"training diverged at phase 1, step \d+: .*(nan|inf).*lower --lr"):
        train_leworld(tiny_memory(out, lr=1e30), latents=synthetic_latents(), progress=False)
    assert not out.exists()


def test_the_memory_trainer_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    real = memory_module.phase_step
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        calls["n"] += 1
        losses = real(*args, **kwargs)
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(memory_module, "phase_step", nan_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"phase 1, step 3: loss is nan.*\(phase 1, step 2\) is kept"):
        train_leworld(tiny_memory(out, checkpoint_every=2), latents=synthetic_latents(), progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["phase"], state["step"]) == (1, 2) and all_finite(state["model"])
    assert not (out / "model").exists()


# ------------------------------------------------------------------ the parser
@pytest.mark.parametrize(
    ("value", "expected"), [("nan", "finite"), ("inf", "finite"), ("-1", "above 0"), ("0", "above 0"), ("x", "number")]
)
def test_the_parser_refuses_a_bad_learning_rate(capsys, tmp_path, value, expected):
    code, err = cli(capsys, "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--lr", value)
    assert code == 2
    assert_one_line(err, "argument --lr", expected)
    assert not (tmp_path / "r").exists()


def test_the_parser_refuses_a_bad_pose_weight(capsys, tmp_path):
    code, err = cli(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--pose-weight", "nan")
    assert code == 2
    assert_one_line(err, "argument --pose-weight", "finite")


def test_configs_refuse_a_non_finite_learning_rate(tmp_path):
    with pytest.raises(LeWorldError, match="lr must be a finite number"):
        TrainConfig(data="", out="", lr=math.inf)
    with pytest.raises(LeWorldError, match="lr must be a finite number"):
        MemoryTrainConfig(data="", out="", lr=math.inf)


# ------------------------------------------------------------------ --out, before any work
def test_out_that_is_a_file_is_refused_before_the_data_is_read(capsys, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    missing = str(tmp_path / "no-such-dataset")  # were the data read first, the error would name it
    for world_model in ("lewm", "leworld"):
        started = time.monotonic()
        code, err = cli(capsys, "train", "--world-model", world_model, "--data", missing, "--out", str(file))
        assert code == 2 and time.monotonic() - started < 5
        assert_one_line(err, f"--out {file}", "not a folder")
        code, err = cli(capsys, "train", "--world-model", world_model, "--data", missing, "--out", str(file / "sub"))
        assert code == 2
        assert_one_line(err, "--out", "is a file, not a folder")
    assert file.read_text() == "mine"


def test_an_empty_out_is_refused(capsys, tmp_path):
    code, err = cli(capsys, "train", "--data", str(tmp_path / "none"), "--out", "")
    assert code == 2
    assert_one_line(err, "--out", "empty path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, err = cli(capsys, "train", "--data", str(tmp_path / "none"), "--out", str(folder))
    finally:
        folder.chmod(0o700)
    assert code == 2
    assert_one_line(err, f"--out {folder}", "not writable")


def test_a_folder_of_other_files_is_refused(capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    code, err = cli(capsys, "train", "--data", str(tmp_path / "none"), "--out", str(folder))
    assert code == 2
    assert_one_line(err, f"--out {folder}", "not a LeWorld training run")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_failed_run_leaves_no_empty_folder(capsys, tmp_path):
    for world_model in ("lewm", "leworld"):
        out = tmp_path / f"run-{world_model}" / "deeper"
        code, err = cli(
            capsys, "train", "--world-model", world_model, "--data", str(tmp_path / "none"), "--out", str(out)
        )
        assert code == 2, err
        assert_one_line(err, "no such dataset")
        assert not out.exists()


def interrupted_run(data: Path, out: Path, monkeypatch, at_step: int = 3) -> dict:
    """A LeWM run stopped by Ctrl-C in step ``at_step``; its checkpoint (``at_step - 1`` steps)."""
    real_step, calls = train_module.train_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(tiny(data, out), progress=False)
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_a_run_folder_carries_the_train_run_marker(short_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert interrupted_run(short_dataset, out, monkeypatch)["step"] == 2
    assert json.loads((out / MARKER).read_text()) == {"written_by": "leworld", "kind": "train-run"}
    with pytest.raises(LeWorldError, match="already holds a training run"):
        train(tiny(short_dataset, out), progress=False)


# ------------------------------------------------------------------ checkpoints that cannot be resumed
def run_with_checkpoint(tmp_path: Path, content) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    path = out / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return out


@pytest.mark.parametrize("trainer", ["lewm", "leworld"])
def test_an_empty_checkpoint_says_so(short_dataset, tmp_path, trainer):
    out = run_with_checkpoint(tmp_path, b"")
    with pytest.raises(LeWorldError, match=r"checkpoint\.pt: unreadable checkpoint: empty file \(0 bytes\)") as err:
        resume(trainer, short_dataset, out)
    assert str(out / "checkpoint.pt") in str(err.value)
    assert (out / "checkpoint.pt").exists()  # nothing of the user's is deleted


@pytest.mark.parametrize("trainer", ["lewm", "leworld"])
def test_a_file_that_is_not_a_checkpoint_says_so(short_dataset, tmp_path, trainer):
    out = run_with_checkpoint(tmp_path, b"not a torch file at all")
    with pytest.raises(LeWorldError, match=r"checkpoint\.pt: not a torch checkpoint \(23 bytes"):
        resume(trainer, short_dataset, out)


@pytest.mark.parametrize("trainer", ["lewm", "leworld"])
def test_a_checkpoint_without_its_keys_names_them(short_dataset, tmp_path, trainer):
    out = run_with_checkpoint(tmp_path, {"model": {}, "step": 3})
    with pytest.raises(
        LeWorldError, match=r"checkpoint\.pt: not a checkpoint of this trainer: missing .*'optimizer'"
    ) as err:
        resume(trainer, short_dataset, out)
    assert "'step'" not in str(err.value).split("(it has")[0]  # what is there is not called missing


def test_a_checkpoint_key_of_the_wrong_type_is_named(short_dataset, tmp_path):
    state = {"model": {}, "optimizer": {}, "step": "3", "config": "{}", "torch_rng": torch.get_rng_state()}
    out = run_with_checkpoint(tmp_path, {**state, "numpy_rng": "{}"})
    with pytest.raises(LeWorldError, match=r"checkpoint\.pt: 'step' is a str, expected int"):
        resume("lewm", short_dataset, out)


def test_a_checkpoint_with_nan_weights_is_refused(short_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"  # a checkpoint as the trainer wrote it before it checked for divergence
    state = interrupted_run(short_dataset, out, monkeypatch)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(LeWorldError, match=f"non-finite weights \\(model.{name}"):
        train(tiny(short_dataset, out, steps=4), resume=True, progress=False)


def resume(trainer: str, data: Path, out: Path) -> None:
    if trainer == "lewm":
        train(tiny(data, out), resume=True, progress=False)
    else:
        train_leworld(tiny_memory(out), latents=synthetic_latents(), resume=True, progress=False)


# ------------------------------------------------------------------ SIGTERM, handled as Ctrl-C
def test_sigterm_saves_a_checkpoint_that_resumes(short_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "leworld_env.cli", "train", "--data", str(short_dataset), "--out", str(out)]
    command += ["--steps", "100000", "--batch-size", "4", "--checkpoint-every", "2", "--val-every", "100000", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # the first checkpoint: training is under way
    stdout, stderr = signal_when(proc, (out / "checkpoint.pt").exists, signal.SIGTERM, "a checkpoint", 120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved, continue with --resume" in stdout
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 2
    # --resume goes on from that step: one more step, then Ctrl-C saves step + 1
    assert interrupted_resume(short_dataset, out, monkeypatch)["step"] == step + 1


def interrupted_resume(data: Path, out: Path, monkeypatch) -> dict:
    real_step, calls = train_module.train_step, {"n": 0}

    def one_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", one_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(data, out, steps=100000, warmup=300), resume=True, progress=False)
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_sigterm_in_the_memory_trainer_saves_a_checkpoint(tmp_path, monkeypatch):
    real = memory_module.phase_step
    calls = {"n": 0}

    def terminated_in_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "no SIGTERM handler"
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(memory_module, "phase_step", terminated_in_step_3)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train_leworld(tiny_memory(out), latents=synthetic_latents(), progress=False)
    assert signal.getsignal(signal.SIGTERM) == before
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["phase"], state["step"]) == (1, 2)


def test_a_signal_inside_an_uninterrupted_block_waits_for_its_end():
    done = []
    with pytest.raises(Terminated), sigterm_as_ctrl_c():
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs in here, and must not raise yet
                done.append(1)
        done.append("after")  # never reached: the signal raises as the block ends
    assert len(done) == 1000


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_whose_exception_a_callback_swallowed_raises_at_the_next_check():
    """A handler that runs inside ``__del__`` (or a ctypes callback: numba's compiler) raises into a frame
    whose exceptions Python ignores; the loops' ``check_interrupt`` raises the signal again."""
    from world_models.signals import check_interrupt

    class SignalsWhileDeleted:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs in here; its Terminated is printed and dropped
                pass

    went_on = []
    with pytest.raises(Terminated), sigterm_as_ctrl_c():
        SignalsWhileDeleted()
        went_on.append(True)  # the lost exception did not stop this line
        check_interrupt()
        went_on.append("after the check")  # never reached
    assert went_on == [True]
    check_interrupt()  # outside the block nothing is pending: no raise


def interrupt_memory_run(out: Path, monkeypatch, at_call: int, resume: bool = False) -> dict:
    """A memory-model run stopped by Ctrl-C in its ``at_call``-th step (after the step drew its windows)."""
    real, calls = memory_module.phase_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(memory_module, "phase_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_leworld(tiny_memory(out, phase_steps=(8, 2, 2)), synthetic_latents(), resume=resume, progress=False)
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_the_memory_trainer_resumes_exactly_after_an_interrupted_step(tmp_path, monkeypatch):
    straight = interrupt_memory_run(tmp_path / "straight", monkeypatch, at_call=5)  # 4 steps done
    assert interrupt_memory_run(tmp_path / "resumed", monkeypatch, at_call=3)["step"] == 2
    resumed = interrupt_memory_run(tmp_path / "resumed", monkeypatch, at_call=3, resume=True)  # steps 3 and 4
    assert straight["step"] == resumed["step"] == 4
    assert straight["numpy_rng"] == resumed["numpy_rng"]  # the interrupted step's draw was not kept
    for name, value in straight["model"].items():
        torch.testing.assert_close(value, resumed["model"][name], rtol=1e-5, atol=1e-5)
