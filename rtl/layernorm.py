"""LayerNorm over one row of ``d`` int32 activations, bit-exact with ``numba_kernels.fixed_point.layer_norm_fixed``
(affine, for the final norm, or adaLN-modulated, for the block norms).

The reference, for one row (no division anywhere)::

    total = sum(x);  c_j = d * x_j - total                 # the centred values times d, exactly
    k     = max(bit_length(max |c|) - 24, F - 24)           # block-float shift to 24 bits
    c'_j  = round_shift(c_j, k);  a = sum(c'^2) + round_shift(eps_q, 40 - 2F + 2k)
    r, s  = inv_sqrt(a)                                     # seed ROM + 3 Newton steps
    g     = round_shift(r * sqrt_d_q, 31);  v_j = round_shift(c'_j * g, 38 + s/2 - F)
    y_j   = round_shift(v_j * w_j, 20) + b_j               # affine, or
    y_j   = round_shift(v_j * ((1 << F) + scale_j), F) + shift_j   # modulated; then saturate32

The unit does it in three passes over the row (one element a cycle each) and a short sequential
inverse square root between them:

1. ``total``, ``max x`` and ``min x`` (so ``max |c| = max(d max x - total, total - d min x)``: no pass of its own);
2. ``sum(c'^2)`` (``c'`` recomputed from x);
3. the output ``y_j`` (``c'`` recomputed again), written as it leaves the pipeline.

One multiplier (34 x 34 bits, three pipelined cycles) serves pass 2's squares, the Newton steps and
pass 3's ``c' * g``; a second one pass 3's gain. The eps term per ``k`` is a small ROM computed by the
reference's own ``round_shift`` (:func:`rtl.reference.layer_norm_eps_rom`); the seed ROM is the
reference's ``ISQRT_SEEDS``.

Cycles: ``3 d + 94`` (three passes with their pipeline drains, 4 cycles per Newton multiply).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import (
    bit_length_signed,
    const_multiply,
    delayed,
    pipelined_multiply,
    round_shift_const,
    round_shift_var,
    saturate,
)
from rtl.reference import COEF_BITS, isqrt_seeds, layer_norm_constants, layer_norm_eps_rom, layer_norm_k_range

MODES = ("affine", "modulated", "plain")
MUL_BITS = 34  # the shared multiplier's signed operands: r, t, 3 - p < 2**32 (+ rounding), c' <= 2**24, g < 2**30


class LayerNorm(wiring.Component):
    """Integer LayerNorm of one row (start / done handshake) with the reference's inverse square root.

    Args:
        d: row width. frac: activation fraction bits F.
        mode: ``"affine"`` (``coef_a`` = weight Q.20, ``coef_b`` = bias), ``"modulated"`` (``coef_a`` = scale,
            ``coef_b`` = shift, both in the activation format) or ``"plain"`` (no coefficients).

    Ports: ``start`` pulse (while idle), ``busy``, ``done`` pulse. ``addr`` reads x and both coefficient
    memories at once (synchronous, one cycle latency): ``x_data``, ``coef_a``, ``coef_b``. ``y_addr`` /
    ``y_data`` / ``y_en`` write the outputs. ``inv_sqrt_r`` / ``inv_sqrt_s`` expose the row's inverse
    square root (for tests).
    """

    def __init__(self, d: int, frac: int = 16, mode: str = "modulated") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.d, self.frac, self.mode = d, frac, mode
        self.k_lo, self.k_hi = layer_norm_k_range(d, frac)
        super().__init__(
            {
                "start": In(1),
                "busy": Out(1),
                "done": Out(1),
                "addr": Out(range(d)),
                "x_data": In(signed(32)),
                "coef_a": In(signed(32)),
                "coef_b": In(signed(32)),
                "y_addr": Out(range(d)),
                "y_data": Out(signed(32)),
                "y_en": Out(1),
                "inv_sqrt_r": Out(signed(MUL_BITS)),
                "inv_sqrt_s": Out(signed(8)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        d, frac = self.d, self.frac
        db = d.bit_length()
        _, sqrt_d_q = layer_norm_constants(d)
        eps_rom = layer_norm_eps_rom(d, frac)
        seeds = isqrt_seeds()

        total = Signal(signed(32 + db + 1))
        xmax, xmin = Signal(signed(32)), Signal(signed(32))
        c_bits = 32 + 2 * db + 2
        c_hi, c_lo = Signal(signed(c_bits)), Signal(signed(c_bits))
        cmax = Signal(unsigned(c_bits))
        bl = Signal(signed(8))
        k = Signal(signed(8))
        eps_k = Signal(unsigned(max(v.bit_length() for v in eps_rom) + 1))
        sq = Signal(unsigned(2 * 25 + db + 1))
        a = Signal(unsigned(len(sq) + 1))
        s = Signal(signed(8))  # inv_sqrt's even normalization shift
        m_pre, m_right = Signal(signed(len(a) + 31)), Signal()
        mm = Signal(signed(MUL_BITS))  # m in [2**28, 2**30]
        r = Signal(signed(MUL_BITS))
        t = Signal(signed(MUL_BITS))
        pq = Signal(signed(MUL_BITS))
        g = Signal(signed(MUL_BITS))
        out_shift = Signal(signed(8))
        newton = Signal(range(4))

        # the shared multiplier: operands chosen by the state (combinational), registered, then two pipelined
        # cycles: the product is there three cycles after the operands
        mul_a, mul_b = Signal(signed(MUL_BITS)), Signal(signed(MUL_BITS))
        mul_p = pipelined_multiply(m, delayed(m, mul_a, 1, "mul_a"), delayed(m, mul_b, 1, "mul_b"), name="ln_mul")

        # pass machinery: an issue counter and a valid flag (and element index) per pipeline stage
        j, issuing = Signal(range(d + 1)), Signal()
        stages = 13
        valid = [Signal(name=f"v{i}") for i in range(stages + 1)]
        index = [Signal(range(d), name=f"j{i}") for i in range(stages + 1)]
        m.d.comb += [valid[0].eq(issuing), index[0].eq(j), self.addr.eq(j)]
        for i in range(stages):
            m.d.sync += [valid[i + 1].eq(valid[i]), index[i + 1].eq(index[i])]
        pipeline_empty = ~issuing
        for v in valid[1:]:
            pipeline_empty = pipeline_empty & ~v
        with m.If(issuing):
            m.d.sync += j.eq(j + 1)
            with m.If(j == d - 1):
                m.d.sync += issuing.eq(0)

        # the per-element datapath, shared by passes 2 and 3 (stage numbers: when a value is valid)
        # 1: the memories answer; 2: their words registered (a block RAM's output is slow: nothing behind it)
        x2 = Signal(signed(32))
        m.d.sync += x2.eq(self.x_data)
        c_raw = Signal(signed(c_bits))  # 3: d x - total
        cp = Signal(signed(26))  # 4: c' = round_shift(c, k), |c'| <= 2**24 (then the multiplier: 7)
        v_pre, v_right = Signal(signed(2 * MUL_BITS)), Signal()  # 8: c' g shifted by out_shift - 1
        v_bits = frac + (d.bit_length() + 1) // 2 + 3  # |v| <= sqrt(d) * 2**F
        vv = Signal(signed(v_bits))  # 9: v = round_shift(c' g, out_shift) (then the gain multiplier: 11)
        y12 = Signal(signed(v_bits + 34))  # 12: the gain's rounding plus the offset
        ca = [Signal(signed(34), name=f"ca{i}") for i in range(stages + 1)]
        cb = [Signal(signed(32), name=f"cb{i}") for i in range(stages + 1)]
        m.d.sync += [ca[2].eq(self.coef_a), cb[2].eq(self.coef_b)]
        m.d.sync += ca[3].eq((1 << frac) + ca[2] if self.mode == "modulated" else ca[2])  # 1 + scale
        m.d.sync += cb[3].eq(cb[2])
        for i in range(3, stages):
            m.d.sync += [ca[i + 1].eq(ca[i]), cb[i + 1].eq(cb[i])]
        m.d.sync += [
            c_raw.eq(const_multiply(x2, d) - total),
            cp.eq(round_shift_var(c_raw, k, left_max=24 - frac if frac < 24 else 0, right_max=self.k_hi)),
            v_pre.eq(mul_p >> (out_shift - 1)[:6].as_unsigned()),  # out_shift >= 1 for F <= 23
            v_right.eq(out_shift > 0),
            vv.eq(Mux(v_right, (v_pre + 1) >> 1, delayed(m, mul_p, 1, "v_exact"))[:v_bits]),
        ]
        gain = pipelined_multiply(m, vv, ca[9], name="ln_gain")  # valid at 11
        if self.mode == "affine":
            m.d.sync += y12.eq(round_shift_const(gain, COEF_BITS) + cb[11])
        elif self.mode == "modulated":
            m.d.sync += y12.eq(round_shift_const(gain, frac) + cb[11])
        else:
            m.d.sync += y12.eq(delayed(m, vv, 2, "plain"))

        m.d.sync += [self.done.eq(0), self.y_en.eq(0)]
        m.d.comb += [self.inv_sqrt_r.eq(r), self.inv_sqrt_s.eq(s)]
        three = Const(3 << 30, signed(MUL_BITS))

        def busy(m_: Module) -> None:
            m_.d.comb += self.busy.eq(1)

        def multiply_state(name: str, a_op, b_op, next_name: str) -> None:
            """Operands into the multiplier, then two cycles of waiting: the product is ready in ``next_name``."""
            with m.State(name):
                busy(m)
                m.d.comb += [mul_a.eq(a_op), mul_b.eq(b_op)]
                m.next = name + "_WAIT"
            with m.State(name + "_WAIT"):
                busy(m)
                m.next = name + "_WAIT2"
            with m.State(name + "_WAIT2"):
                busy(m)
                m.next = next_name

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        issuing.eq(1),
                        j.eq(0),
                        total.eq(0),
                        xmax.eq(-(2**31)),
                        xmin.eq(2**31 - 1),
                        sq.eq(0),
                    ]
                    m.next = "SUM"
            with m.State("SUM"):  # pass 1: sum, max, min
                busy(m)
                with m.If(valid[2]):
                    m.d.sync += [
                        total.eq(total + x2),
                        xmax.eq(Mux(x2 > xmax, x2, xmax)),
                        xmin.eq(Mux(x2 < xmin, x2, xmin)),
                    ]
                with m.If(pipeline_empty):
                    m.next = "CMAX"
            with m.State("CMAX"):  # max |c| = max(d max x - total, total - d min x)
                busy(m)
                m.d.sync += [c_hi.eq(const_multiply(xmax, d) - total), c_lo.eq(total - const_multiply(xmin, d))]
                m.next = "CMAX2"
            with m.State("CMAX2"):
                busy(m)
                m.d.sync += cmax.eq(Mux(c_hi > c_lo, c_hi, c_lo))
                m.next = "SHIFT"
            with m.State("SHIFT"):  # k = max(bit_length(max |c|) - 24, F - 24)
                busy(m)
                m.d.sync += bl.eq(bit_length_signed(cmax) - 24)
                m.next = "SHIFT2"
            with m.State("SHIFT2"):
                busy(m)
                m.d.sync += k.eq(Mux(bl > frac - 24, bl, frac - 24))
                m.next = "EPS"
            with m.State("EPS"):  # the eps term for this k, then pass 2
                busy(m)
                m.d.sync += eps_k.eq(Array(Const(v, len(eps_k)) for v in eps_rom)[(k - self.k_lo)[:6]])
                m.d.sync += [issuing.eq(1), j.eq(0)]
                m.next = "SQUARES"
            with m.State("SQUARES"):  # pass 2: sum of c'^2
                busy(m)
                m.d.comb += [mul_a.eq(cp), mul_b.eq(cp)]  # operands at 4, product at 7
                with m.If(valid[7]):
                    m.d.sync += sq.eq(sq + mul_p.as_unsigned()[: len(sq)])
                with m.If(pipeline_empty):
                    m.next = "ISQRT_A"
            # inv_sqrt(a): s = even shift to m in [2**28, 2**30], seed, three Newton steps
            with m.State("ISQRT_A"):
                busy(m)
                m.d.sync += a.eq(sq + eps_k)
                m.next = "ISQRT_S"
            with m.State("ISQRT_S"):
                busy(m)
                m.d.sync += bl.eq(bit_length_signed(a) - 30)
                m.next = "ISQRT_S2"
            with m.State("ISQRT_S2"):
                busy(m)
                m.d.sync += s.eq(bl + bl[0])
                m.next = "ISQRT_M"
            with m.State("ISQRT_M"):  # m = round_shift(a, s): the shift, then the rounding
                busy(m)
                a_signed = Cat(a, Const(0, 1)).as_signed()
                m.d.sync += [
                    m_pre.eq(Mux(s > 0, a_signed >> (s - 1)[:6].as_unsigned(), a_signed << (-s)[:5].as_unsigned())),
                    m_right.eq(s > 0),
                ]
                m.next = "ISQRT_M2"
            with m.State("ISQRT_M2"):
                busy(m)
                m.d.sync += mm.eq(Mux(m_right, (m_pre + 1) >> 1, m_pre))
                m.next = "ISQRT_SEED"
            with m.State("ISQRT_SEED"):
                busy(m)
                seed_rom = Array(Const(v, signed(MUL_BITS)) for v in seeds)
                m.d.sync += [r.eq(seed_rom[((mm >> 24) - 16)[:6]]), newton.eq(0)]
                m.next = "N_RR"
            multiply_state("N_RR", r, r, "N_T")  # t = round_shift(r * r, 31)
            with m.State("N_T"):
                busy(m)
                m.d.sync += t.eq(round_shift_const(mul_p, 31))
                m.next = "N_MT"
            multiply_state("N_MT", mm, t, "N_P")  # p = round_shift(m * t, 29)
            with m.State("N_P"):
                busy(m)
                m.d.sync += pq.eq(round_shift_const(mul_p, 29))
                m.next = "N_R3"
            multiply_state("N_R3", r, three - pq, "N_R")  # r = round_shift(r * (3 - p), 31)
            with m.State("N_R"):
                busy(m)
                m.d.sync += [r.eq(round_shift_const(mul_p, 31)), newton.eq(newton + 1)]
                with m.If(newton == 2):
                    m.next = "GAIN_MUL"
                with m.Else():
                    m.next = "N_RR"
            multiply_state("GAIN_MUL", r, sqrt_d_q, "GAIN")  # g = round_shift(r * sqrt_d_q, 31)
            with m.State("GAIN"):
                busy(m)
                m.d.sync += [
                    g.eq(round_shift_const(mul_p, 31)),
                    out_shift.eq(38 + (s >> 1) - frac),
                    issuing.eq(1),
                    j.eq(0),
                ]
                m.next = "OUTPUT"
            with m.State("OUTPUT"):  # pass 3: c' * g, the shift, the gain and offset, the store
                busy(m)
                m.d.comb += [mul_a.eq(cp), mul_b.eq(g)]
                with m.If(valid[12]):
                    m.d.sync += [self.y_en.eq(1), self.y_addr.eq(index[12]), self.y_data.eq(saturate(y12, 32))]
                with m.If(pipeline_empty):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
        return m
