"""What the two trainers share (``world_models.lewm.train`` and ``world_models.memory.train``).

The learning-rate schedule, the optimizer step, the run folder's checkpoint
(written atomically, read with ``weights_only=True``), the guard that keeps a
new run from overwriting an old one and a resumed run from starting afresh,
the parameter counts a run logs first, and range-checked config fields.
Neither trainer imports the other; both import this.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_models.errors import ArgumentError, LeWorldError
from world_models.files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


# ------------------------------------------------------------------ schedule and step
def warmup_cosine(step: int, total: int, warmup: int, lr: float, floor: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine down to ``floor * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


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
    (a numpy bit generator's state), so that :func:`restore_rng` continues both where they were."""
    buffer = io.BytesIO()
    torch.save(
        {**payload, "torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(numpy_rng_state)},
        buffer,
    )
    atomic_write_bytes(Path(out) / CHECKPOINT, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`write_checkpoint`, read with ``weights_only=True``.

    Raises:
        LeWorldError: the file is not a readable checkpoint.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torch file can fail in many ways; all mean "unusable checkpoint"
        raise LeWorldError(f"{path}: unreadable checkpoint ({err})") from None


def restore_rng(state: dict[str, Any], rng: np.random.Generator) -> None:
    """Set torch's RNG and ``rng`` to the states a checkpoint holds."""
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])


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
        if minimum is not None and not all(item >= minimum for item in items):
            raise ArgumentError(f"{f.name} must be at least {minimum}, got {value!r}")
        if above is not None and not all(item > above for item in items):
            raise ArgumentError(f"{f.name} must be above {above}, got {value!r}")
