"""Quantize a model folder into an ``.lq40`` file, and measure what it costs.

Modes (weights only; activations stay float32; embeddings, norms, BatchNorm and
the probe stay float32; the encoder's format is every encoder linear layer's, the
conv stem's convolutions and ``flat`` included where ``encoder == "cnn"``; the
predictor's boundary layers — ``input``, ``projector.0``, ``projector.3`` — take
Q8_0 wherever it is quantized; a layer whose input width is not a multiple of 32 —
the action encoder's first two, the conv stem's first — takes INT8 where its part
asks for a block format):

=============  ==================  ====================================
mode           encoder             predictor
=============  ==================  ====================================
``full``       INT8 per channel    Q4_0
``q4-pred``    float32             Q4_0
``wanda20-q4`` float32             WANDA 20 % pruned, then Q4_0
``wanda40-q4`` float32             WANDA 40 % pruned, then Q4_0
``ternary``    INT8 per channel    ternary (TWN), one scale per row
=============  ==================  ====================================

WANDA (Sun et al. 2023) scores weight W[i, j] by |W[i, j]| * ||X_j||, the
norm of input feature j over calibration activations, and zeroes the lowest
scores within each output row. The norms come from the float32 model on
calibration clips (torch, forward hooks on the predictor's layers).

The header names the SHA-256 of the ``model.safetensors`` quantized (``source_sha256``), and the
file carries the folder's probe (float32), so a loader can tell when a folder's ``model.lq40`` no
longer matches its weights or its probe (:func:`world_models.backends.lq40.check_folder_copy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from world_models.backends.layout import linear_shapes
from world_models.backends.lq40 import SCALE_SUFFIX, SOURCE_SHA256, Tensor, write_lq40
from world_models.backends.numba_engine import build_layers, float_weights
from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.files import MODEL_FILE, sha256_file

MODES: dict[str, tuple[str, str, float]] = {  # mode -> (encoder format, predictor format, WANDA sparsity)
    "full": ("i8", "q4_0", 0.0),
    "q4-pred": ("f32", "q4_0", 0.0),
    "wanda20-q4": ("f32", "q4_0", 0.2),
    "wanda40-q4": ("f32", "q4_0", 0.4),
    "ternary": ("i8", "t2", 0.0),
}


def check_mode(mode: str) -> tuple[str, str, float]:
    if mode not in MODES:
        raise LeWorldError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(MODES)}")
    return MODES[mode]


# The predictor's boundary layers, into and out of latent space, carry most of its quantization error
# (measured one layer at a time on pusht-tiny: each costs as much cosine as all 15 inner layers together),
# so they keep 8 bits, as llama.cpp keeps its output layer at higher precision.
BOUNDARY_LAYERS = ("predictor.input", "predictor.projector.0", "predictor.projector.3")


def layer_formats(cfg: ModelConfig, mode: str) -> dict[str, str]:
    """Weight format of every linear layer (module prefix -> f32 | i8 | q8_0 | q4_0 | t2) in ``mode``."""
    encoder, predictor, _ = check_mode(mode)
    formats = {}
    for prefix, (_, k) in linear_shapes(cfg).items():
        kind = encoder if prefix.startswith("encoder.") else predictor
        if kind != "f32" and prefix in BOUNDARY_LAYERS:
            kind = "q8_0"
        formats[prefix] = "i8" if kind in ("q4_0", "q8_0") and k % 32 else kind
    return formats


def wanda_prune(weight: np.ndarray, input_norm: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the ``sparsity`` share of each row of ``weight`` [N, K] with the lowest |W| * ||X_j||."""
    if not 0.0 <= sparsity < 1.0:
        raise LeWorldError(f"sparsity must be in [0, 1), got {sparsity}")
    drop = int(weight.shape[1] * sparsity)
    if drop == 0:
        return weight.copy()
    score = np.abs(weight) * np.asarray(input_norm, np.float32)[None, :]
    lowest = np.argsort(score, axis=1, kind="stable")[:, :drop]
    pruned = weight.copy()
    np.put_along_axis(pruned, lowest, 0.0, axis=1)
    return pruned


def activation_norms(folder: Path, pixels: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """||X_j|| of every predictor layer's input features, over clips ``pixels`` [B, L, H, W, 3]
    and ``actions`` [B, L, A] run through the float32 model (every window of ``history`` steps)."""
    import torch

    from world_models.lewm.folder import load_model

    model, _, _ = load_model(folder)
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.predictor.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
            channel_dim = 1 if isinstance(module, torch.nn.Conv1d) else -1

            def hook(mod, args, name=f"predictor.{name}", dim=channel_dim):
                x = args[0].movedim(dim, -1)
                sums[name] = sums.get(name, 0) + (x.reshape(-1, x.shape[-1]) ** 2).sum(0)

            hooks.append(module.register_forward_pre_hook(hook))
    h = model.cfg.history
    try:
        with torch.no_grad():
            for i in range(0, len(pixels), 64):
                z = model.encode(torch.from_numpy(pixels[i : i + 64]))
                a = torch.from_numpy(actions[i : i + 64])
                for start in range(z.shape[1] - h + 1):
                    model.predictor(z[:, start : start + h], a[:, start : start + h])
    finally:
        for handle in hooks:
            handle.remove()
    return {name: s.sqrt().numpy() for name, s in sums.items()}


@dataclass
class QuantizedModel:
    """What :func:`quantize_folder` wrote."""

    path: Path
    mode: str
    nbytes: int
    float_nbytes: int
    formats: dict[str, str]

    @property
    def compression(self) -> float:
        return self.float_nbytes / self.nbytes


def quantize_folder(
    folder: Path, mode: str, out: Path, calibration: tuple[np.ndarray, np.ndarray] | None = None
) -> QuantizedModel:
    """Quantize a model folder to ``out`` (.lq40). WANDA modes need ``calibration`` = (pixels, actions) clips."""
    folder, out = Path(folder), Path(out)
    _, _, sparsity = check_mode(mode)
    cfg, state, probe_hidden = float_weights(folder)
    formats = layer_formats(cfg, mode)
    if sparsity:
        if calibration is None:
            raise LeWorldError(f"mode {mode} needs calibration data (leworld quantize --data DATASET)")
        norms = activation_norms(folder, *calibration)
        state = dict(state)
        for prefix, shape in linear_shapes(cfg).items():
            if prefix.startswith("predictor.") and formats[prefix] == "q4_0":
                weight = state[f"{prefix}.weight"].reshape(shape)
                state[f"{prefix}.weight"] = wanda_prune(weight, norms[prefix], sparsity)
    layers, others = build_layers(cfg, state, probe_hidden, formats, str(folder))
    tensors = []
    for prefix, layer in layers.items():
        if layer.kind == "f32":
            tensors.append(Tensor(f"{prefix}.weight", "f32", (layer.out_features, layer.in_features), layer.weight))
        else:
            tensors.append(Tensor(f"{prefix}.weight", layer.kind, (layer.out_features, layer.in_features), layer.data))
            if layer.kind in ("i8", "t2"):
                tensors.append(Tensor(f"{prefix}.weight{SCALE_SUFFIX}", "f32", (layer.out_features,), layer.scale))
        tensors.append(Tensor(f"{prefix}.bias", "f32", (layer.out_features,), layer.bias))
    tensors += [Tensor(name, "f32", tuple(v.shape), np.asarray(v, np.float32)) for name, v in others.items()]
    header: dict[str, Any] = {
        "model": cfg.to_dict(),
        "quantization": {"mode": mode, "sparsity": sparsity, "wanda": bool(sparsity), "layers": formats},
        "source": folder.name,
        SOURCE_SHA256: sha256_file(folder / MODEL_FILE),  # lets a model folder's loader spot a stale model.lq40
    }
    nbytes = write_lq40(out, header, tensors)
    float_nbytes = sum(4 * int(np.prod(t.shape)) for t in tensors if not t.name.endswith(SCALE_SUFFIX))
    return QuantizedModel(out, mode, nbytes, float_nbytes, formats)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N, D] arrays."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def agreement(reference: Any, candidate: Any, pixels: np.ndarray, actions: np.ndarray) -> dict[str, float]:
    """Cosine similarity of ``candidate`` against ``reference`` (two runtime-interface models) on clips.

    ``encode``: every frame of ``pixels`` [B, L, H, W, 3]. ``predict``: each
    model predicts the latent after every window of ``history`` steps from the
    *reference's* latents and the true actions, so the number measures the
    predictor alone. Returns mean and minimum cosine of each.
    """
    b, length = pixels.shape[:2]
    frames = pixels.reshape(b * length, *pixels.shape[2:])
    z_ref = np.concatenate([reference.encode(frames[i : i + 256]) for i in range(0, len(frames), 256)])
    z_new = np.concatenate([candidate.encode(frames[i : i + 256]) for i in range(0, len(frames), 256)])
    enc = cosine(z_ref, z_new)
    z = z_ref.reshape(b, length, -1)
    h = reference.config.history
    pred = []
    for start in range(length - h + 1):
        window = (z[:, start : start + h], actions[:, start : start + h])
        pred.append(cosine(reference.predict(*window), candidate.predict(*window)))
    pred_cos = np.concatenate(pred)
    return {
        "encode_cos": float(enc.mean()),
        "encode_cos_min": float(enc.min()),
        "predict_cos": float(pred_cos.mean()),
        "predict_cos_min": float(pred_cos.min()),
        "frames": len(frames),
        "windows": len(pred_cos),
    }


def held_out_clips(data: Path, cfg: ModelConfig, clips: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, actions) of up to ``clips`` clips of ``history + 1`` steps from a dataset's validation split."""
    from world_models.data.dataset import PushTClips, load_dataset_info

    info = load_dataset_info(data)
    if info.image_size != cfg.image_size:
        raise LeWorldError(f"{data}: frames are {info.image_size} px, the model takes {cfg.image_size} px")
    source = PushTClips(data, cfg.history, 1, split="val", seed=seed)
    if len(source) == 0:
        source = PushTClips(data, cfg.history, 1, split="all", seed=seed)
    starts = source.starts
    if len(starts) > clips:
        starts = np.sort(np.random.default_rng(seed).choice(starts, clips, replace=False))
    batch = source.clip(starts)
    return batch.pixels, batch.actions.astype(np.float32)


def report_lines(result: QuantizedModel, scores: Mapping[str, float] | None) -> list[str]:
    """What ``leworld quantize`` prints."""
    lines = [
        f"wrote {result.path} ({result.mode})",
        f"size: {result.nbytes / 1e6:.2f} MB (float32: {result.float_nbytes / 1e6:.2f} MB), "
        f"compression {result.compression:.2f}x",
    ]
    if scores:
        lines.append(
            f"encode  cos vs f32: mean {scores['encode_cos']:.5f}, min {scores['encode_cos_min']:.5f} "
            f"({scores['frames']} frames)"
        )
        lines.append(
            f"predict cos vs f32: mean {scores['predict_cos']:.5f}, min {scores['predict_cos_min']:.5f} "
            f"({scores['windows']} windows)"
        )
    return lines
