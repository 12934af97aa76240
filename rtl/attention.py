"""Causal multi-head softmax attention over the qkv rows of T tokens, bit-exact with
``numba_kernels.fixed_point.attention_fixed``.

For each head h and query t (from ``first_query``), as the reference::

    for s <= t:  dot = 0; for j < hd: dot = clamp(dot + q[t, j] * k[s, j], +-DOT_LIMIT)   # saturating
                 score = clamp(round_shift(dot, F), +-SCORE_LIMIT)
                 scores[s] = round_shift(score * round(2**20 / sqrt(hd)), 20)
    p = softmax(scores)                                    # rtl.softmax.Softmax, Q30
    out[t, j] = saturate32(round_shift(sum_s p[s] * v[s, j], 30))

One multiplier (two pipeline stages) serves the dot products, the score scaling and ``p * v``; the qkv
memory is read through two ports (q and k together). Cycles per (head, query t): about
``2 (t + 1) hd + 3 (t + 1) + 70``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import const_multiply, pipelined_multiply, round_shift_const, saturate
from rtl.reference import COEF_BITS, DOT_LIMIT, PROB_BITS, SCORE_LIMIT, inv_sqrt_head_dim_q
from rtl.softmax import PROB_OUT_BITS, Softmax

MUL_A_BITS, MUL_B_BITS = 44, 33  # score (|s| < 2**42) x inv_q; q x k and p x v (32 / 31 bits)


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


class Attention(wiring.Component):
    """Causal attention of ``heads`` heads on qkv int32 rows [T, 3d] -> [T - first_query, d] (start / done).

    Args:
        d: model width (``3 d`` qkv columns). heads: heads (``d / heads`` = head_dim). t_max: most tokens.
        frac: activation fraction bits F.

    Ports: ``start`` with ``tokens`` (1..t_max) and ``first_query`` (< tokens); ``qkv_addr_a`` / ``qkv_data_a``
    and ``qkv_addr_b`` / ``qkv_data_b``: two synchronous read ports of the qkv memory (row t at ``t * 3d``);
    ``out_addr`` / ``out_data`` / ``out_en`` write the output (query t's row at ``(t - first_query) * d``).
    """

    def __init__(self, d: int, heads: int, t_max: int, frac: int = 16) -> None:
        if d % heads:
            raise ValueError(f"d={d} does not split into {heads} heads")
        self.d, self.heads, self.t_max, self.frac = d, heads, t_max, frac
        self.hd = d // heads
        self.inv_q = inv_sqrt_head_dim_q(self.hd)
        super().__init__(
            {
                "start": In(1),
                "tokens": In(range(1, t_max + 1)),
                "first_query": In(range(t_max)),
                "busy": Out(1),
                "done": Out(1),
                "qkv_addr_a": Out(_bits(t_max * 3 * d)),
                "qkv_data_a": In(signed(32)),
                "qkv_addr_b": Out(_bits(t_max * 3 * d)),
                "qkv_data_b": In(signed(32)),
                "out_addr": Out(_bits(t_max * d)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        d, hd, frac = self.d, self.hd, self.frac
        m.submodules.softmax = sm = Softmax(self.t_max, frac)
        m.submodules.scores = scores = memory.Memory(shape=signed(64), depth=self.t_max, init=[])
        m.submodules.probs = probs = memory.Memory(shape=unsigned(PROB_OUT_BITS), depth=self.t_max, init=[])
        score_w, score_r = scores.write_port(), scores.read_port()
        prob_w, prob_r = probs.write_port(), probs.read_port()
        m.d.comb += [
            score_r.addr.eq(sm.score_addr),
            sm.score_data.eq(score_r.data),
            prob_w.addr.eq(sm.p_addr),
            prob_w.data.eq(sm.p_data),
            prob_w.en.eq(sm.p_en),
        ]

        tokens, first_query = Signal.like(self.tokens), Signal.like(self.first_query)
        head = Signal(range(self.heads + 1))
        t, s = Signal(range(self.t_max + 1)), Signal(range(self.t_max + 1))
        j = Signal(range(hd + 1))
        issuing = Signal()
        # the multiplier: operands registered here, product two cycles later
        mul_a, mul_b = Signal(signed(MUL_A_BITS)), Signal(signed(MUL_B_BITS))
        product = pipelined_multiply(m, mul_a, mul_b, name="att")
        # flags travelling with a product: read (1) -> operands (2) -> partials (3) -> product (4)
        stages = 4
        valid = [Signal(name=f"av{i}") for i in range(stages + 1)]
        last = [Signal(name=f"al{i}") for i in range(stages + 1)]
        first = [Signal(name=f"af{i}") for i in range(stages + 1)]
        for i in range(stages):
            m.d.sync += [valid[i + 1].eq(valid[i]), last[i + 1].eq(last[i]), first[i + 1].eq(first[i])]
        idle_pipe = ~issuing
        for v in valid[1:]:
            idle_pipe = idle_pipe & ~v

        row3 = 3 * d
        # running addresses (registers, so that no multiplier sits in front of a memory address)
        addr_bits = len(self.qkv_addr_a)
        q_base, k_base = Signal(addr_bits), Signal(addr_bits)  # q[t, head], k[s, head]
        v_row, v_col = Signal(addr_bits), Signal(addr_bits)  # s * 3d; 2d + head * hd + j
        head_col = Signal(addr_bits)  # head * hd
        out_base = Signal(range(self.t_max * d + 1))
        m.d.comb += head_col.eq(const_multiply(head, hd))
        dot = Signal(signed(64))
        acc = Signal(signed(PROB_OUT_BITS + 32 + self.t_max.bit_length() + 1))
        out_index = Signal(range(self.t_max * d + 1))
        finished = Signal()
        m.d.sync += [self.done.eq(0), self.out_en.eq(0), score_w.en.eq(0), finished.eq(0)]
        m.d.comb += sm.count.eq(t + 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        tokens.eq(self.tokens),
                        first_query.eq(self.first_query),
                        head.eq(0),
                        t.eq(self.first_query),
                    ]
                    m.next = "QUERY"
            with m.State("QUERY"):  # a new (head, query): its scores start at key 0
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    q_base.eq(const_multiply(t, row3) + head_col),
                    k_base.eq(d + head_col),
                    out_base.eq(const_multiply(t - first_query, d) + head_col),
                    s.eq(0),
                    j.eq(0),
                ]
                m.next = "QUERY2"
            with m.State("QUERY2"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += issuing.eq(1)
                m.next = "DOT"
            with m.State("DOT"):  # q[t] . k[s], one product a cycle, saturating after each
                m.d.comb += [
                    self.busy.eq(1),
                    valid[0].eq(issuing),
                    first[0].eq(j == 0),
                    last[0].eq(j == hd - 1),
                    self.qkv_addr_a.eq(q_base + j),
                    self.qkv_addr_b.eq(k_base + j),
                ]
                with m.If(issuing):
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == hd - 1):
                        m.d.sync += issuing.eq(0)
                m.d.sync += [mul_a.eq(self.qkv_data_a), mul_b.eq(self.qkv_data_b)]
                with m.If(valid[4]):
                    # clamp(dot + q k, +-DOT_LIMIT): |dot| < 2**62 and |q k| <= 2**62 keep the 64-bit sum exact,
                    # and its top bits decide: >= 2**62 is sign 0, bit 62 set; <= -2**62 is sign 1 with
                    # bits 62..0 <= 2**62 (no carry-chain comparison after the adder)
                    total = Signal(signed(64))
                    m.d.comb += total.eq(Mux(first[4], 0, dot) + product)
                    high = ~total[63] & total[62]
                    low = total[63] & (~total[62] | ~total[:62].any())
                    m.d.sync += dot.eq(Mux(high, DOT_LIMIT, Mux(low, -DOT_LIMIT, total)))
                with m.If(idle_pipe):
                    m.next = "SCORE"
            with m.State("SCORE"):  # clamp(round(dot * 2**-F)) * inv_q, through the multiplier
                m.d.comb += self.busy.eq(1)
                score = round_shift_const(dot, frac)
                clamped = Mux(score > SCORE_LIMIT, SCORE_LIMIT, Mux(score < -SCORE_LIMIT, -SCORE_LIMIT, score))
                m.d.sync += [mul_a.eq(clamped), mul_b.eq(self.inv_q), j.eq(0)]
                m.next = "SCORE_WAIT"
            with m.State("SCORE_WAIT"):  # 2 cycles of multiplier, then the write
                m.d.comb += self.busy.eq(1)
                m.d.sync += j.eq(j + 1)
                with m.If(j == 2):
                    m.d.sync += [
                        score_w.addr.eq(s),
                        score_w.data.eq(round_shift_const(product, COEF_BITS)),
                        score_w.en.eq(1),
                        s.eq(s + 1),
                        j.eq(0),
                        k_base.eq(k_base + row3),
                    ]
                    with m.If(s == t):
                        m.next = "SOFTMAX"
                    with m.Else():
                        m.d.sync += issuing.eq(1)
                        m.next = "DOT"
            with m.State("SOFTMAX"):
                m.d.comb += [self.busy.eq(1), sm.start.eq(~sm.busy & ~sm.done)]
                with m.If(sm.done):
                    m.d.sync += [s.eq(0), j.eq(0), issuing.eq(1), out_index.eq(out_base)]
                    m.d.sync += [v_row.eq(0), v_col.eq(2 * d + head_col)]
                    m.next = "PV"
            with m.State("PV"):  # out[t, j] = sum_s p[s] v[s, j]: for each j, the keys s = 0..t
                m.d.comb += [
                    self.busy.eq(1),
                    valid[0].eq(issuing),
                    first[0].eq(s == 0),
                    last[0].eq(s == t),
                    prob_r.addr.eq(s),
                    self.qkv_addr_b.eq(v_row + v_col),
                ]
                with m.If(issuing):
                    m.d.sync += [s.eq(s + 1), v_row.eq(v_row + row3)]
                    with m.If(s == t):
                        m.d.sync += [s.eq(0), j.eq(j + 1), v_row.eq(0), v_col.eq(v_col + 1)]
                        with m.If(j == hd - 1):
                            m.d.sync += issuing.eq(0)
                m.d.sync += [mul_a.eq(prob_r.data), mul_b.eq(self.qkv_data_b)]
                with m.If(valid[4]):
                    m.d.sync += [acc.eq(Mux(first[4], 0, acc) + product), finished.eq(last[4])]
                with m.If(finished):  # the sum of row j is complete: round, saturate, store (a cycle later)
                    m.d.sync += [
                        self.out_en.eq(1),
                        self.out_addr.eq(out_index),
                        self.out_data.eq(saturate(round_shift_const(acc, PROB_BITS), 32)),
                        out_index.eq(out_index + 1),
                    ]
                with m.If(idle_pipe):
                    m.next = "NEXT"
            with m.State("NEXT"):  # the next query, then the next head
                m.d.comb += self.busy.eq(1)
                m.d.sync += t.eq(t + 1)
                m.next = "QUERY"
                with m.If(t == tokens - 1):
                    m.d.sync += [t.eq(first_query), head.eq(head + 1)]
                    with m.If(head == self.heads - 1):
                        m.d.sync += self.done.eq(1)
                        m.next = "IDLE"
        return m
