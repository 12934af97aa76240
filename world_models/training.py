"""What the two trainers share (``world_models.lewm.train`` and ``world_models.memory.train``).

The learning-rate schedule, the optimizer step, the run folder's checkpoint
(written atomically, read with ``weights_only=True`` and checked key by key), the
guard that keeps a new run from overwriting an old one and a resumed run from
starting afresh, the run folder's life (checked before any work, marked, removed
again when a run fails before it wrote anything), the divergence check (a
non-finite loss, gradient norm or weight stops the run: nothing non-finite is
ever written), SIGTERM handled as Ctrl-C (a checkpoint, then exit), the
parameter counts a run logs first, and range-checked config fields.
Neither trainer imports the other; both import this.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.errors import ArgumentError, LeWorldError
from world_models.files import atomic_write_bytes
from world_models.outputs import check_output_folder, marker_kind, removed_if_failed, write_marker

CHECKPOINT = "checkpoint.pt"
RUN_KIND = "train-run"
TB_EVENTS = "events.out.tfevents.*"  # what a SummaryWriter writes in OUT/tb


# ------------------------------------------------------------------ schedule and step
def warmup_cosine(step: int, total: int, warmup: int, lr: float, floor: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine down to ``floor * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def cosine_decay(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that takes each group's learning rate from its value down to 0 over ``steps`` steps
    on a half cosine, no warmup (call ``step()`` once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(
    params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_norm: float
) -> torch.Tensor:
    """Clip the gradients of ``params`` to norm ``max_norm``, step ``optimizer``; the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    return grad_norm


# ------------------------------------------------------------------ divergence
class Diverged(LeWorldError):
    """Training met a non-finite loss, gradient norm or weight; nothing non-finite was written."""


def non_finite(tree: Any, prefix: str = "") -> list[str]:
    """The names (``model.encoder.w``, ``optimizer.state.3.exp_avg``) of the floating-point tensors in
    ``tree`` (nested dicts, lists and tuples of tensors) that hold a NaN or an infinity."""
    if isinstance(tree, torch.Tensor):
        bad = tree.is_floating_point() and not bool(torch.isfinite(tree).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(tree, dict):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return []
    return [name for key, value in items for name in non_finite(value, f"{prefix}.{key}" if prefix else str(key))]


def _names(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def divergence(at: str, what: str, lr: float, checkpoint: Path, saved: str | None) -> Diverged:
    """The error of a run that diverged ``at`` (``"step 7"``) because ``what`` (``"loss is nan"``);
    ``saved`` says where the kept checkpoint is (``"step 5"``), None when none was written."""
    if saved is None:
        kept = "no checkpoint was written; start again with a lower --lr"
    else:
        kept = f"the last good checkpoint {checkpoint} ({saved}) is kept; continue it with --resume and a lower --lr"
    return Diverged(f"training diverged at {at}: {what} (--lr {lr:g}); {kept}")


def check_finite(
    loss: torch.Tensor,
    grad_norm: torch.Tensor,
    *,
    at: str,
    lr: float,
    checkpoint: Path,
    saved: str | None,
    agree: Callable[[bool], bool] | None = None,
) -> None:
    """Stop a run whose ``loss`` or gradient norm is not finite (called before the optimizer steps).

    ``agree`` (several processes) turns this process's verdict into every process's (True: all finite),
    so that all of them stop at the same step.

    Raises:
        Diverged: naming the step, the values, ``--lr`` and the checkpoint kept (see :func:`divergence`).
    """
    values = {"loss": float(loss.detach()), "gradient norm": float(grad_norm)}
    bad = [f"{name} is {value}" for name, value in values.items() if not math.isfinite(value)]
    finite = not bad if agree is None else agree(not bad)
    if not finite:
        raise divergence(
            at, ", ".join(bad) or "another process's loss or gradient norm is not finite", lr, checkpoint, saved
        )


def check_finite_weights(state: dict[str, Any], *, at: str, lr: float, checkpoint: Path, saved: str | None) -> None:
    """Stop a run whose weights (``state``, a state dict or a checkpoint's payload) are not all finite,
    before they are written.

    Raises:
        Diverged: naming the first non-finite tensors.
    """
    bad = non_finite(state)
    if bad:
        raise divergence(at, f"non-finite weights ({_names(bad)})", lr, checkpoint, saved)


# ------------------------------------------------------------------ checkpoints
def check_resume(out: Path, resume: bool) -> Path:
    """The checkpoint path of the run in ``out``, after the guard both trainers share.

    Raises:
        LeWorldError: ``out`` already holds a run and ``resume`` is off (nothing is overwritten),
            or ``resume`` is on and there is no checkpoint to continue from.
    """
    path = Path(out) / CHECKPOINT
    if not resume and path.exists():
        raise LeWorldError(f"{out} already holds a training run; pass --resume to continue it or pick another --out")
    if resume and not path.exists():
        raise LeWorldError(f"{path}: no checkpoint to resume from")
    return path


def write_checkpoint(out: Path, payload: dict[str, Any], numpy_rng_state: dict[str, Any]) -> None:
    """Write ``OUT/checkpoint.pt`` atomically: ``payload`` plus torch's RNG state and ``numpy_rng_state``
    (a numpy bit generator's state), so that :func:`restore_rng` continues both where they were.

    Raises:
        Diverged: ``payload`` holds a non-finite tensor (the file on disk is left as it was).
    """
    path = Path(out) / CHECKPOINT
    bad = non_finite(payload)
    if bad:
        raise Diverged(f"training diverged: non-finite weights ({_names(bad)}); refusing to write {path}; lower --lr")
    buffer = io.BytesIO()
    torch.save(
        {**payload, "torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(numpy_rng_state)},
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


# What every checkpoint holds besides a trainer's own fields (write_checkpoint adds them).
RNG_FIELDS: dict[str, type] = {"torch_rng": torch.Tensor, "numpy_rng": str}


def load_checkpoint(path: Path, fields: dict[str, type] | None = None) -> dict[str, Any]:
    """A checkpoint written by :func:`write_checkpoint`, read with ``weights_only=True`` and checked:
    a dict with every key of ``fields`` (and :data:`RNG_FIELDS`) of its type, a ``step`` >= 0, and
    finite weights.

    Raises:
        LeWorldError: naming the file and what is wrong with it (empty, not a torch file, the missing
            keys, a key of the wrong type, non-finite weights).
    """
    path = Path(path)
    state = _read_torch_file(path)
    if not isinstance(state, dict):
        raise LeWorldError(f"{path}: not a LeWorld training checkpoint (a {type(state).__name__}, expected a dict)")
    expected = {**(fields or {}), **RNG_FIELDS}
    missing = [key for key in expected if key not in state]
    if missing:
        raise LeWorldError(
            f"{path}: not a checkpoint of this trainer: missing {', '.join(repr(k) for k in missing)} "
            f"(it has {', '.join(repr(k) for k in state) or 'no keys'})"
        )
    for key, kind in expected.items():
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LeWorldError(f"{path}: {key!r} is a {type(value).__name__}, expected {kind.__name__}")
    if isinstance(state.get("step"), int) and state["step"] < 0:
        raise LeWorldError(f"{path}: 'step' is {state['step']}, expected at least 0")
    bad = non_finite({key: state[key] for key in ("model", "optimizer") if key in state})
    if bad:
        raise LeWorldError(
            f"{path}: non-finite weights ({_names(bad)}): the run had diverged; start a new run with a lower --lr"
        )
    return state


TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # a zip archive (torch.save), a pickle (the legacy format)


def _read_torch_file(path: Path) -> Any:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise LeWorldError(f"{path}: unreadable checkpoint ({err.strerror or err})") from None
    if size == 0:
        raise LeWorldError(f"{path}: unreadable checkpoint: empty file (0 bytes)")
    if not head.startswith(TORCH_FILE_STARTS):
        raise LeWorldError(f"{path}: not a torch checkpoint ({size} bytes that do not start as a torch file does)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torch file can fail in many ways; all mean "unusable checkpoint"
        raise LeWorldError(
            f"{path}: unreadable checkpoint: a damaged or truncated torch file, or one holding more than "
            f"tensors ({size} bytes; {_reason(err)})"
        ) from None


def _reason(err: Exception) -> str:
    """The informative part of an error's message: its first sentence, in one short line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):  # torch's weights-only refusal buries the reason under a long preamble
        if "WeightsUnpickler error:" in line:
            after = line.split("WeightsUnpickler error:", 1)[1].strip()
            lines = [after] if after else lines[i + 1 :]
            break
    if not lines:
        return type(err).__name__
    first = lines[0].split(". ")[0]
    return first if len(first) <= 200 else first[:197] + "..."


def restore(path: Path, key: str, load: Callable[[Any], Any], value: Any) -> Any:
    """``load(value)``, where ``value`` is the checkpoint ``path``'s ``key``; what ``load`` returns.

    Raises:
        LeWorldError: ``value`` does not fit (a state dict of another model, a config that is not JSON).
    """
    try:
        return load(value)
    except LeWorldError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        raise LeWorldError(f"{path}: {key!r} does not fit this run ({_reason(err)})") from None


def restore_rng(state: dict[str, Any], rng: np.random.Generator, path: Path | None = None) -> None:
    """Set torch's RNG and ``rng`` to the states a checkpoint holds.

    Raises:
        LeWorldError: a state that is not an RNG state (naming ``path``).
    """
    where = Path(path) if path is not None else Path(CHECKPOINT)
    restore(where, "torch_rng", torch.set_rng_state, state["torch_rng"])

    def set_numpy(text: str) -> None:
        rng.bit_generator.state = json.loads(text)

    restore(where, "numpy_rng", set_numpy, state["numpy_rng"])


# ------------------------------------------------------------------ the run folder
def check_run_folder(out: str | Path, resume: bool) -> Path:
    """Check ``--out`` before any work; the path of its checkpoint.

    ``out`` must be a folder that can be written (or created), and (:func:`check_resume`) hold no
    run unless ``resume``, and a checkpoint if ``resume``. A new run goes only into a missing or
    empty folder, or one a failed LeWorld run left (its ``train-run`` marker): never into a
    folder of someone else's files.

    Raises:
        LeWorldError: naming ``--out``, the path and what to do instead.
    """
    if str(out) == "":
        raise LeWorldError("--out: an empty path; name a run folder")
    check_output_folder(Path(out), "--out", RUN_KIND, reuse=True)  # a folder, writable, or creatable
    path = check_resume(Path(out), resume)
    folder = Path(out)
    if not resume and folder.is_dir() and any(folder.iterdir()) and marker_kind(folder) != RUN_KIND:
        raise LeWorldError(
            f"--out {out}: exists, is not empty and is not a LeWorld training run (no .leworld.json marker); "
            "pick a new or an empty folder"
        )
    return path


@contextlib.contextmanager
def run_folder(out: str | Path, leader: bool = True) -> Iterator[Path]:
    """The run folder ``out`` (checked by :func:`check_run_folder`) for the block that trains in it.

    The leader (process 0) creates it and marks it as a ``train-run``; if the block fails (an error,
    a divergence, Ctrl-C) before a checkpoint was written in a folder this call created, the
    TensorBoard events it wrote are deleted and the folder removed when nothing else is in it
    (:func:`world_models.outputs.removed_if_failed`): a failed command leaves no empty run behind.
    Anything else (a checkpoint, cached latents, a folder that was there before) stays.
    """
    folder = Path(out)
    if not leader:
        yield folder
        return
    created = not folder.exists()
    with removed_if_failed(folder):
        write_marker(folder, RUN_KIND)
        try:
            yield folder
        except BaseException:
            if created and not (folder / CHECKPOINT).exists():
                _discard_logs(folder)
            raise


def _discard_logs(folder: Path) -> None:
    """Delete the TensorBoard event files of a run that wrote no checkpoint (in a folder it created)."""
    for events in (folder / "tb").glob(TB_EVENTS):
        with contextlib.suppress(OSError):
            events.unlink()


def log_parameter_counts(counts: dict[str, int], writer: Any) -> None:
    """Print the parameter counts and log them to TensorBoard (``params/...`` at step 0)."""
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    for name, value in counts.items():
        writer.add_scalar(f"params/{name}", value, 0)


# ------------------------------------------------------------------ configs
def shared_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields both trainers take from ``leworld train``'s shared options."""
    return {
        "data": str(args.data),
        "out": str(args.out),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "threads": args.threads,
    }


def setting(default: Any, *, minimum: float | None = None, above: float | None = None) -> Any:
    """A dataclass field with ``default`` and the range :func:`check_settings` holds it to:
    at least ``minimum``, or strictly above ``above`` (a tuple's every item)."""
    return dataclasses.field(default=default, metadata={"minimum": minimum, "above": above})


def check_settings(config: Any) -> None:
    """Check every :func:`setting` field of the dataclass ``config`` against its range.

    Raises:
        ArgumentError: naming the first field out of range, its value and the range.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = value if isinstance(value, tuple) else (value,)
        minimum, above = f.metadata.get("minimum"), f.metadata.get("above")
        if (minimum is not None or above is not None) and not all(_finite(item) for item in items):
            raise ArgumentError(f"{f.name} must be a finite number, got {value!r}")
        if minimum is not None and not all(item >= minimum for item in items):
            raise ArgumentError(f"{f.name} must be at least {minimum}, got {value!r}")
        if above is not None and not all(item > above for item in items):
            raise ArgumentError(f"{f.name} must be above {above}, got {value!r}")


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)
