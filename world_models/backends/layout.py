"""The tensor layout of a LeWM model: every tensor's name and shape for a config, and the check against it.

A model (and its probe) is linear layers, by module prefix (:func:`linear_shapes`: out and in
features; convolutions flattened to linear layers), and float32 tensors that are no linear
layer's weight or bias (:func:`other_shapes`: embeddings, norms, BatchNorm statistics, the
probe's normalization). The encoder is the config's: a ViT (``encoder == "vit"``) or the conv
stem (``"cnn"``, :func:`conv_stem`: each 3x3 convolution a linear layer over im2col patches).
The LQ40 reader (:mod:`world_models.backends.lq40`), the numba engine
(:mod:`world_models.backends.numba_engine`), the quantizer and the fixed-point reference all
read the layout here; :func:`check_tensors` names what a set of layers and tensors lacks.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from numba_kernels.linear import QLinear
from numba_kernels.nn_ops import conv_side
from world_models.config import ModelConfig
from world_models.errors import LeWorldError
from world_models.pose import PROBE_FIELDS

PROBE_OUTPUTS = len(PROBE_FIELDS)  # the probe's last layer: one output per probe target
CONV_KERNEL, CONV_STRIDE, CONV_PADDING = 3, 2, 1  # every conv-stem layer's (lewm.model.ConvLayer)


def conv_stem(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """The conv stem's layers (``encoder == "cnn"``): (in channels, out channels, output side) each."""
    layers, c_in, side = [], 3, cfg.image_size
    for c_out in cfg.conv_channels:
        side = conv_side(side, CONV_KERNEL, CONV_STRIDE, CONV_PADDING)
        layers.append((c_in, c_out, side))
        c_in = c_out
    return layers


def _vit_linears(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """The ViT's linear layers: the patch embedding over flattened (channel, row, column) patches, the blocks."""
    d, hidden = cfg.encoder_dim, int(cfg.encoder_dim * cfg.mlp_ratio)
    shapes = {"encoder.patch_embed": (d, 3 * cfg.patch_size**2)}
    for i in range(cfg.encoder_depth):
        p = f"encoder.blocks.{i}"
        shapes |= {
            f"{p}.attn.qkv": (3 * d, d),
            f"{p}.attn.proj": (d, d),
            f"{p}.mlp.0": (hidden, d),
            f"{p}.mlp.2": (d, hidden),
        }
    return shapes


def _cnn_linears(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """The conv stem's linear layers: each convolution over (channel, row, column) patches of
    ``CONV_KERNEL``², then ``flat`` over the last feature map flattened channel-major (torch's NCHW)."""
    shapes = {
        f"encoder.convs.{i}.conv": (c_out, c_in * CONV_KERNEL**2) for i, (c_in, c_out, _) in enumerate(conv_stem(cfg))
    }
    c_last, side = cfg.conv_channels[-1], cfg.conv_side
    return shapes | {"encoder.flat": (cfg.encoder_dim, c_last * side * side)}


def linear_shapes(cfg: ModelConfig, probe_hidden: int | None = None) -> dict[str, tuple[int, int]]:
    """Every linear layer of the model (and probe) by module prefix -> (out_features, in_features).

    Convolutions are linear layers here: the ViT's patch embedding or the conv stem's 3x3
    convolutions over flattened (channel, row, column) patches, the action encoder's kernel-1
    Conv1d over actions.
    """
    hidden = int(cfg.predictor_dim * cfg.mlp_ratio)
    shapes = _cnn_linears(cfg) if cfg.encoder == "cnn" else _vit_linears(cfg)
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
            f"{p}.mlp.0": (hidden, d),
            f"{p}.mlp.2": (d, hidden),
            f"{p}.modulation.1": (6 * d, d),
        }
    shapes |= {
        "predictor.projector.0": (cfg.projector_hidden, d),
        "predictor.projector.3": (cfg.latent_dim, cfg.projector_hidden),
    }
    if probe_hidden is not None:
        shapes |= {"probe.net.0": (probe_hidden, cfg.latent_dim), "probe.net.2": (PROBE_OUTPUTS, probe_hidden)}
    return shapes


def _encoder_others(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The encoder's float32 tensors: the ViT's embeddings and block LayerNorms, or the conv stem's
    GroupNorms; both end in the LayerNorm ``encoder.norm``."""
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.encoder == "cnn":
        for i, (_, c_out, _) in enumerate(conv_stem(cfg)):
            shapes |= {f"encoder.convs.{i}.norm.{field}": (c_out,) for field in ("weight", "bias")}
    else:
        shapes |= {
            "encoder.cls_token": (1, 1, cfg.encoder_dim),
            "encoder.pos_embed": (1, cfg.num_patches + 1, cfg.encoder_dim),
        }
        for i in range(cfg.encoder_depth):
            for norm in ("norm1", "norm2"):
                for field in ("weight", "bias"):
                    shapes[f"encoder.blocks.{i}.{norm}.{field}"] = (cfg.encoder_dim,)
    return shapes | {"encoder.norm.weight": (cfg.encoder_dim,), "encoder.norm.bias": (cfg.encoder_dim,)}


def other_shapes(cfg: ModelConfig, with_probe: bool) -> dict[str, tuple[int, ...]]:
    """Every float32 tensor that is not a linear layer's weight or bias -> its shape."""
    shapes = _encoder_others(cfg) | {
        "predictor.pos_embed": (1, cfg.history, cfg.predictor_dim),
        "predictor.norm.weight": (cfg.predictor_dim,),
        "predictor.norm.bias": (cfg.predictor_dim,),
    }
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
