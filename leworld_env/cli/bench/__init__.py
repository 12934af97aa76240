"""``leworld bench``: every benchmark, side by side, whichever package it measures.

One module a target (``data``, ``device``, ``env``, ``kernels``, ``memory``, ``plan``, ``train``);
:mod:`~leworld_env.cli.bench.common` holds the row, the timer and the output they share.
:func:`measure` imports only the target asked for, so ``leworld bench data`` never loads torch.
"""

from __future__ import annotations

import argparse

from leworld_env.cli.bench.common import BenchRow
from world_models.errors import ArgumentError

TARGETS = ("data", "device", "env", "kernels", "memory", "plan", "train")


def measure(target: str, args: argparse.Namespace) -> list[BenchRow]:
    """The rows of one target, with its options from the ``leworld bench`` command line."""
    if target == "data":
        from leworld_env.cli.bench.data import bench_data

        return bench_data(args.dataset, args.image_size, args.batch_size or 256, args.history, args.num_preds)
    if target == "train":
        from leworld_env.cli.bench.train import bench_train

        return bench_train(args.preset, args.batch_size or 128, args.dataset)
    if target == "device":
        from leworld_env.cli.bench.device import bench_device

        return bench_device(args.model, args.quick)
    if target == "memory":
        from leworld_env.cli.bench.memory import bench_memory

        model = args.model if args.model != "pusht-tiny" else None
        return bench_memory(args.quick, model=model)
    if target == "kernels":
        from leworld_env.cli.bench.kernels import bench_kernels

        return bench_kernels(args.model, args.size, args.quick)
    if target == "plan":
        from leworld_env.cli.bench.plan import bench_plan

        return bench_plan(args.model, args.quick)
    if target == "env":
        from leworld_env.cli.bench.env import bench_env

        return bench_env(args.model, args.quick)
    raise ArgumentError(f"unknown bench target {target!r}; choose one of: {', '.join(TARGETS)}")
