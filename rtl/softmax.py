"""Softmax as in ``numba_kernels.fixed_point.attention_fixed``: the maximum, ``exp(score - max)`` from the
``2**(i/256)`` ROM (:class:`ExpNeg`, bit-exact with ``exp_neg``), the sum, one integer division per query
(:class:`Divider`) and the normalization to Q30 (:class:`Softmax`).

The reference, for one query's scores (int64, already scaled by ``1/sqrt(head_dim)``)::

    top = max(score);  p_s = exp_neg(score_s - top)           # Q30, p_top = 2**30 exactly
    recip = (2**61 + sum(p)) // (2 * sum(p))                  # 2**60 / sum, rounded
    p_s = round_shift(p_s * recip, 30)

``exp_neg(u)`` (u <= 0, F fraction bits)::

    u < -(32 << F) -> 0
    w = round_shift(u * LOG2E_Q30, F - 2)                     # u log2 e, 32 fraction bits
    n = w >> 32;  i = (w >> 24) & 255;  rem = w & (2**24 - 1)
    v = T[i] + round_shift((T[i+1] - T[i]) * rem, 24)         # T = EXP2_TABLE, Q30
    exp = round_shift(v, -n)                                  # a rounded right shift by -n (0..47)
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import delayed, pipelined_multiply, round_shift_const
from rtl.reference import EXP2_INDEX_BITS, LOG2E_Q30, PROB_BITS, exp2_rom

PROB_OUT_BITS = PROB_BITS + 1  # exp and the normalized probabilities are at most 2**30


class ExpNeg(wiring.Component):
    """``exp_neg``: exp(u) in Q30 for an int64 ``u <= 0`` with F fraction bits; a 12-stage stream pipeline.

    Streams ``i`` (payload signed 64: u) and ``o`` (payload unsigned 31). The ROM is the reference's
    ``EXP2_TABLE``, read at ``i`` and ``i + 1``. Backpressure stalls the pipeline.
    """

    LATENCY = 12

    def __init__(self, frac: int = 16) -> None:
        self.frac = frac
        super().__init__({"i": In(stream.Signature(signed(64))), "o": Out(stream.Signature(unsigned(PROB_OUT_BITS)))})

    def elaborate(self, platform) -> Module:
        m = Module()
        frac = self.frac
        table = exp2_rom()
        m.submodules.rom = rom = memory.Memory(shape=unsigned(PROB_BITS + 2), depth=len(table), init=table)
        lo_port, hi_port = rom.read_port(), rom.read_port()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en), lo_port.en.eq(en), hi_port.en.eq(en)]

        u_bits = frac + 7  # -(32 << F) <= u <= 0
        frac_bits = 32 - EXP2_INDEX_BITS
        with m.If(en):
            # 1: the cut at -32 and u registered; 2-3: u * log2(e) (two-stage multiplier)
            valid, zero, u1 = Signal(), Signal(), Signal(signed(u_bits))
            m.d.sync += [valid.eq(self.i.valid), zero.eq(self.i.payload < -(32 << frac)), u1.eq(self.i.payload)]
            prod = pipelined_multiply(m, u1, Const(LOG2E_Q30, signed(32)), name="log2e")
            # 4: w = u log2 e with 32 fraction bits; its top fraction bits address the ROM (answer in 5)
            w = Signal(signed(u_bits + 32))
            m.d.sync += w.eq(round_shift_const(prod, frac - 2))
            m.d.comb += [lo_port.addr.eq(w[frac_bits:32]), hi_port.addr.eq(w[frac_bits:32] + 1)]
            n5, rem5 = delayed(m, (w >> 32)[:8].as_signed(), 1, "n"), delayed(m, w[:frac_bits], 1, "rem")
            # 6: the ROM words registered; 7: their difference; 8-9: times the remainder
            lo6, hi6 = Signal(unsigned(PROB_BITS + 2)), Signal(unsigned(PROB_BITS + 2))
            m.d.sync += [lo6.eq(lo_port.data), hi6.eq(hi_port.data)]
            base7, diff7 = Signal(unsigned(PROB_BITS + 2)), Signal(signed(PROB_BITS + 3))
            m.d.sync += [base7.eq(lo6), diff7.eq(hi6 - lo6)]
            rem7 = delayed(m, rem5, 2, "rem_d")
            interp = pipelined_multiply(m, diff7, Cat(rem7, Const(0, 1)).as_signed(), name="interp")
            # 10: v = T[i] + the rounded interpolation; 11-12: v * 2**n, a rounded right shift by -n
            v10 = Signal(signed(PROB_BITS + 3))
            m.d.sync += v10.eq(delayed(m, base7, 2, "base") + round_shift_const(interp, frac_bits))
            shift10 = delayed(m, (-n5)[:6].as_unsigned(), 5, "shift")
            pre, is_right = Signal(signed(PROB_BITS + 3)), Signal()
            m.d.sync += [pre.eq(v10 >> (shift10 - 1)[:6]), is_right.eq(shift10 != 0)]
            pre_v = delayed(m, v10, 1, "v")
            out = Mux(is_right, (pre + 1) >> 1, pre_v)
            zero11 = delayed(m, zero, self.LATENCY - 2, "zero")
            m.d.sync += [
                self.o.valid.eq(delayed(m, valid, self.LATENCY - 2, "valid")),
                self.o.payload.eq(Mux(zero11, 0, out)),
            ]
        return m


class Divider(wiring.Component):
    """Unsigned restoring division, one quotient bit a cycle: ``q = num // den`` (start / done).

    Precondition: the quotient fits ``q_bits`` (``num < den << q_bits``); the softmax guarantees it
    (``sum >= 2**30``, so ``(2**61 + sum) // (2 sum) <= 2**30``). ``q_bits + 1`` cycles from start to done.
    """

    def __init__(self, num_bits: int, den_bits: int, q_bits: int) -> None:
        self.num_bits, self.den_bits, self.q_bits = num_bits, den_bits, q_bits
        super().__init__(
            {
                "start": In(1),
                "num": In(unsigned(num_bits)),
                "den": In(unsigned(den_bits)),
                "busy": Out(1),
                "done": Out(1),
                "q": Out(unsigned(q_bits)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        rem = Signal(unsigned(max(self.num_bits, self.den_bits + self.q_bits)))
        dsh = Signal(unsigned(self.den_bits + self.q_bits))
        step = Signal(range(self.q_bits + 1))
        m.d.sync += self.done.eq(0)
        with m.If(self.start & ~self.busy):
            m.d.sync += [
                rem.eq(self.num),
                dsh.eq(self.den << (self.q_bits - 1)),
                self.q.eq(0),
                step.eq(self.q_bits),
                self.busy.eq(1),
            ]
        with m.Elif(self.busy):
            fits = rem >= dsh
            m.d.sync += [
                rem.eq(Mux(fits, rem - dsh, rem)),
                self.q.eq((self.q << 1) | fits),
                dsh.eq(dsh >> 1),
                step.eq(step - 1),
            ]
            with m.If(step == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        return m


class Softmax(wiring.Component):
    """The normalized Q30 probabilities of ``count`` int64 scores (one attention query), start / done.

    Args:
        t_max: the most scores (keys) one run may take. frac: activation fraction bits F.

    Ports: ``start`` with ``count`` (1..t_max); ``score_addr`` / ``score_data`` read the scores
    (synchronous, one cycle latency); ``p_addr`` / ``p_data`` / ``p_en`` write the probabilities; ``recip``
    holds the run's ``2**60 / sum`` (for tests). Passes: max, sum of exps, the division, exps again
    times the reciprocal; about ``3 count + 50`` cycles.
    """

    def __init__(self, t_max: int, frac: int = 16) -> None:
        self.t_max, self.frac = t_max, frac
        self.sum_bits = PROB_OUT_BITS + t_max.bit_length()
        super().__init__(
            {
                "start": In(1),
                "count": In(range(1, t_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "score_addr": Out(range(t_max)),
                "score_data": In(signed(64)),
                "p_addr": Out(range(t_max)),
                "p_data": Out(unsigned(PROB_OUT_BITS)),
                "p_en": Out(1),
                "recip": Out(unsigned(PROB_OUT_BITS)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.exp = exp = ExpNeg(self.frac)
        m.submodules.div = div = Divider(62, self.sum_bits + 1, PROB_OUT_BITS)
        top = Signal(signed(64))
        total = Signal(unsigned(self.sum_bits))
        count = Signal.like(self.count)
        j, issuing, r_valid = Signal(range(self.t_max + 1)), Signal(), Signal()
        out_j = Signal(range(self.t_max + 1))
        m.d.comb += [self.score_addr.eq(j), exp.o.ready.eq(1)]
        m.d.sync += [r_valid.eq(0), self.done.eq(0)]
        with m.If(issuing):
            m.d.sync += [r_valid.eq(1), j.eq(j + 1)]
            with m.If(j == count - 1):
                m.d.sync += issuing.eq(0)
        # u = score - top <= 0, registered on its way into the exp pipeline
        u, u_valid = Signal(signed(65)), Signal()
        m.d.comb += u.eq(self.score_data - top)
        m.d.sync += [exp.i.payload.eq(Mux(u < -(2**63), -(2**63), u)), u_valid.eq(r_valid)]
        m.d.comb += [div.num.eq((1 << 61) + total), div.den.eq(total << 1), self.recip.eq(div.q)]
        # p * recip through a two-stage multiplier; the write follows two cycles behind the exp output
        normalizing = Signal()
        prob = pipelined_multiply(m, Cat(exp.o.payload, 0).as_signed(), Cat(div.q, 0).as_signed(), name="norm")
        write_valid = delayed(m, exp.o.valid & normalizing, 2, "norm_valid")
        write_addr = delayed(m, out_j, 2, "norm_addr")
        m.d.sync += [
            self.p_en.eq(write_valid),
            self.p_addr.eq(write_addr),
            self.p_data.eq(round_shift_const(prob, PROB_BITS)),
        ]
        drain = Signal(range(4))

        def start_pass() -> list:
            return [issuing.eq(1), j.eq(0), out_j.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [count.eq(self.count), top.eq(-(2**63)), total.eq(0), *start_pass()]
                    m.next = "MAX"
            with m.State("MAX"):
                m.d.comb += self.busy.eq(1)
                with m.If(r_valid & (self.score_data > top)):
                    m.d.sync += top.eq(self.score_data)
                with m.If(~issuing & ~r_valid):
                    m.d.sync += start_pass()
                    m.next = "SUM"
            with m.State("SUM"):
                m.d.comb += [self.busy.eq(1), exp.i.valid.eq(u_valid)]
                with m.If(exp.o.valid):
                    m.d.sync += [total.eq(total + exp.o.payload), out_j.eq(out_j + 1)]
                    with m.If(out_j == count - 1):
                        m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += [self.busy.eq(1), div.start.eq(~div.busy & ~div.done)]
                with m.If(div.done):
                    m.d.sync += start_pass()
                    m.next = "NORMALIZE"
            with m.State("NORMALIZE"):
                m.d.comb += [self.busy.eq(1), exp.i.valid.eq(u_valid), normalizing.eq(1)]
                with m.If(exp.o.valid):
                    m.d.sync += out_j.eq(out_j + 1)
                    with m.If(out_j == count - 1):
                        m.d.sync += drain.eq(0)
                        m.next = "FINISH"
            with m.State("FINISH"):  # the multiplier and the write drain; done follows the last write
                m.d.comb += self.busy.eq(1)
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == 2):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
        return m
