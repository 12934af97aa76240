"""LeWM inference on numba kernels, without torch: the ``numba`` and ``numba-q4`` backends.

The forward pass mirrors :mod:`world_models.lewm.model` line for line, over numpy
arrays: linear layers are :class:`~numba_kernels.linear.QLinear` (float32,
Q4_0, Q8_0, INT8 or ternary weights; the conv stem's convolutions run as linear
layers over im2col patches), everything else (embeddings, norms, BatchNorm
statistics, the probe) stays float32. Two shortcuts that change no
output: the predictor's last block and projector run on the last time step
only (the only one ``predict`` returns), and BatchNorm uses its running
statistics (eval mode).

Weights come from a model folder's ``model.safetensors`` (``numba``, read with
:func:`world_models.model_folder.read_model_folder`) or from an ``.lq40`` file (``numba-q4``,
read with :func:`world_models.backends.lq40.read_model`); the names and shapes they must
have are :mod:`world_models.backends.layout`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from numba_kernels.linear import GELU, SILU, QLinear
from numba_kernels.nn_ops import (
    apply_activation,
    attention,
    batch_norm,
    group_norm,
    im2col,
    layer_norm,
    modulated_layer_norm,
)
from world_models.backends.layout import (
    CONV_KERNEL,
    CONV_PADDING,
    CONV_STRIDE,
    check_tensors,
    conv_stem,
    linear_shapes,
    other_shapes,
)
from world_models.backends.lq40 import read_model
from world_models.config import CONV_GROUPS, ModelConfig
from world_models.errors import LeWorldError
from world_models.interface import WorldModel
from world_models.model_folder import read_model_folder


def linear_from_state(state: Mapping[str, np.ndarray], prefix: str, shape: tuple[int, int]) -> np.ndarray:
    """A linear layer's float32 weight [out, in] from a state dict (convolutions flattened).

    Raises:
        ValueError: naming the tensor, where its shape is not [out, ...] with ``in`` values per output.
    """
    weight = np.asarray(state[f"{prefix}.weight"], np.float32)
    if weight.ndim < 2 or weight.shape[0] != shape[0] or weight.size != shape[0] * shape[1]:
        raise ValueError(
            f"{prefix}.weight has shape {list(weight.shape)}, the config needs [{shape[0]}, ...] "
            f"holding {shape[0]}x{shape[1]} values"
        )
    return np.ascontiguousarray(weight.reshape(shape))


class NumbaLeWM:
    """LeWM's forward pass (encode, predict, probe) over numpy arrays and numba kernels."""

    def __init__(
        self, cfg: ModelConfig, linears: Mapping[str, QLinear], tensors: Mapping[str, np.ndarray], source: str
    ) -> None:
        self.has_probe = "probe.net.0" in linears
        probe_hidden = linears["probe.net.0"].out_features if self.has_probe else None
        check_tensors(source, cfg, linears, tensors, probe_hidden)
        self.cfg = cfg
        self.lin = dict(linears)
        self.t = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.lin.values()) + sum(v.nbytes for v in self.t.values())

    def _projector(self, part: str, x: np.ndarray) -> np.ndarray:
        t = self.t
        bn = f"{part}.projector.1"
        h = self.lin[f"{part}.projector.0"](x)
        h = batch_norm(h, t[f"{bn}.running_mean"], t[f"{bn}.running_var"], t[f"{bn}.weight"], t[f"{bn}.bias"], GELU)
        return self.lin[f"{part}.projector.3"](h)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> latents [B, D], through the config's encoder (ViT or conv stem)."""
        x = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return self._encode_cnn(x) if self.cfg.encoder == "cnn" else self._encode_vit(x)

    def _encode_cnn(self, x: np.ndarray) -> np.ndarray:
        """The conv stem on frames x [B, H, W, 3] in [-1, 1]: each layer a convolution (a linear layer over
        im2col patches), GroupNorm and GELU, channels last; then ``flat`` over torch's channel-major
        flatten, LayerNorm and the projector."""
        t, b = self.t, x.shape[0]
        for i, (_, c_out, side) in enumerate(conv_stem(self.cfg)):
            pre = f"encoder.convs.{i}"
            y = self.lin[f"{pre}.conv"](im2col(x, CONV_KERNEL, CONV_STRIDE, CONV_PADDING))
            y = group_norm(
                y.reshape(b, side * side, c_out), CONV_GROUPS, t[f"{pre}.norm.weight"], t[f"{pre}.norm.bias"], GELU
            )
            x = y.reshape(b, side, side, c_out)
        flat = np.ascontiguousarray(x.reshape(b, -1, x.shape[3]).transpose(0, 2, 1)).reshape(b, -1)
        h = layer_norm(self.lin["encoder.flat"](flat), t["encoder.norm.weight"], t["encoder.norm.bias"])
        return self._projector("encoder", h)

    def _encode_vit(self, x: np.ndarray) -> np.ndarray:
        """The ViT on frames x [B, H, W, 3] in [-1, 1]: patches, CLS token, blocks, LayerNorm, projector."""
        cfg, t = self.cfg, self.t
        b, p, d = x.shape[0], cfg.patch_size, cfg.encoder_dim
        g = cfg.image_size // p
        patches = x.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b * g * g, 3 * p * p)
        h = np.empty((b, g * g + 1, d), np.float32)
        h[:, 0] = t["encoder.cls_token"][0, 0]
        h[:, 1:] = self.lin["encoder.patch_embed"](patches).reshape(b, g * g, d)
        h += t["encoder.pos_embed"]
        h = h.reshape(-1, d)
        for i in range(cfg.encoder_depth):
            pre = f"encoder.blocks.{i}"
            y = layer_norm(h, t[f"{pre}.norm1.weight"], t[f"{pre}.norm1.bias"])
            qkv = self.lin[f"{pre}.attn.qkv"](y).reshape(b, g * g + 1, 3 * d)
            h += self.lin[f"{pre}.attn.proj"](attention(qkv, cfg.encoder_heads, causal=False).reshape(-1, d))
            y = layer_norm(h, t[f"{pre}.norm2.weight"], t[f"{pre}.norm2.bias"])
            h += self.lin[f"{pre}.mlp.2"](self.lin[f"{pre}.mlp.0"](y, GELU))
        cls = layer_norm(
            np.ascontiguousarray(h.reshape(b, g * g + 1, d)[:, 0]), t["encoder.norm.weight"], t["encoder.norm.bias"]
        )
        return self._projector("encoder", cls)

    def tokens(self, z: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """What a predictor token (z, a) contributes that does not depend on its position:
        the input projection [B, T, d] and each block's adaLN modulation [B, T, 6d].

        The action encoder is per time step (a kernel-1 convolution and an MLP) and the
        modulation reads only it, so these can be computed once per token and reused as a
        token slides through the window during a rollout.
        """
        cfg, lin = self.cfg, self.lin
        b, steps, _ = z.shape
        d = cfg.predictor_dim
        inputs = lin["predictor.input"](z.reshape(b * steps, -1)).reshape(b, steps, d)
        cond = lin["predictor.action_encoder.conv"](a.reshape(b * steps, -1))
        cond = lin["predictor.action_encoder.mlp.2"](lin["predictor.action_encoder.mlp.0"](cond, SILU))
        cond = apply_activation(cond, SILU)
        mods = [
            lin[f"predictor.blocks.{i}.modulation.1"](cond).reshape(b, steps, 6 * d) for i in range(cfg.predictor_depth)
        ]
        return inputs, mods

    def predict_tokens(self, inputs: np.ndarray, mods: list[np.ndarray], shared: int = 0) -> np.ndarray:
        """The next latent [B, D] from token features (see :meth:`tokens`) of T <= history steps.

        ``shared``: the first tokens that are the same in every row (a planner's candidates all
        start from one history). Causal attention never lets them see the later tokens, so they
        are computed once, on row 0, and only their keys and values are shared with every row.
        """
        cfg, t, lin = self.cfg, self.t, self.lin
        b, steps, d = inputs.shape
        pos = t["predictor.pos_embed"][0, :steps]
        x = (inputs[:, shared:] + pos[shared:]).reshape(-1, d)  # the rows' own tokens
        xs = (inputs[0, :shared] + pos[:shared]).reshape(-1, d)  # the shared tokens, once
        own = steps - shared
        for i in range(cfg.predictor_depth):
            pre = f"predictor.blocks.{i}"
            last = i == cfg.predictor_depth - 1  # only the last step's output is needed from here
            mod = mods[i][:, shared:].reshape(b, own, 6, d)
            y = modulated_layer_norm(x, mod[:, :, 0].reshape(-1, d), mod[:, :, 1].reshape(-1, d))
            qkv = lin[f"{pre}.attn.qkv"](y).reshape(b, own, 3 * d)
            if shared:
                mod_s = mods[i][0, :shared].reshape(shared, 6, d)
                y_s = modulated_layer_norm(xs, np.ascontiguousarray(mod_s[:, 0]), np.ascontiguousarray(mod_s[:, 1]))
                qkv_s = lin[f"{pre}.attn.qkv"](y_s)
                qkv = np.concatenate([np.broadcast_to(qkv_s, (b, shared, 3 * d)), qkv], axis=1)
                if not last:  # the shared tokens' own update (the last block needs only their keys)
                    att_s = attention(qkv_s[None], cfg.predictor_heads, causal=True)
                    xs = self._block_tail(pre, xs, mod_s[None], att_s.reshape(shared, d))
            att = attention(qkv, cfg.predictor_heads, causal=True, first_query=steps - 1 if last else shared)
            if last:
                x, mod = np.ascontiguousarray(x.reshape(b, own, d)[:, -1]), mod[:, -1:]
            x = self._block_tail(pre, x, mod, att.reshape(x.shape[0], d))
        x = layer_norm(x, t["predictor.norm.weight"], t["predictor.norm.bias"])
        return self._projector("predictor", x)

    def _block_tail(self, pre: str, x: np.ndarray, mod: np.ndarray, att: np.ndarray) -> np.ndarray:
        """An adaLN-zero block after attention: gated projection, modulated norm, gated MLP."""
        lin, d = self.lin, x.shape[1]
        rows = x.shape[0]
        x = x + mod[:, :, 2].reshape(rows, d) * lin[f"{pre}.attn.proj"](att)
        y = modulated_layer_norm(x, mod[:, :, 3].reshape(rows, d), mod[:, :, 4].reshape(rows, d))
        return x + mod[:, :, 5].reshape(rows, d) * lin[f"{pre}.mlp.2"](lin[f"{pre}.mlp.0"](y, GELU))

    def predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        """Latents [B, T, D] and actions [B, T, A] (T <= history) -> the next latent [B, D]."""
        return self.predict_tokens(*self.tokens(z_hist, a_hist))

    def rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        """Open loop over ``a_future`` [B, H, A] -> [B, H, D], as ``WorldModel.rollout``, computing each
        token's position-free features once (a third of the predictor's work at history 3), and a
        history shared by every row once (see :meth:`predict_tokens`)."""
        b, horizon = a_future.shape[:2]
        h = min(self.cfg.history, z_hist.shape[1])
        first_inputs, first_mods = self.tokens(z_hist[:, -h:], a_hist[:, -h:])
        # Every token of the rollout in one buffer per feature: the window is a view, never a copy.
        inputs = np.empty((b, h + horizon, first_inputs.shape[2]), np.float32)
        mods = [np.empty((b, h + horizon, m.shape[2]), np.float32) for m in first_mods]
        inputs[:, :h] = first_inputs
        for buffer, m in zip(mods, first_mods, strict=True):
            buffer[:, :h] = m
        # Candidates branching from one history (a planner's) share every history token but the last.
        same = bool(np.all(z_hist[:, -h:] == z_hist[:1, -h:]) and np.all(a_hist[:, -h:-1] == a_hist[:1, -h:-1]))
        prefix = h - 1 if same and b > 1 else 0
        out = np.empty((b, horizon, self.cfg.latent_dim), np.float32)
        for k in range(horizon):
            start = max(0, k + h - self.cfg.history)
            shared = max(0, prefix - start)
            window = [m[:, start : k + h] for m in mods]
            out[:, k] = self.predict_tokens(inputs[:, start : k + h], window, shared)
            new_inputs, new_mods = self.tokens(out[:, k : k + 1], a_future[:, k : k + 1])
            inputs[:, k + h] = new_inputs[:, 0]
            for buffer, m in zip(mods, new_mods, strict=True):
                buffer[:, k + h] = m[:, 0]
        return out

    def probe_targets(self, z: np.ndarray) -> np.ndarray:
        """Latents [B, D] -> probe outputs [B, 6] (positions / 512, sin, cos of the angle)."""
        zn = (z - self.t["probe.z_mean"]) / self.t["probe.z_std"]
        return self.lin["probe.net.2"](self.lin["probe.net.0"](zn, GELU))


def float_weights(folder: Path) -> tuple[ModelConfig, dict[str, np.ndarray], int | None]:
    """A model folder's config and every float32 tensor (model, and probe under ``probe.``); the probe's width.

    The files are checked as :func:`world_models.lewm.folder.load_model` checks them
    (:func:`world_models.model_folder.read_model_folder`: checksums, finite values, ``probe.json``).
    """
    cfg, weights, probe, info = read_model_folder(folder, "np")
    state = dict(weights)
    if probe is None:
        return cfg, state, None
    state |= {f"probe.{k}": v for k, v in probe.items()}
    return cfg, state, info["hidden"]


def build_layers(
    cfg: ModelConfig, state: Mapping[str, np.ndarray], probe_hidden: int | None, formats: Mapping[str, str], source: str
) -> tuple[dict[str, QLinear], dict[str, np.ndarray]]:
    """Split a float32 state dict into QLinear layers (quantized to ``formats[prefix]``, default f32) and the rest."""
    linears = {}
    missing = [f"{p}.weight" for p in linear_shapes(cfg, probe_hidden) if f"{p}.weight" not in state]
    if missing:
        raise LeWorldError(f"{source}: missing tensors: {', '.join(missing[:5])}")
    for prefix, shape in linear_shapes(cfg, probe_hidden).items():
        try:
            weight = linear_from_state(state, prefix, shape)
            linears[prefix] = QLinear.from_float(weight, state.get(f"{prefix}.bias"), formats.get(prefix, "f32"))
        except ValueError as err:
            raise LeWorldError(f"{source}: layer {prefix}: {err}") from None
    others = {k: v for k, v in state.items() if k in other_shapes(cfg, probe_hidden is not None)}
    return linears, others


class NumbaWorldModel(WorldModel):
    """The runtime interface over :class:`NumbaLeWM`."""

    def __init__(self, engine: NumbaLeWM, path: Path, backend: str) -> None:
        self.engine = engine
        self.config = engine.cfg
        self.path = Path(path)
        self.backend = backend
        self.has_probe = engine.has_probe

    @classmethod
    def from_folder(cls, folder: Path) -> NumbaWorldModel:
        """The ``numba`` backend: float32 weights from a model folder."""
        cfg, state, probe_hidden = float_weights(folder)
        linears, others = build_layers(cfg, state, probe_hidden, {}, str(folder))
        return cls(NumbaLeWM(cfg, linears, others, str(folder)), folder, "numba")

    @classmethod
    def from_lq40(cls, path: Path) -> NumbaWorldModel:
        """The ``numba-q4`` backend: quantized weights from an ``.lq40`` file."""
        cfg, linears, others, _header = read_model(path)
        return cls(NumbaLeWM(cfg, linears, others, str(path)), path, "numba-q4")

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.engine.encode(pixels)

    def _predict(self, z_hist: np.ndarray, a_hist: np.ndarray) -> np.ndarray:
        return self.engine.predict(z_hist, a_hist)

    def _rollout(self, z_hist: np.ndarray, a_hist: np.ndarray, a_future: np.ndarray) -> np.ndarray:
        return self.engine.rollout(z_hist, a_hist, a_future)

    def _probe_targets(self, z: np.ndarray) -> np.ndarray:
        return self.engine.probe_targets(z)
