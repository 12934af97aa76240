"""Episodic memory model folders, and the stateful runtime an env carries one bit memory per episode with.

A folder holds ``config.json`` (``"kind": "episodic"``, the :class:`~world_models.memory.episodic.EpisodicConfig`,
the predictor's context ``history``, the frozen encoder model it works with) and ``model.safetensors``
(``memory.*``: the write, read and readout networks; ``predictor.*``: the conditioned LeWM predictor,
:mod:`world_models.memory.conditioned`). ``world_models.load`` on such a folder returns an
:class:`EpisodicRuntime`: encode and probe go through the encoder model, the predictor runs on the
numba engine (``backend="numba"``, the default) or torch, the memory networks on numba linear
kernels and the memory's reads and writes on numba kernels (:mod:`numba_kernels.records` over a
:mod:`numba_kernels.bitmem` memory). Loading checks the weights through the torch modules.

The runtime holds no episode state (one model serves many envs); an env owns the memories::

    memory = model.new_memory(num_envs)            # one 64K x 32-bit bit memory per env, empty
    extra = model.read(memory, envs, z_prev, z)    # readout channels at frame t (from z_{t-1}, z_t)
    z_next = model.predict_with(z_hist, a_hist, extra_hist)
    model.observe(memory, envs, z, a, z_next)      # one record per step, into the chunk it picks
    memory.reset(envs)                             # a new episode starts empty

Plain ``predict`` / ``rollout`` (what a stateless caller such as a planner gets) read an empty memory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from numba_kernels.linear import GELU, QLinear
from numba_kernels.records import byte_tables, max_pool_records, pool_records
from world_models.config import ModelConfig
from world_models.errors import ArgumentError, LeWorldError
from world_models.files import atomic_write_bytes, read_safetensors
from world_models.interface import WorldModel, check_sequence
from world_models.lewm.folder import atomic_save_tensors, load_state_checked
from world_models.lewm.model import Predictor
from world_models.locate import folder_kind
from world_models.memory.episodic import (
    CHUNK_RECORDS,
    CHUNK_WORDS,
    RECORD_BITS,
    BitMemory,
    EpisodicConfig,
    EpisodicMemory,
    chunk_logits,
)

KIND = "episodic"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
BACKENDS = ("numba", "torch")
MEMORY_LINEARS = ("write.0", "record_head", "chunk_head", "read_chunk", "readout")  # and the pooling's:
POOLING_LINEARS = {"attention": ("read_query",), "max": ()}


def is_episodic_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder whose config.json says ``"kind": "episodic"``."""
    return Path(path).is_dir() and folder_kind(path) == KIND


def save_episodic(
    folder: str | Path,
    memory: EpisodicMemory,
    predictor: Predictor,
    encoder_model: str,
    info: dict[str, Any] | None = None,
) -> None:
    """Write an episodic memory model folder (each file atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = str(Path(encoder_model).resolve()) if Path(encoder_model).is_dir() else str(encoder_model)
    tensors = {f"memory.{k}": v for k, v in memory.state_dict().items()}
    tensors |= {f"predictor.{k}": v for k, v in predictor.state_dict().items()}
    config = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "memory": dataclasses.asdict(memory.cfg),
        "history": predictor.pos_embed.shape[1],
        "encoder_model": encoder,
        "info": info or {},
    }
    atomic_save_tensors(tensors, folder / MODEL_FILE, metadata={"format": "leworld-episodic"})
    atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode())


def read_episodic_config(folder: Path) -> tuple[dict[str, Any], EpisodicConfig, int]:
    """config.json of an episodic folder, checked: (the whole of it, the memory's config, the context)."""
    if not is_episodic_folder(folder):
        raise LeWorldError(f'{folder}: not an episodic memory model folder (config.json with "kind": "episodic")')
    config = json.loads((folder / "config.json").read_text())
    source = folder / "config.json"
    if config.get("format_version") != FORMAT_VERSION:
        raise LeWorldError(f"{source}: format_version {config.get('format_version')} is not {FORMAT_VERSION}")
    fields = {f.name for f in dataclasses.fields(EpisodicConfig)}
    given = config.get("memory")
    if not isinstance(given, dict) or set(given) - fields:
        raise LeWorldError(f"{source}: 'memory' must be an object with fields among {', '.join(sorted(fields))}")
    history = config.get("history")
    if not isinstance(history, int) or history < 1:
        raise LeWorldError(f"{source}: 'history' must be a positive integer, got {history!r}")
    if not isinstance(config.get("encoder_model"), str):
        raise LeWorldError(f"{source}: no 'encoder_model' (the LeWM model whose latents it uses)")
    try:
        memory_cfg = EpisodicConfig(**given)
    except (TypeError, ValueError) as error:
        raise LeWorldError(f"{source}: 'memory': {error}") from None
    return config, memory_cfg, history


class EpisodicRuntime(WorldModel):
    """The runtime interface over an episodic memory model folder, with the calls a stateful env makes.

    ``config`` is the encoder model's with ``history`` set to the predictor's context; ``action_dim``
    stays the env's 2 (the readout channels are the runtime's business).

    Args:
        folder: the model folder.
        encoder: the frozen encoder model it works with (config.json's ``encoder_model``), on its backend.
        backend: ``numba`` (the predictor on the numba engine; it needs an encoder model folder) or
            ``torch``.
    """

    stateful = True

    def __init__(self, folder: str | Path, encoder: WorldModel, backend: str = "numba") -> None:
        if backend not in BACKENDS:
            raise LeWorldError(f"{folder}: an episodic memory model runs on {' or '.join(BACKENDS)}, not {backend!r}")
        self.path = Path(folder)
        self.backend = backend
        self.meta, self.memory_cfg, history = read_episodic_config(self.path)
        self.encoder = encoder
        base = encoder.config
        if base.latent_dim != self.memory_cfg.latent_dim:
            raise LeWorldError(
                f"{self.path}: latent_dim {self.memory_cfg.latent_dim} does not match encoder model "
                f"{self.meta['encoder_model']!r} ({base.latent_dim})"
            )
        self.config = ModelConfig.from_dict(
            {**base.to_dict(), "history": history, "extra": {**base.extra, "kind": KIND, "model": str(self.path)}}
        )
        self.has_probe = encoder.has_probe
        self.channels = self.memory_cfg.channels
        tensors = read_safetensors(self.path / MODEL_FILE, "pt")
        memory = EpisodicMemory(self.memory_cfg)
        load_state_checked(memory, _strip(tensors, "memory."), self.path / MODEL_FILE)
        state = {k: v.numpy() for k, v in memory.state_dict().items()}
        linears = (*MEMORY_LINEARS, *POOLING_LINEARS[self.memory_cfg.pooling])
        self.nets = {n: QLinear.from_float(state[f"{n}.weight"], state[f"{n}.bias"], "f32") for n in linears}
        if self.memory_cfg.pooling == "max":
            self.pool_tables = byte_tables(state["pool_proj.weight"])  # [16, 256, pool_dim]
            self.pool_bias = np.ascontiguousarray(state["pool_proj.bias"], np.float32)
        else:
            self.attention_scale = 1.0 / self.memory_cfg.attention_dim**0.5
            self.key_weight = np.ascontiguousarray(state["key.weight"], np.float32)  # [attention_dim, 128]
        predictor_cfg = dataclasses.replace(base, history=history, action_dim=2 + self.channels)
        predictor_state = _strip(tensors, "predictor.")
        if backend == "torch":
            self.predictor = Predictor(predictor_cfg)
            load_state_checked(self.predictor, predictor_state, self.path / MODEL_FILE)
            self.predictor.eval()
            self.engine = None
        else:
            self.engine = _numba_predictor(encoder, predictor_cfg, predictor_state, self.path)
        self._empty_readout = self.nets["readout"](np.zeros((1, self.memory_cfg.pooled_width), np.float32))[0]

    # ------------------------------------------------------------------ the memory an env owns
    def new_memory(self, num_envs: int) -> BitMemory:
        """``num_envs`` empty bit memories (65,536 words each)."""
        return BitMemory(num_envs)

    def empty_readout(self, count: int) -> np.ndarray:
        """The readout of an empty memory, float32 [count, C] (what a fresh episode's history holds)."""
        return np.repeat(self._empty_readout[None], count, axis=0)

    def observe(self, memory: BitMemory, envs: Any, z: Any, a: Any, z_next: Any) -> None:
        """Write the transition z -> z_next under a (each [len(envs), .]) into the memories of ``envs``."""
        envs = np.asarray(envs, np.int64)
        z, a, z_next = self._rows("z", z), self._rows("a", a, 2), self._rows("z_next", z_next)
        h = self.nets["write.0"](np.concatenate([z, a, z_next - z], axis=1), GELU)
        record = np.concatenate([np.where(self.nets["record_head"](h) >= 0, 1.0, -1.0), np.ones((len(z), 1))], 1)
        chunks = np.zeros(memory.words.shape[0], np.int64)
        records = np.zeros((memory.words.shape[0], RECORD_BITS), np.float32)
        mask = np.zeros(memory.words.shape[0], bool)
        chunks[envs], records[envs], mask[envs] = chunk_logits(self.nets["chunk_head"](h)).argmax(1), record, True
        memory.write(chunks, records, mask)

    def read(self, memory: BitMemory, envs: Any, z_prev: Any, z: Any) -> np.ndarray:
        """The readout channels (float32 [len(envs), C]) of ``envs`` at frame t, from z_{t-1} and z_t."""
        envs = np.asarray(envs, np.int64)
        z, z_prev = self._rows("z", z), self._rows("z_prev", z_prev)
        x = np.concatenate([z, z - z_prev], axis=1)
        chunks = chunk_logits(self.nets["read_chunk"](x)).argmax(1)  # the high byte of the address
        if self.memory_cfg.pooling == "max":
            pooled = max_pool_records(
                memory.words, envs, chunks * CHUNK_WORDS, CHUNK_RECORDS, self.pool_tables, self.pool_bias
            )
            return self.nets["readout"](pooled)
        # query . key(r) = (W_key^T query) . r + query . b_key; the second term is the same for every
        # record of a read, so the softmax drops it: one [128] vector per read instead of a key per record
        query = self.nets["read_query"](x) @ self.key_weight * self.attention_scale
        pooled = pool_records(memory.words, envs, chunks * CHUNK_WORDS, CHUNK_RECORDS, query)
        return self.nets["readout"](pooled)

    def predict_with(self, z_hist: Any, a_hist: Any, extra_hist: Any) -> np.ndarray:
        """``predict`` with each history step's readout channels beside its action: extra_hist [B, T, C]."""
        z, a = self._history(z_hist, a_hist)
        extra = check_sequence("extra_hist", extra_hist, self.channels)
        if extra.shape[:2] != np.shape(a_hist)[:2]:
            shapes = f"extra_hist {list(extra.shape)} and a_hist {list(np.shape(a_hist))}"
            raise ArgumentError(f"{shapes} must agree on [B, T]")
        inputs = np.concatenate([a, extra[:, -z.shape[1] :]], axis=2)
        return self._predict_inputs(z, inputs)

    # ------------------------------------------------------------------ the stateless interface
    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder._encode(pixels)

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self.encoder._probe_targets(z)

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        empty = np.broadcast_to(self._empty_readout, (*a_hist.shape[:2], self.channels))
        return self._predict_inputs(z_hist, np.concatenate([a_hist, empty], axis=2))

    def _predict_inputs(self, z: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(inputs, np.float32)
        if self.engine is not None:
            return self.engine.predict(z, inputs)
        with torch.no_grad():
            return self.predictor(torch.from_numpy(z), torch.from_numpy(inputs))[:, -1].numpy()

    def _rows(self, name: str, x: Any, width: int | None = None) -> np.ndarray:
        width = self.memory_cfg.latent_dim if width is None else width
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != width:
            raise ArgumentError(f"{name} must have shape [B, {width}], got {list(x.shape)}")
        return np.ascontiguousarray(x)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _numba_predictor(encoder: WorldModel, cfg: ModelConfig, state: dict[str, torch.Tensor], source: Path):
    """A numba LeWM engine with the encoder model's encoder and probe and this folder's predictor."""
    from world_models.backends.numba_engine import NumbaLeWM, build_layers, float_weights

    folder = getattr(encoder, "path", None)
    if folder is None or not Path(folder).is_dir():
        raise LeWorldError(f"{source}: the numba backend needs the encoder model as a folder, got {folder!r}")
    _, weights, probe_hidden = float_weights(Path(folder))
    weights = {k: v for k, v in weights.items() if not k.startswith("predictor.")}
    weights |= {f"predictor.{k}": v.numpy() for k, v in state.items()}
    linears, others = build_layers(cfg, weights, probe_hidden, {}, str(source))
    return NumbaLeWM(cfg, linears, others, str(source))
