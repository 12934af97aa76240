"""The shipped model on the host side: its fixed-point reference, real latent windows, the inputs and
outputs of every op the reference runs on them (what the RTL units are checked against), and the
predictor's shapes and storage (the BRAM budget).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from numba_kernels import fixed_point as fx
from world_models.backends.devices.fixed_point import FixedPointPredictor

SHIPPED = "pusht-tiny"


def load_predictor(name: str = SHIPPED) -> FixedPointPredictor:
    """The shipped model's bit-exact fixed-point predictor (``FixedPointPredictor.from_lq40``)."""
    return FixedPointPredictor.from_lq40(name)


def real_windows(fpga: FixedPointPredictor, steps: int = 30, seed: int = 2026) -> tuple[np.ndarray, np.ndarray]:
    """Quantized (z_q [W, history, D], a_q [W, history, A]) windows from one fresh weak-expert episode
    (``steps`` simulator steps, one frame per model step, encoded by the float32 ``numba`` encoder)."""
    import world_models
    from leworld_env.sim.collect import CollectConfig, collect_episode

    model = world_models.load(SHIPPED, backend="numba")
    cfg = model.config
    episode = collect_episode(
        CollectConfig(policy="weak-expert", episodes=1, image_size=cfg.image_size, max_steps=steps, seed=seed), 0
    )
    z = model.encode(episode["observations"]["pixels"][:: cfg.frameskip])
    a = episode["actions"][:: cfg.frameskip]
    h = cfg.history
    n = min(len(z), len(a)) - h + 1
    z_hist = np.stack([z[t : t + h] for t in range(n)])
    a_hist = np.stack([a[t : t + h] for t in range(n)]).astype(np.float32)
    return fpga.quantize(z_hist), fpga.quantize(a_hist)


@dataclass
class Capture:
    """Every op's inputs and outputs during the reference's forward passes, in call order."""

    linear: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=lambda: defaultdict(list))
    layer_norm: list[tuple[np.ndarray, dict, np.ndarray]] = field(default_factory=list)
    gelu: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    silu: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    attention: list[tuple[np.ndarray, int, int, np.ndarray]] = field(default_factory=list)


class _Recorder:
    def __init__(self, layer: fx.FixedLinear, log: list) -> None:
        self.layer, self.log = layer, log

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.layer(x)
        self.log.append((x.copy(), y.copy()))
        return y


@contextlib.contextmanager
def capturing(fpga: FixedPointPredictor) -> Iterator[Capture]:
    """Record the ops of ``fpga``'s forward passes inside the block (the reference's own kernels run; their
    module attributes and the layer table are wrapped, then restored)."""
    cap = Capture()
    layers = dict(fpga.layers)
    originals = {name: getattr(fx, name) for name in ("layer_norm_int", "gelu_fixed", "silu_fixed", "attention_int")}

    def layer_norm_int(x, frac, **kw):
        y = originals["layer_norm_int"](x, frac, **kw)
        cap.layer_norm.append((np.array(x), {k: None if v is None else np.array(v) for k, v in kw.items()}, y.copy()))
        return y

    def gelu_fixed(x, frac):
        y = originals["gelu_fixed"](x, frac)
        cap.gelu.append((np.array(x), y.copy()))
        return y

    def silu_fixed(x, frac):
        y = originals["silu_fixed"](x, frac)
        cap.silu.append((np.array(x), y.copy()))
        return y

    def attention_int(qkv, heads, frac, first_query=0):
        y = originals["attention_int"](qkv, heads, frac, first_query)
        cap.attention.append((np.array(qkv), heads, first_query, y.copy()))
        return y

    try:
        for name, fn in (
            ("layer_norm_int", layer_norm_int),
            ("gelu_fixed", gelu_fixed),
            ("silu_fixed", silu_fixed),
            ("attention_int", attention_int),
        ):
            setattr(fx, name, fn)
        fpga.layers = {name: _Recorder(layer, cap.linear[name]) for name, layer in layers.items()}
        yield cap
    finally:
        for name, fn in originals.items():
            setattr(fx, name, fn)
        fpga.layers = layers


def capture_predict(fpga: FixedPointPredictor, z_q: np.ndarray, a_q: np.ndarray) -> tuple[Capture, np.ndarray]:
    """One ``predict_fixed`` on real windows with every op recorded -> (capture, the predicted latents)."""
    with capturing(fpga) as cap:
        out = fpga.predict_fixed(z_q, a_q)
    return cap, out


# ---------------------------------------------------------------- shapes and storage
DP16KD_BITS = 18 * 1024  # one ECP5 block RAM: 16 kbit of data plus 2 kbit of parity, usable as data at x9/x18/x36
DP16KD_SHAPES = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))  # (width, depth)
ECP5_85K_DP16KD = 208


def dp16kd_blocks(width: int, depth: int) -> int:
    """Block RAMs for a ``width`` x ``depth`` memory: the best of DP16KD's aspect ratios, tiled."""
    return min(-(-width // w) * -(-depth // d) for w, d in DP16KD_SHAPES)


@dataclass
class Budget:
    """The whole predictor's on-chip constants, in bits, and the DP16KD blocks three layouts need."""

    lanes: int
    weights: int
    q4_weights: int
    bits: dict[str, int]
    blocks: dict[str, int]

    @property
    def total_bits(self) -> int:
        return sum(self.bits.values())

    def fits(self, layout: str, available: int = ECP5_85K_DP16KD) -> bool:
        return self.blocks[layout] <= available


def _scale_fields(layer: fx.FixedLinear) -> tuple[int, int]:
    """(bits of the file's scale, bits of the lane's mantissa + shift) of one block."""
    return (16, 12 + 5) if layer.kind in ("q4_0", "q8_0") else (18 + 5, 18 + 5)


def bram_budget(fpga: FixedPointPredictor, lanes: int = 16, bias_bits: int = 48) -> Budget:
    """Bits and DP16KD blocks for every predictor constant: codes (4 or 8 bits), block scales, biases and
    the rest (positional embedding, final norm, folded BatchNorm: 32 bits each). Layouts, each with one
    memory per kind of word holding every layer (what a whole-predictor design would have):

    * ``ideal``: every bit packed densely at the file's widths (fp16 scales, 36-bit biases): the floor;
    * ``as_built``: :mod:`rtl.layout`'s words for a ``lanes``-lane array: P codes a word, one decoded
      mantissa + shift (17 bits; 23 for INT8 rows) a word, one ``bias_bits`` bias a word;
    * ``file_scales``: as ``as_built`` but the scales kept as the file's fp16 (16 bits, decoded by a few
      LUTs in the scaler: not built) and the biases at 36 bits (every shipped bias fits 34).
    """
    bits = defaultdict(int)
    words: dict[str, dict[tuple[str, int], int]] = {"as_built": defaultdict(int), "file_scales": defaultdict(int)}
    weights = q4 = 0
    for layer in fpga.layers.values():
        n, k = layer.codes.shape
        nb = k // layer.block
        file_scale, lane_scale = _scale_fields(layer)
        weights += n * k
        q4 += n * k if layer.bits == 4 else 0
        bits["codes"] += n * k * layer.bits
        bits["scales"] += n * nb * file_scale
        bits["biases"] += n * 36
        g = -(-n // lanes)
        for name, scale_width, bias_width in (("as_built", lane_scale, bias_bits), ("file_scales", file_scale, 36)):
            words[name][("codes", layer.bits * lanes)] += g * k
            words[name][("scales", scale_width)] += g * lanes * nb
            words[name][("biases", bias_width)] += g * lanes
    other = fpga.pos_embed.size + fpga.norm_weight.size + fpga.norm_bias.size + 2 * fpga.bn_scale.size
    bits["other"] = 32 * other
    blocks = {"ideal": -(-sum(bits.values()) // DP16KD_BITS)}
    for name, kinds in words.items():
        blocks[name] = sum(dp16kd_blocks(width, depth) for (_, width), depth in kinds.items())
        blocks[name] += dp16kd_blocks(32, other)
    return Budget(lanes, weights, q4, dict(bits), blocks)


# ---------------------------------------------------------------- cycles
def linear_cycles(layer: fx.FixedLinear, rows: int, lanes: int) -> int:
    """Cycles of :class:`rtl.linear.LinearLayer` for ``rows`` rows: one beat per (row, group, input), a block
    shorter than P stretched to P (the scaler's P jobs), plus the pipeline latencies (``P + 7``, from the
    simulations)."""
    n, k = layer.codes.shape
    return rows * (-(-n // lanes)) * (k // layer.block) * max(layer.block, lanes) + lanes + 7


def layer_norm_cycles(d: int) -> int:
    """Cycles of one :class:`rtl.layernorm.LayerNorm` row (three passes and the inverse square root)."""
    return 3 * d + 94


def predict_cycles(fpga: FixedPointPredictor, lanes: int, block_cycles: dict[int, int]) -> dict[str, int]:
    """Cycles of one ``predict`` (a window of ``history`` tokens, nothing reused) on units with ``lanes`` MAC lanes,
    one unit active at a time (as :class:`rtl.block.AdaLNBlock` runs): the measured block simulations
    (``block_cycles``: block index -> cycles) plus the other layers by :func:`linear_cycles` and the elementwise
    units at one element a cycle. An estimate: the parts outside the blocks are not simulated end to end."""
    cfg, lin = fpga.config, fpga.layers
    t, d = cfg.history, cfg.predictor_dim
    streams = 8  # start-up and drain of an elementwise pass (measured 6-8)
    parts = {
        "input projection": linear_cycles(lin["predictor.input"], t, lanes),
        "action encoder (conv, mlp.0, SiLU, mlp.2, SiLU)": sum(
            linear_cycles(lin[f"predictor.action_encoder.{name}"], t, lanes) for name in ("conv", "mlp.0", "mlp.2")
        )
        + t * (lin["predictor.action_encoder.mlp.0"].out_features + d)
        + 2 * streams,
        "modulations (3 x modulation.1)": sum(
            linear_cycles(lin[f"predictor.blocks.{i}.modulation.1"], t, lanes) for i in range(cfg.predictor_depth)
        ),
        "positional embedding": t * d + streams,
        "blocks (simulated)": sum(block_cycles.values()),
        "final norm": layer_norm_cycles(d),
        "projector (q8, BatchNorm, GELU, q8)": linear_cycles(lin["predictor.projector.0"], 1, lanes)
        + linear_cycles(lin["predictor.projector.3"], 1, lanes)
        + 2 * (lin["predictor.projector.0"].out_features + streams),
    }
    parts["total"] = sum(parts.values())
    return parts
