"""The tensor layout of a LeWM model: every tensor's name and shape for a config, and the check against it.

A model (and its probe) is linear layers, by module prefix (:func:`linear_shapes`: out and in
features; convolutions flattened to linear layers), and float32 tensors that are no linear
layer's weight or bias (:func:`other_shapes`: embeddings, norms, BatchNorm statistics, the
probe's normalization). The LQ40 reader (:mod:`world_models.backends.lq40`), the numba engine
(:mod:`world_models.backends.numba_engine`), the quantizer and the fixed-point reference all
read the layout here; :func:`check_tensors` names what a set of layers and tensors lacks.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from numba_kernels.linear import QLinear
from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.pose import PROBE_FIELDS

PROBE_OUTPUTS = len(PROBE_FIELDS)  # the probe's last layer: one output per probe target


def linear_shapes(cfg: ModelConfig, probe_hidden: int | None = None) -> dict[str, tuple[int, int]]:
    """Every linear layer of the model (and probe) by module prefix -> (out_features, in_features).

    Convolutions are linear layers here: the patch embedding over flattened
    (channel, row, column) patches, the action encoder's kernel-1 Conv1d over actions.
    """
    hidden = int(cfg.encoder_dim * cfg.mlp_ratio), int(cfg.predictor_dim * cfg.mlp_ratio)
    shapes = {"encoder.patch_embed": (cfg.encoder_dim, 3 * cfg.patch_size**2)}
    for i in range(cfg.encoder_depth):
        p, d = f"encoder.blocks.{i}", cfg.encoder_dim
        shapes |= {
            f"{p}.attn.qkv": (3 * d, d),
            f"{p}.attn.proj": (d, d),
            f"{p}.mlp.0": (hidden[0], d),
            f"{p}.mlp.2": (d, hidden[0]),
        }
    shapes |= {
        "encoder.projector.0": (cfg.projector_hidden, cfg.encoder_dim),
        "encoder.projector.3": (cfg.latent_dim, cfg.projector_hidden),
    }
    d = cfg.predictor_dim
    shapes |= {
        "predictor.input": (d, cfg.latent_dim),
        "predictor.action_encoder.conv": (cfg.action_embed_dim, cfg.action_dim),
        "predictor.action_encoder.mlp.0": (4 * d, cfg.action_embed_dim),
        "predictor.action_encoder.mlp.2": (d, 4 * d),
    }
    for i in range(cfg.predictor_depth):
        p = f"predictor.blocks.{i}"
        shapes |= {
            f"{p}.attn.qkv": (3 * d, d),
            f"{p}.attn.proj": (d, d),
            f"{p}.mlp.0": (hidden[1], d),
            f"{p}.mlp.2": (d, hidden[1]),
            f"{p}.modulation.1": (6 * d, d),
        }
    shapes |= {
        "predictor.projector.0": (cfg.projector_hidden, d),
        "predictor.projector.3": (cfg.latent_dim, cfg.projector_hidden),
    }
    if probe_hidden is not None:
        shapes |= {"probe.net.0": (probe_hidden, cfg.latent_dim), "probe.net.2": (PROBE_OUTPUTS, probe_hidden)}
    return shapes


def other_shapes(cfg: ModelConfig, with_probe: bool) -> dict[str, tuple[int, ...]]:
    """Every float32 tensor that is not a linear layer's weight or bias -> its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, 1, cfg.encoder_dim),
        "encoder.pos_embed": (1, cfg.num_patches + 1, cfg.encoder_dim),
        "encoder.norm.weight": (cfg.encoder_dim,),
        "encoder.norm.bias": (cfg.encoder_dim,),
        "predictor.pos_embed": (1, cfg.history, cfg.predictor_dim),
        "predictor.norm.weight": (cfg.predictor_dim,),
        "predictor.norm.bias": (cfg.predictor_dim,),
    }
    for i in range(cfg.encoder_depth):
        for norm in ("norm1", "norm2"):
            for field in ("weight", "bias"):
                shapes[f"encoder.blocks.{i}.{norm}.{field}"] = (cfg.encoder_dim,)
    for part in ("encoder", "predictor"):
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{part}.projector.1.{field}"] = (cfg.projector_hidden,)
    if with_probe:
        shapes |= {"probe.z_mean": (cfg.latent_dim,), "probe.z_std": (cfg.latent_dim,)}
    return shapes


def check_tensors(
    source: str, cfg: ModelConfig, linears: Mapping[str, QLinear], tensors: Mapping[str, np.ndarray], probe: int | None
) -> None:
    """Name every missing or misshapen layer or tensor against the config."""
    problems = []
    for prefix, (n, k) in linear_shapes(cfg, probe).items():
        layer = linears.get(prefix)
        if layer is None:
            problems.append(f"missing layer {prefix}")
        elif (layer.out_features, layer.in_features) != (n, k):
            problems.append(f"{prefix} is {layer.out_features}x{layer.in_features}, the config needs {n}x{k}")
    for name, shape in other_shapes(cfg, probe is not None).items():
        if name not in tensors:
            problems.append(f"missing tensor {name}")
        elif tuple(tensors[name].shape) != shape:
            problems.append(f"{name} has shape {list(tensors[name].shape)}, the config needs {list(shape)}")
        elif not np.all(np.isfinite(tensors[name])):
            problems.append(f"{name} holds NaN or inf")
    if problems:
        raise LeWorldError(f"{source}: " + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else ""))
