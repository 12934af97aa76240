"""``leworld bench memory``: the numba bit-memory kernels (:mod:`numba_kernels.bitmem`) against plain numpy.

Every kernel is timed next to a straightforward numpy reference in the same run (``np.packbits`` /
``np.unpackbits`` with ``bitorder="little"``, fancy-index gathers and scatters), over batches of 1, 64
and 256 envs of 65,536 words each; a row's ratio is numba's rate over numpy's. A memory-copy row gives
the scale. Before timing, each reference is checked to give the kernel's exact result.

The stateful rows time the 256-env dream (``LeWorld-PushT-v0`` as a vector env) over an episodic memory
model (``--model``, or an untrained one of the shipped encoder's sizes: the cost does not depend on the
weights) with its memories (a read and a write per env per model step) against the same env and
predictor with the memory taken out (every step reads the empty memory's readout).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from leworld_env.cli.bench.common import BenchRow, memcpy_gbps, rate

ENV_COUNTS = (1, 64, 256)
PACK_WORDS = 4096  # words per env packed and unpacked (128 Kibit)
RANGE_BITS = 4096  # bits per env per range read or write, at unaligned bit addresses
RANGE_WORDS = 128  # words per env per range read or write


# ---------------------------------------------------------------- numpy references
def numpy_pack(bits: np.ndarray) -> np.ndarray:
    """uint8 0/1 bits [E, 32 k] -> uint32 words [E, k], least significant bit first."""
    return np.packbits(bits, axis=-1, bitorder="little").view("<u4")


def numpy_unpack(words: np.ndarray) -> np.ndarray:
    """uint32 words [E, k] -> uint8 bits [E, 32 k], least significant bit first."""
    return np.unpackbits(words.astype("<u4", copy=False).view(np.uint8), axis=-1, bitorder="little")


def numpy_read_bits(memory: np.ndarray, bit_address: np.ndarray, nbits: int) -> np.ndarray:
    """Bits [bit_address[e], bit_address[e] + nbits) of every env, by fancy indexing."""
    index = bit_address[:, None] + np.arange(nbits)
    rows = np.arange(memory.shape[0])[:, None]
    return ((memory[rows, index >> 5] >> (index & 31).astype(np.uint32)) & 1).astype(np.uint8)


def numpy_write_bits(memory: np.ndarray, bit_address: np.ndarray, bits: np.ndarray) -> None:
    """Write bits[e] at bit_address[e]: gather the covering words, unpack, set, pack, scatter back."""
    nbits = bits.shape[1]
    rows = np.arange(memory.shape[0])[:, None]
    columns = (bit_address >> 5)[:, None] + np.arange((nbits + 31) // 32 + 1)
    unpacked = numpy_unpack(memory[rows, columns])
    unpacked[rows, (bit_address & 31)[:, None] + np.arange(nbits)] = bits
    memory[rows, columns] = numpy_pack(unpacked)


def numpy_read_words(memory: np.ndarray, start: np.ndarray, length: int) -> np.ndarray:
    return memory[np.arange(memory.shape[0])[:, None], start[:, None] + np.arange(length)]


def numpy_write_words(memory: np.ndarray, start: np.ndarray, values: np.ndarray) -> None:
    memory[np.arange(memory.shape[0])[:, None], start[:, None] + np.arange(values.shape[1])] = values


# ---------------------------------------------------------------- rows
def _pair(
    name: str, ours: Callable[[], object], reference: Callable[[], object], units: float, unit: str, min_s: float
) -> list[BenchRow]:
    """Two rows: numpy's rate and numba's, ``units`` of work per call, numba's as a ratio to numpy's."""
    ref_rate = rate(reference, 1, min_s) * units
    our_rate = rate(ours, 1, min_s) * units
    return [
        BenchRow(f"{name}, numpy", ref_rate, unit),
        BenchRow(f"{name}, numba", our_rate, unit, "numpy", our_rate / ref_rate),
    ]


def _check(name: str, ours: np.ndarray, reference: np.ndarray) -> None:
    if not np.array_equal(ours, reference):
        raise RuntimeError(f"bench memory: the numpy reference of {name} disagrees with the kernel")


def _rows_for(num_envs: int, rng: np.random.Generator, min_s: float) -> list[BenchRow]:
    from numba_kernels import bitmem

    memory = rng.integers(0, 2**32, size=(num_envs, bitmem.WORDS), dtype=np.uint32)
    rows: list[BenchRow] = []
    tag = f"{num_envs} env{'s' if num_envs > 1 else ''}"

    bits = rng.integers(0, 2, size=(num_envs, PACK_WORDS * 32), dtype=np.uint8)
    words = memory[:, :PACK_WORDS]
    _check("pack", bitmem.pack_bits(bits), numpy_pack(bits))
    _check("unpack", bitmem.unpack_bits(words), numpy_unpack(words))
    mbits = bits.size / 1e6
    rows += _pair(f"pack {PACK_WORDS * 32} bits/env, {tag}", lambda: bitmem.pack_bits(bits),
                  lambda: numpy_pack(bits), mbits, "Mbit/s", min_s)  # fmt: skip
    rows += _pair(f"unpack {PACK_WORDS} words/env, {tag}", lambda: bitmem.unpack_bits(words),
                  lambda: numpy_unpack(words), mbits, "Mbit/s", min_s)  # fmt: skip

    address = rng.integers(0, bitmem.MEMORY_BITS - RANGE_BITS - 64, size=num_envs)
    new_bits = rng.integers(0, 2, size=(num_envs, RANGE_BITS), dtype=np.uint8)
    _check("read_bits", bitmem.read_bits(memory, address, RANGE_BITS), numpy_read_bits(memory, address, RANGE_BITS))
    ours, theirs = memory.copy(), memory.copy()
    bitmem.write_bits(ours, address, new_bits)
    numpy_write_bits(theirs, address, new_bits)
    _check("write_bits", ours, theirs)
    mbits = num_envs * RANGE_BITS / 1e6
    rows += _pair(f"read {RANGE_BITS} bits/env at bit addresses, {tag}",
                  lambda: bitmem.read_bits(memory, address, RANGE_BITS),
                  lambda: numpy_read_bits(memory, address, RANGE_BITS), mbits, "Mbit/s", min_s)  # fmt: skip
    rows += _pair(f"write {RANGE_BITS} bits/env at bit addresses, {tag}",
                  lambda: bitmem.write_bits(ours, address, new_bits),
                  lambda: numpy_write_bits(theirs, address, new_bits), mbits, "Mbit/s", min_s)  # fmt: skip

    start = rng.integers(0, bitmem.WORDS - RANGE_WORDS + 1, size=num_envs)
    values = rng.integers(0, 2**32, size=(num_envs, RANGE_WORDS), dtype=np.uint32)
    _check("read_words", bitmem.read_words(memory, start, RANGE_WORDS), numpy_read_words(memory, start, RANGE_WORDS))
    mbytes = num_envs * RANGE_WORDS * 4 / 1e6
    rows += _pair(f"read {RANGE_WORDS} words/env, {tag}", lambda: bitmem.read_words(memory, start, RANGE_WORDS),
                  lambda: numpy_read_words(memory, start, RANGE_WORDS), mbytes, "MB/s", min_s)  # fmt: skip
    rows += _pair(f"write {RANGE_WORDS} words/env, {tag}", lambda: bitmem.write_words(ours, start, values),
                  lambda: numpy_write_words(theirs, start, values), mbytes, "MB/s", min_s)  # fmt: skip
    return rows


def untrained_episodic_model(folder: Path, encoder: str = "pusht-tiny") -> Path:
    """An episodic memory model over ``encoder`` with fresh weights (for timing only), written to ``folder``."""
    import world_models
    from world_models.memory.conditioned import conditioned_predictor
    from world_models.memory.episodic import EpisodicConfig, EpisodicMemory
    from world_models.memory.episodic_runtime import save_episodic

    base = world_models.load(encoder, backend="numba").config
    memory = EpisodicMemory(EpisodicConfig(latent_dim=base.latent_dim))
    save_episodic(folder, memory, conditioned_predictor(base, 3, memory.cfg.channels, seed=0), encoder)
    return folder


def stateful_dream_rows(model: str | Path | None, num_envs: int, min_s: float) -> list[BenchRow]:
    """The dream's env steps/s over an episodic model with its per-env memories, and with them taken out."""
    import tempfile

    from leworld_env.envs.vector import LeWorldPushTVectorEnv
    from world_models.locate import folder_kind

    with tempfile.TemporaryDirectory() as scratch:
        if model is None or folder_kind(model) != "episodic":
            model = untrained_episodic_model(Path(scratch) / "episodic")
        batch = np.random.default_rng(0).uniform(-1, 1, (num_envs, 2)).astype(np.float32)
        rates = {}
        for name in ("without", "with"):
            venv = LeWorldPushTVectorEnv(num_envs=num_envs, model=str(model), max_episode_steps=10_000)
            if name == "without":
                venv.batch.memory = None  # the same predictor, reading the empty memory's readout
            venv.reset(seed=0)
            rates[name] = rate(lambda venv=venv: venv.step(batch), 2, min_s) * num_envs
    label, ratio = f"dream vector env, {num_envs} envs, episodic model", rates["with"] / rates["without"]
    return [
        BenchRow(f"{label}, memory taken out", rates["without"], "steps/s"),
        BenchRow(f"{label}, per-env bit memories", rates["with"], "steps/s", "memory taken out", ratio),
    ]


def bench_memory(
    quick: bool = False, env_counts: tuple[int, ...] = ENV_COUNTS, model: str | Path | None = None
) -> list[BenchRow]:
    """Measure and return the rows of ``leworld bench memory``.

    Args:
        quick: 0.05 s timing windows instead of 0.3 s (smoke runs; noisier), and the dream at 16 envs.
        env_counts: batch sizes, each a memory of [E, 65,536] uint32.
        model: an episodic memory model folder for the stateful dream rows (default: an untrained one).
    """
    import numba

    min_s = 0.05 if quick else 0.3
    rng = np.random.default_rng(0)
    rows = [
        BenchRow("numba threads", float(numba.get_num_threads()), "threads"),
        BenchRow("memory copy (numpy, 1 thread, 64 MiB)", memcpy_gbps(), "GB/s"),
    ]
    for num_envs in env_counts:
        rows += _rows_for(num_envs, rng, min_s)
    return rows + stateful_dream_rows(model, 16 if quick else 256, 3 * min_s)


if __name__ == "__main__":  # pragma: no cover
    from leworld_env.cli.bench.common import print_table

    began = time.perf_counter()
    print_table(bench_memory())
    print(f"{time.perf_counter() - began:.1f}s")
