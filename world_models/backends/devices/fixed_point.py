"""The FPGA's predictor as a bit-exact integer reference: what the FPGA (and its emulator) must output.

Formats (details and measured error in ``docs/fpga_fixed_point.md``; kernels in
:mod:`numba_kernels.fixed_point`):

* Activations are int32 fixed point with ``frac_bits`` fraction bits (default 16: Q15.16, range
  +-32768, step 1.5e-5). Inputs (latents, actions) are quantized on entry as ``round(x * 2**frac_bits)``,
  half to even, and must lie inside that range; outputs are ``q * 2**-frac_bits`` in float32, exact
  while |output| < 2**(24 - frac_bits) (256 at 16 bits).
* Linear weights keep the ``.lq40`` file's codes (Q4_0 in the transformer blocks; the file's Q8_0 / INT8
  boundary layers stay 8-bit) with each block scale as an integer mantissa and a power-of-two shift;
  products are shift-add trees, accumulated in int64 with ``ACC_GUARD_BITS`` (16) extra fraction bits.
* Every other float32 tensor is converted once, at load: additive ones (biases, positional embeddings,
  the folded BatchNorm offset) to the activation format, multiplicative ones (LayerNorm gains, the folded
  BatchNorm scale) to Q.20.
* Every right shift rounds half up. Nothing at inference is floating point; a row's output never
  depends on the other rows, the batch size or the thread count.

``predict`` / ``rollout`` mirror :meth:`world_models.interface.WorldModel.predict` / ``rollout``; the
integer-level ``predict_fixed`` / ``rollout_fixed`` take and return the activation integers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from numba_kernels import fixed_point as fx
from numba_kernels.linear import QLinear
from world_models.backends.layout import check_tensors, linear_shapes
from world_models.backends.lq40 import read_model
from world_models.config import ModelConfig
from world_models.errors import ArgumentError, LeWorldError
from world_models.interface import check_history, check_sequence
from world_models.locate import resolve_lq40

DEFAULT_FRAC_BITS = 16
# Predictor layers and the weight formats the fixed-point engine takes for them.
BLOCK_FORMATS = ("q4_0",)  # the transformer blocks: the FPGA's shift-add trees are 4-bit
OTHER_FORMATS = ("q4_0", "q8_0", "i8")  # input projection, action encoder, projector


class FixedPointPredictor:
    """LeWM's predictor in integer arithmetic, from an ``.lq40`` file whose predictor blocks are Q4_0.

    Attributes:
        config: the model's :class:`~world_models.config.ModelConfig`.
        frac_bits: fraction bits of the activations (int32 Q(31 - frac_bits).frac_bits).
        acc_guard_bits: extra fraction bits of a linear layer's int64 accumulator.
        coef_bits: fraction bits of multiplicative constants (LayerNorm gains, folded BatchNorm scale).
        path: the ``.lq40`` file.
    """

    acc_guard_bits = fx.ACC_GUARD_BITS
    coef_bits = fx.COEF_BITS

    def __init__(
        self,
        config: ModelConfig,
        layers: dict[str, fx.FixedLinear],
        tensors: dict[str, np.ndarray],
        path: Path,
        frac_bits: int,
    ) -> None:
        self.config = config
        self.layers = layers
        self.path = Path(path)
        self.frac_bits = frac_bits
        t, f = tensors, frac_bits
        self.pos_embed = fx.to_fixed(t["predictor.pos_embed"][0], f)  # [history, d]
        self.norm_weight = fx.to_fixed(t["predictor.norm.weight"], fx.COEF_BITS)
        self.norm_bias = fx.to_fixed(t["predictor.norm.bias"], f)
        # BatchNorm (eval) folded into x * scale + offset, in float64, then rounded once.
        bn = "predictor.projector.1"
        scale = t[f"{bn}.weight"].astype(np.float64) / np.sqrt(t[f"{bn}.running_var"].astype(np.float64) + fx.LN_EPS)
        offset = t[f"{bn}.bias"].astype(np.float64) - t[f"{bn}.running_mean"].astype(np.float64) * scale
        self.bn_scale, self.bn_offset = fx.to_fixed(scale, fx.COEF_BITS), fx.to_fixed(offset, f)

    @property
    def input_limit(self) -> float:
        """Inputs must satisfy |x| < input_limit (the int32 range of the activation format)."""
        return 2.0 ** (31 - self.frac_bits)

    # ------------------------------------------------------------ loading
    @classmethod
    def from_lq40(cls, path: str | Path, frac_bits: int = DEFAULT_FRAC_BITS) -> FixedPointPredictor:
        """Load an ``.lq40`` file (or a model folder / shipped model name holding ``model.lq40``).

        Raises:
            LeWorldError: the file is unreadable or not an LQ40 model, or its predictor is not Q4
                (every ``predictor.blocks.*`` layer Q4_0; the rest Q4_0, Q8_0 or INT8).
            ValueError: ``frac_bits`` outside 6..24.
        """
        if not fx.MIN_FRAC_BITS <= int(frac_bits) <= fx.MAX_FRAC_BITS:
            raise ArgumentError(f"frac_bits must be in {fx.MIN_FRAC_BITS}..{fx.MAX_FRAC_BITS}, got {frac_bits}")
        path = resolve_lq40(path)
        cfg, linears, tensors, _header = read_model(path)
        probe = linears["probe.net.0"].out_features if "probe.net.0" in linears else None
        check_tensors(str(path), cfg, linears, tensors, probe)
        layers = {}
        for prefix, (n, k) in linear_shapes(cfg).items():
            if not prefix.startswith("predictor."):
                continue
            layer: QLinear = linears[prefix]
            allowed = BLOCK_FORMATS if prefix.startswith("predictor.blocks.") else OTHER_FORMATS
            if layer.kind not in allowed:
                raise LeWorldError(
                    f"{path}: the fixed-point (FPGA) predictor needs a Q4 predictor: layer {prefix} is "
                    f"{layer.kind}, expected {' or '.join(allowed)} (make one with leworld quantize --mode full)"
                )
            try:
                layers[prefix] = fx.FixedLinear.from_quantized(
                    layer.kind, layer.data, layer.scale, layer.bias, n, k, int(frac_bits)
                )
            except ValueError as err:
                raise LeWorldError(f"{path}: layer {prefix}: {err}") from None
        return cls(cfg, layers, tensors, path, int(frac_bits))

    # ------------------------------------------------------------ input checks
    def _in_range(self, name: str, x: np.ndarray) -> np.ndarray:
        if np.any(np.abs(x) >= self.input_limit):
            raise ArgumentError(
                f"{name} holds values outside the fixed-point range (|x| < {self.input_limit:g} "
                f"at {self.frac_bits} fraction bits)"
            )
        return x

    def _history(self, z_hist: Any, a_hist: Any) -> tuple[np.ndarray, np.ndarray]:
        """Checked, quantized last ``history`` steps of z_hist [B, T, D] and a_hist [B, T, A]."""
        cfg = self.config
        z, a = check_history(z_hist, a_hist, cfg.latent_dim, cfg.action_dim, cfg.history)
        return self.quantize(self._in_range("z_hist", z)), self.quantize(self._in_range("a_hist", a))

    def quantize(self, x: Any) -> np.ndarray:
        """float -> int32 activations: round(x * 2**frac_bits), half to even, saturated."""
        return fx.to_fixed(x, self.frac_bits)

    def to_float(self, q: np.ndarray) -> np.ndarray:
        """int32 activations -> float32 q * 2**-frac_bits."""
        return fx.to_float(q, self.frac_bits)

    # ------------------------------------------------------------ public interface
    def predict(self, z_hist: Any, a_hist: Any) -> np.ndarray:
        """The latent after the last of ``z_hist`` float32 [B, T, D] under ``a_hist`` [B, T, A] -> float32 [B, D].

        As ``WorldModel.predict``: only the last ``config.history`` steps are used.
        """
        return self.to_float(self.predict_fixed(*self._history(z_hist, a_hist)))

    def rollout(self, z_hist: Any, a_hist: Any, a_future: Any) -> np.ndarray:
        """Open loop over ``a_future`` [B, H, A] -> float32 [B, H, D], as ``WorldModel.rollout``: the first
        prediction uses ``a_hist[:, -1]``, ``a_future[:, i]`` is applied at the i-th predicted latent.
        Predictions are fed back as their integers (the same values a float32 round trip gives)."""
        z, a = self._history(z_hist, a_hist)
        future = self._in_range("a_future", check_sequence("a_future", a_future, self.config.action_dim))
        if future.shape[0] != z.shape[0]:
            raise ArgumentError(f"a_future has batch {future.shape[0]}, z_hist has {z.shape[0]}")
        return self.to_float(self.rollout_fixed(z, a, self.quantize(future)))

    # ------------------------------------------------------------ integer level
    def _fixed(self, name: str, q: np.ndarray, last: int, batch: int | None = None) -> np.ndarray:
        if not isinstance(q, np.ndarray) or q.dtype != np.int32 or q.ndim != 3 or q.shape[2] != last or q.shape[1] < 1:
            raise ArgumentError(
                f"{name} must be int32 [B, T, {last}], got {getattr(q, 'dtype', type(q))} {np.shape(q)}"
            )
        if batch is not None and q.shape[0] != batch:
            raise ArgumentError(f"{name} has batch {q.shape[0]}, expected {batch}")
        return np.ascontiguousarray(q)

    def predict_fixed(self, z_q: np.ndarray, a_q: np.ndarray) -> np.ndarray:
        """int32 z [B, T, D], a [B, T, A] (already quantized; the last ``history`` steps are used) -> int32 [B, D]."""
        h = self.config.history
        z_q = self._fixed("z_q", z_q, self.config.latent_dim)[:, -h:]
        a_q = self._fixed("a_q", a_q, self.config.action_dim, z_q.shape[0])[:, -h:]
        if z_q.shape[1] != a_q.shape[1]:
            raise ArgumentError(f"z_q and a_q must agree on T, got {z_q.shape[1]} and {a_q.shape[1]}")
        return self._predict_tokens(*self._tokens(z_q, a_q))

    def rollout_fixed(self, z_q: np.ndarray, a_q: np.ndarray, future_q: np.ndarray) -> np.ndarray:
        """int32 z [B, T, D], a [B, T, A] (the last ``history`` steps are used), future [B, H, A] -> int32 [B, H, D].

        A token's input projection and modulations depend on its own (z, a) only, so they are computed
        once per token and reused as the window slides (bit-identical to recomputing them).
        """
        hist = self.config.history
        z_q = self._fixed("z_q", z_q, self.config.latent_dim)[:, -hist:]
        a_q = self._fixed("a_q", a_q, self.config.action_dim, z_q.shape[0])[:, -hist:]
        future_q = self._fixed("future_q", future_q, self.config.action_dim, z_q.shape[0])
        if z_q.shape[1] != a_q.shape[1]:
            raise ArgumentError(f"z_q and a_q must agree on T, got {z_q.shape[1]} and {a_q.shape[1]}")
        b, horizon = future_q.shape[:2]
        h = z_q.shape[1]
        first_inputs, first_mods = self._tokens(z_q, a_q)
        inputs = np.empty((b, h + horizon, first_inputs.shape[2]), np.int32)
        mods = [np.empty((b, h + horizon, m.shape[2]), np.int32) for m in first_mods]
        inputs[:, :h] = first_inputs
        for buffer, m in zip(mods, first_mods, strict=True):
            buffer[:, :h] = m
        out = np.empty((b, horizon, self.config.latent_dim), np.int32)
        for k in range(horizon):
            start = max(0, k + h - self.config.history)
            window = [np.ascontiguousarray(m[:, start : k + h]) for m in mods]
            out[:, k] = self._predict_tokens(np.ascontiguousarray(inputs[:, start : k + h]), window)
            new_inputs, new_mods = self._tokens(out[:, k : k + 1], future_q[:, k : k + 1])
            inputs[:, k + h] = new_inputs[:, 0]
            for buffer, m in zip(mods, new_mods, strict=True):
                buffer[:, k + h] = m[:, 0]
        return out

    # ------------------------------------------------------------ the forward pass
    def _tokens(self, z_q: np.ndarray, a_q: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per token: the input projection int32 [B, T, d] and each block's modulation [B, T, 6d]."""
        cfg, lin, f = self.config, self.layers, self.frac_bits
        b, steps, _ = z_q.shape
        d = cfg.predictor_dim
        inputs = lin["predictor.input"](z_q.reshape(b * steps, -1)).reshape(b, steps, d)
        cond = lin["predictor.action_encoder.conv"](a_q.reshape(b * steps, -1))
        cond = fx.silu_fixed(lin["predictor.action_encoder.mlp.0"](cond), f)
        cond = fx.silu_fixed(lin["predictor.action_encoder.mlp.2"](cond), f)  # the modulation's own SiLU
        mods = [
            lin[f"predictor.blocks.{i}.modulation.1"](cond).reshape(b, steps, 6 * d) for i in range(cfg.predictor_depth)
        ]
        return inputs, mods

    def _predict_tokens(self, inputs: np.ndarray, mods: list[np.ndarray]) -> np.ndarray:
        """The next latent int32 [B, D] from token features of T <= history steps. The last block runs on
        the last token only (the only output used), which changes no bit of it."""
        cfg, lin, f = self.config, self.layers, self.frac_bits
        b, steps, d = inputs.shape
        x = fx.add_saturated(inputs, self.pos_embed[:steps]).reshape(-1, d)
        for i in range(cfg.predictor_depth):
            pre = f"predictor.blocks.{i}"
            last = i == cfg.predictor_depth - 1
            mod = mods[i].reshape(b, steps, 6, d)
            y = fx.layer_norm_int(x, f, shift=mod[:, :, 0].reshape(-1, d), scale=mod[:, :, 1].reshape(-1, d))
            qkv = lin[f"{pre}.attn.qkv"](y).reshape(b, steps, 3 * d)
            att = fx.attention_int(qkv, cfg.predictor_heads, f, first_query=steps - 1 if last else 0)
            if last:
                x, mod = np.ascontiguousarray(x.reshape(b, steps, d)[:, -1]), mod[:, -1:]
            x = self._block_tail(pre, x, mod.reshape(-1, 6, d), att.reshape(-1, d))
        x = fx.layer_norm_int(x, f, weight=self.norm_weight, bias=self.norm_bias)
        h = lin["predictor.projector.0"](x)
        h = fx.gelu_fixed(fx.channel_affine_int(h, self.bn_scale, self.bn_offset), f)
        return lin["predictor.projector.3"](h)

    def _block_tail(self, pre: str, x: np.ndarray, mod: np.ndarray, att: np.ndarray) -> np.ndarray:
        """An adaLN-zero block after attention: gated projection, modulated norm, gated MLP (rows [R, d])."""
        lin, f = self.layers, self.frac_bits
        x = fx.gated_add_int(x, mod[:, 2], lin[f"{pre}.attn.proj"](att), f)
        y = fx.layer_norm_int(x, f, shift=mod[:, 3], scale=mod[:, 4])
        return fx.gated_add_int(x, mod[:, 5], lin[f"{pre}.mlp.2"](fx.gelu_fixed(lin[f"{pre}.mlp.0"](y), f)), f)

    def __repr__(self) -> str:
        return f"FixedPointPredictor(path={str(self.path)!r}, frac_bits={self.frac_bits})"
