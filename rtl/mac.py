"""Block-scaled multiply-accumulate, bit-exact with ``numba_kernels.fixed_point.block_linear``: one output of a
linear layer (:class:`MacLane`), and P outputs in parallel (:class:`MacArray`: P :class:`BlockSum` lanes
sharing one :class:`Scaler`).

Per output row ``n`` the reference computes, for each block of ``block`` weights::

    s    = sum_j shift_add(code[n, j], x[j])          # the code's shift-add tree, int64
    acc += round_shift(s * M[n, b], -(E[n, b] + 16))   # block scale: mantissa, then a power of two
    out  = saturate32(round_shift(acc, 16))            # acc started at the bias, F + 16 fraction bits

and the hardware does the same, one (x, code) beat per cycle:

1. ``code * x`` by the shift-add tree of the code's bits (4 partial products for Q4; no multiplier),
2. the block sum ``s`` (an adder; it restarts after each block's last beat),
3. ``s * M`` (once per block: two pipelined cycles of DSP partial products and their sum),
4. the block shift (two cycles: a barrel shifter, exact left or right, then the half-up rounding bit),
5. the row accumulator (signed 64 bits, starting at the bias),
6. after the row's last block, the rounding shift by ``ACC_GUARD_BITS`` and the int32 saturation.

:class:`MacLane` is the whole pipeline for one output (scales and bias in its beats). In :class:`MacArray`
only stages 1-2 are per lane: stages 3-6 run once per block per lane, so one shared scaler takes the P
block sums one a cycle after each block end (up to 32 lanes without a stall for 32-weight blocks), with
P accumulators, one multiplier and one shifter in all.

Why shift-add for ``code * x`` and a multiplier for ``s * M``: a 4-bit code has 4 partial products (three
adders of ~36 bits, no DSP), while an 18x18 DSP would need two of them per lane for a 32-bit activation,
and there is one product per lane per cycle; ``s * M`` (41 x 12 bits) happens once per 32 beats per lane,
so three DSPs serve the whole array (``rtl_synth.py`` measures the lane both ways: ``product="multiply"``).

The linear accumulator needs no saturation: ``FixedLinear.from_codes`` proves at load time that neither
``s * M`` nor the accumulator can pass 2**62 for any int32 input (as the 64-bit accumulator here), and the
packers in :mod:`rtl.layout` reject a layer whose fields do not fit the lane's widths.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import pipelined_multiply, round_shift_const, saturate, shift_add
from rtl.reference import ACC_GUARD_BITS


class MacFormat:
    """Field widths of a MAC lane.

    Args:
        code_bits: weight code width (4 for Q4_0, 8 for Q8_0 / INT8).
        block_max: most weights in one block (32 for Q4_0 / Q8_0; an INT8 row is one block of K).
        mant_bits: signed block mantissa width (12 holds an fp16 scale's 11 bits and sign; 18 an INT8 row's).
        shift_bits: signed block shift width (``E + 16``; 5 bits: -16..15, every fp16 scale gives -8..12).
        bias_bits: signed bias width in the accumulator format (48: |bias| < 2**15 at F = 16).
        product: ``"shift_add"`` (the reference's tree of the code's bits) or ``"multiply"`` (a ``*``).
    """

    def __init__(
        self,
        code_bits: int = 4,
        block_max: int = 32,
        mant_bits: int = 12,
        shift_bits: int = 5,
        bias_bits: int = 48,
        product: str = "shift_add",
    ) -> None:
        if product not in ("shift_add", "multiply"):
            raise ValueError(f"product must be 'shift_add' or 'multiply', got {product!r}")
        self.code_bits = code_bits
        self.block_max = block_max
        self.mant_bits = mant_bits
        self.shift_bits = shift_bits
        self.bias_bits = bias_bits
        self.product = product

    @property
    def product_bits(self) -> int:
        """Signed width of ``code * x``."""
        return 32 + self.code_bits

    @property
    def block_sum_bits(self) -> int:
        """Signed width of a block sum: ``block_max`` products."""
        return self.product_bits + max(1, (self.block_max - 1).bit_length())

    @property
    def shift_range(self) -> tuple[int, int]:
        """The block shifts the lane takes: ``(lowest, highest)``."""
        return -(2 ** (self.shift_bits - 1)), 2 ** (self.shift_bits - 1) - 1

    @classmethod
    def q8(cls, block_max: int = 32, mant_bits: int = 18) -> MacFormat:
        """8-bit codes (Q8_0, INT8 rows)."""
        return cls(code_bits=8, block_max=block_max, mant_bits=mant_bits)


ACC_BITS = 64  # the reference's int64 row accumulator


def lane_beat(fmt: MacFormat) -> data.StructLayout:
    """One lane's input beat: activation, code, block scale (read on a block's last beat), bias (read on a
    row's first beat) and the framing flags."""
    return data.StructLayout(
        {
            "x": signed(32),
            "code": signed(fmt.code_bits),
            "mant": signed(fmt.mant_bits),
            "shift": signed(fmt.shift_bits),
            "bias": signed(fmt.bias_bits),
            "first": 1,  # first beat of a row: the row's bias is on this beat
            "block_end": 1,  # last beat of a block: its mantissa and shift are on this beat
            "last": 1,  # last beat of the row (also a block end)
        }
    )


def array_beat(fmt: MacFormat, lanes: int) -> data.StructLayout:
    """A :class:`MacArray` beat: one activation shared by ``lanes`` lanes, each with its own code, and the
    framing flags (the block scales and biases arrive on the array's ``scales`` stream instead)."""
    return data.StructLayout(
        {"x": signed(32), "code": data.ArrayLayout(signed(fmt.code_bits), lanes), "first": 1, "block_end": 1, "last": 1}
    )


def scale_entry(fmt: MacFormat) -> data.StructLayout:
    """One lane's block scale for one block, and its row's bias (used on the row's first block only)."""
    return data.StructLayout(
        {"mant": signed(fmt.mant_bits), "shift": signed(fmt.shift_bits), "bias": signed(fmt.bias_bits)}
    )


def block_shift(m: Module, prod: Value, shift: Value, fmt: MacFormat) -> Value:
    """``round_shift(s * M, -shift)`` into the accumulator's 64 bits over two cycles: this cycle the barrel
    shifter (``prod >> (r - 1)`` for a right shift by ``r = -shift > 0``, else ``prod << shift``) into a
    register; the returned expression, valid one cycle later, adds the half-up rounding bit. Exact: the
    load-time check keeps the result inside 2**62. Call it inside the caller's clock-enable block."""
    lo, hi = fmt.shift_range
    amount = (-shift).as_signed()
    right = amount > 0
    pre = Signal(signed(len(prod) + hi), name="shift_pre")
    is_right = Signal(name="shift_right")
    r_bits, l_bits = max(1, (-lo).bit_length()), max(1, hi.bit_length())
    m.d.sync += [
        pre.eq(Mux(right, prod >> (amount - 1)[:r_bits].as_unsigned(), prod << (-amount)[:l_bits].as_unsigned())),
        is_right.eq(right),
    ]
    return Mux(is_right, ((pre + 1) >> 1).as_signed(), pre)[:ACC_BITS].as_signed()


def finish(acc: Value) -> Value:
    """``saturate32(round_shift(acc, ACC_GUARD_BITS))``: the layer's int32 output."""
    return saturate(round_shift_const(acc, ACC_GUARD_BITS), 32)


class MacCore(wiring.Component):
    """The single lane's pipeline with a clock enable and valid flags, no handshake (:class:`MacLane`'s core).

    Ports: ``en`` advances every stage; ``in_valid`` / ``beat`` the input; ``out_valid`` / ``out`` the
    int32 output, raised for one enabled cycle ``LATENCY`` beats after the row's last beat.
    """

    LATENCY = 8

    def __init__(self, fmt: MacFormat) -> None:
        self.fmt = fmt
        super().__init__(
            {
                "en": In(1),
                "in_valid": In(1),
                "beat": In(lane_beat(fmt)),
                "out_valid": Out(1),
                "out": Out(signed(32)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt, b = self.fmt, self.beat

        # 1. the product code * x
        p_valid, prod = Signal(), Signal(signed(fmt.product_bits))
        p_flags = Signal(data.StructLayout({"first": 1, "block_end": 1, "last": 1}))
        p_mant, p_shift, p_bias = Signal.like(b.mant), Signal.like(b.shift), Signal.like(b.bias)
        # 2. the block sum, restarting after each block end
        bsum, fresh = Signal(signed(fmt.block_sum_bits)), Signal(init=1)
        row_first_pending, row_bias = Signal(init=1), Signal.like(b.bias)
        s_valid, s_sum = Signal(), Signal(signed(fmt.block_sum_bits))
        s_mant, s_shift, s_bias = Signal.like(b.mant), Signal.like(b.shift), Signal.like(b.bias)
        s_first, s_last = Signal(), Signal()
        # 3. s * M
        w_valid, w_shift, w_bias, w_first, w_last = (
            Signal(),
            Signal.like(b.shift),
            Signal.like(b.bias),
            Signal(),
            Signal(),
        )
        m_valid, m_prod = Signal(), Signal(signed(fmt.block_sum_bits + fmt.mant_bits))
        m_shift, m_bias, m_first, m_last = Signal.like(b.shift), Signal.like(b.bias), Signal(), Signal()
        # 4. the block shift into the accumulator's format (two cycles: barrel shifter, rounding)
        q_valid, q_bias, q_first, q_last = Signal(), Signal.like(b.bias), Signal(), Signal()
        h_valid, h_val = Signal(), Signal(signed(ACC_BITS))
        h_bias, h_first, h_last = Signal.like(b.bias), Signal(), Signal()
        # 5. the row accumulator; 6. the output
        acc, f_valid = Signal(signed(ACC_BITS)), Signal()

        with m.If(self.en):
            m.d.sync += [
                p_valid.eq(self.in_valid),
                prod.eq(shift_add(b.code, b.x) if fmt.product == "shift_add" else b.code * b.x),
                p_flags.first.eq(b.first),
                p_flags.block_end.eq(b.block_end),
                p_flags.last.eq(b.last),
                p_mant.eq(b.mant),
                p_shift.eq(b.shift),
                p_bias.eq(b.bias),
            ]

            m.d.sync += s_valid.eq(0)
            with m.If(p_valid):
                total = Mux(fresh, 0, bsum) + prod  # a block's first beat starts from 0
                first_now = row_first_pending | p_flags.first
                bias_now = row_bias
                with m.If(p_flags.first):
                    m.d.sync += row_bias.eq(p_bias)
                    bias_now = p_bias
                with m.If(p_flags.block_end):
                    m.d.sync += [
                        s_valid.eq(1),
                        s_sum.eq(total),
                        s_mant.eq(p_mant),
                        s_shift.eq(p_shift),
                        s_bias.eq(bias_now),
                        s_first.eq(first_now),
                        s_last.eq(p_flags.last),
                        fresh.eq(1),
                        row_first_pending.eq(p_flags.last),
                    ]
                with m.Else():
                    m.d.sync += [bsum.eq(total), fresh.eq(0), row_first_pending.eq(first_now)]

            # s * M over two cycles (DSP partial products, then their sum): the sideband waits one in "w"
            m.d.comb += m_prod.eq(pipelined_multiply(m, s_sum, s_mant, name="scale"))
            m.d.sync += [
                w_valid.eq(s_valid),
                w_shift.eq(s_shift),
                w_bias.eq(s_bias),
                w_first.eq(s_first),
                w_last.eq(s_last),
                m_valid.eq(w_valid),
                m_shift.eq(w_shift),
                m_bias.eq(w_bias),
                m_first.eq(w_first),
                m_last.eq(w_last),
            ]

            shifted = block_shift(m, m_prod, m_shift, fmt)
            m.d.sync += [
                q_valid.eq(m_valid),
                q_bias.eq(m_bias),
                q_first.eq(m_first),
                q_last.eq(m_last),
                h_valid.eq(q_valid),
                h_val.eq(shifted),
                h_bias.eq(q_bias),
                h_first.eq(q_first),
                h_last.eq(q_last),
            ]

            m.d.sync += f_valid.eq(0)
            with m.If(h_valid):
                m.d.sync += [acc.eq(Mux(h_first, h_bias, acc) + h_val), f_valid.eq(h_last)]
            # 6. the rounding shift and the saturation, a stage of their own
            m.d.sync += [self.out_valid.eq(f_valid), self.out.eq(finish(acc))]
        return m


class MacLane(wiring.Component):
    """One output of a linear layer: a stream of :func:`lane_beat` beats (one per input k) in, the int32
    output out after each row's last beat.

    Streams: ``i`` (payload :func:`lane_beat`), ``o`` (payload int32). Backpressure stalls the whole
    pipeline (``i.ready = ~o.valid | o.ready``); with ``o.ready`` held high it takes a beat every cycle.
    """

    def __init__(self, fmt: MacFormat | None = None) -> None:
        self.fmt = fmt or MacFormat()
        super().__init__({"i": In(stream.Signature(lane_beat(self.fmt))), "o": Out(stream.Signature(signed(32)))})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = MacCore(self.fmt)
        en = Signal()
        m.d.comb += [
            en.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(en),
            core.en.eq(en),
            core.in_valid.eq(self.i.valid),
            core.beat.eq(self.i.payload),
            self.o.valid.eq(core.out_valid),
            self.o.payload.eq(core.out),
        ]
        return m


class BlockSum(wiring.Component):
    """Stages 1-2 of a lane, for :class:`MacArray`: ``code * x`` by shift-add and the block sum.

    Ports: ``en`` advances both stages; ``in_valid``, ``x``, ``code``, ``first`` / ``block_end`` / ``last`` the
    beat. ``sum`` holds the last completed block sum (it changes only when a block ends, so it doubles
    as the array's holding register); ``ending`` says the beat in stage 1 ends a block (``sum`` loads on the
    next enabled edge), with ``ending_first`` / ``ending_last``: it is the row's first / last block.
    """

    def __init__(self, fmt: MacFormat) -> None:
        self.fmt = fmt
        super().__init__(
            {
                "en": In(1),
                "in_valid": In(1),
                "x": In(signed(32)),
                "code": In(signed(fmt.code_bits)),
                "first": In(1),
                "block_end": In(1),
                "last": In(1),
                "sum": Out(signed(fmt.block_sum_bits)),
                "ending": Out(1),
                "ending_first": Out(1),
                "ending_last": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt = self.fmt
        p_valid, prod = Signal(), Signal(signed(fmt.product_bits))
        p_first, p_block_end, p_last = Signal(), Signal(), Signal()
        bsum, fresh, row_first_pending = Signal(signed(fmt.block_sum_bits)), Signal(init=1), Signal(init=1)
        first_now = row_first_pending | p_first
        m.d.comb += [
            self.ending.eq(p_valid & p_block_end),
            self.ending_first.eq(first_now),
            self.ending_last.eq(p_last),
        ]
        with m.If(self.en):
            m.d.sync += [
                p_valid.eq(self.in_valid),
                prod.eq(shift_add(self.code, self.x) if fmt.product == "shift_add" else self.code * self.x),
                p_first.eq(self.first),
                p_block_end.eq(self.block_end),
                p_last.eq(self.last),
            ]
            with m.If(p_valid):
                total = Mux(fresh, 0, bsum) + prod
                with m.If(p_block_end):
                    m.d.sync += [self.sum.eq(total), fresh.eq(1), row_first_pending.eq(p_last)]
                with m.Else():
                    m.d.sync += [bsum.eq(total), fresh.eq(0), row_first_pending.eq(first_now)]
        return m


class Scaler(wiring.Component):
    """Stages 3-5 shared by all lanes of a :class:`MacArray`: one (lane, block sum) job a cycle; ``s * M``,
    the block shift and that lane's accumulator (``lanes`` 64-bit registers), the int32 output after
    the row's last block. Six cycles from job to output, no stall.

    Ports: ``job_valid``, ``job_lane``, ``job_sum``, ``job_first`` (start the lane's accumulator at
    ``bias``), ``job_last`` (emit the output), ``mant`` / ``shift`` / ``bias``; ``out_valid``, ``out_lane``, ``out``.
    """

    LATENCY = 6

    def __init__(self, fmt: MacFormat, lanes: int) -> None:
        self.fmt, self.lanes = fmt, lanes
        super().__init__(
            {
                "job_valid": In(1),
                "job_lane": In(range(max(2, lanes))),
                "job_sum": In(signed(fmt.block_sum_bits)),
                "job_first": In(1),
                "job_last": In(1),
                "mant": In(signed(fmt.mant_bits)),
                "shift": In(signed(fmt.shift_bits)),
                "bias": In(signed(fmt.bias_bits)),
                "out_valid": Out(1),
                "out_lane": Out(range(max(2, lanes))),
                "out": Out(signed(32)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt = self.fmt
        lane3, lane_q, lane4 = Signal.like(self.job_lane), Signal.like(self.job_lane), Signal.like(self.job_lane)
        v3, first3, last3, bias3 = Signal(), Signal(), Signal(), Signal.like(self.bias)
        prod3, shift3 = Signal(signed(fmt.block_sum_bits + fmt.mant_bits)), Signal.like(self.shift)
        v_q, first_q, last_q, bias_q = Signal(), Signal(), Signal(), Signal.like(self.bias)
        v4, first4, last4, bias4, val4 = Signal(), Signal(), Signal(), Signal.like(self.bias), Signal(signed(ACC_BITS))
        accs = Array(Signal(signed(ACC_BITS), name=f"acc{lane}") for lane in range(self.lanes))
        # s * M over two cycles; the sideband waits one cycle in "w"
        v_w, lane_w, first_w, last_w = Signal(), Signal.like(self.job_lane), Signal(), Signal()
        bias_w, shift_w = Signal.like(self.bias), Signal.like(self.shift)
        m.d.comb += prod3.eq(pipelined_multiply(m, self.job_sum, self.mant, name="scale"))
        m.d.sync += [
            v_w.eq(self.job_valid),
            lane_w.eq(self.job_lane),
            first_w.eq(self.job_first),
            last_w.eq(self.job_last),
            bias_w.eq(self.bias),
            shift_w.eq(self.shift),
            v3.eq(v_w),
            lane3.eq(lane_w),
            first3.eq(first_w),
            last3.eq(last_w),
            bias3.eq(bias_w),
            shift3.eq(shift_w),
        ]
        shifted = block_shift(m, prod3, shift3, fmt)
        m.d.sync += [
            v_q.eq(v3),
            lane_q.eq(lane3),
            first_q.eq(first3),
            last_q.eq(last3),
            bias_q.eq(bias3),
            v4.eq(v_q),
            lane4.eq(lane_q),
            first4.eq(first_q),
            last4.eq(last_q),
            bias4.eq(bias_q),
            val4.eq(shifted),
        ]
        acc_next = Signal(signed(ACC_BITS))
        # the lane's accumulator is read a cycle early (while the shift rounds), bypassing the write of the
        # job ahead when it is the same lane (consecutive jobs of one lane: P = 1)
        acc_sel = Signal(signed(ACC_BITS))
        m.d.sync += acc_sel.eq(Mux(v4 & (lane4 == lane_q), acc_next, accs[lane_q]))
        v5, lane5, acc5 = Signal(), Signal.like(lane4), Signal(signed(ACC_BITS))
        m.d.comb += acc_next.eq(Mux(first4, bias4, acc_sel) + val4)
        m.d.sync += [v5.eq(v4 & last4), lane5.eq(lane4), acc5.eq(acc_next)]
        with m.If(v4):
            m.d.sync += accs[lane4].eq(acc_next)
        m.d.sync += [self.out_valid.eq(v5), self.out_lane.eq(lane5), self.out.eq(finish(acc5))]
        return m


class MacArray(wiring.Component):
    """``lanes`` outputs of a linear layer in parallel: P :class:`BlockSum` lanes (shift-add products and block
    sums, one activation broadcast to all) and one shared :class:`Scaler` (``s * M``, block shift,
    accumulators), which takes the P block sums one a cycle after each block end.

    A block of 32 beats leaves the scaler 32 cycles for P jobs, so up to 32 lanes run without a stall
    and need one multiplier and one shifter in all; a block shorter than P (an INT8 row of K < P) stalls
    the beats for the difference.

    Streams: ``i`` (payload :func:`array_beat`), ``scales`` (payload :func:`scale_entry`: one per job, in
    job order: for each block end, lanes 0..P-1), ``o`` (payload int32, the outputs in lane order,
    ``always_ready``: the consumer takes one whenever it is valid).
    """

    def __init__(self, lanes: int, fmt: MacFormat | None = None) -> None:
        self.lanes = lanes
        self.fmt = fmt or MacFormat()
        super().__init__(
            {
                "i": In(stream.Signature(array_beat(self.fmt, lanes))),
                "scales": In(stream.Signature(scale_entry(self.fmt))),
                "o": Out(stream.Signature(signed(32), always_ready=True)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes, fmt = self.lanes, self.fmt
        m.submodules.scaler = scaler = Scaler(fmt, lanes)
        remaining = Signal(range(lanes + 1))  # jobs left from the last block end
        lane = Signal(range(max(2, lanes)))
        job_first, job_last = Signal(), Signal()
        # remaining == 0 / == 1 kept as registers of their own: the stall decision is then two LUT levels
        # from flip-flops (it fans out to every lane's and the sequencer's clock enables)
        none_left, one_left = Signal(init=1), Signal()
        take = Signal()
        m.d.comb += take.eq(~none_left & self.scales.valid)
        free = none_left | (one_left & self.scales.valid)
        en = Signal()
        sums = []
        p = self.i.payload
        for index in range(lanes):
            bs = BlockSum(fmt)
            m.submodules[f"lane{index}"] = bs
            m.d.comb += [
                bs.en.eq(en),
                bs.in_valid.eq(self.i.valid),
                bs.x.eq(p.x),
                bs.code.eq(p.code[index]),
                bs.first.eq(p.first),
                bs.block_end.eq(p.block_end),
                bs.last.eq(p.last),
            ]
            sums.append(bs.sum)
            if index == 0:
                lane0 = bs
        # stall the lanes only when a block would end while the scaler still needs the previous sums
        m.d.comb += [en.eq(~lane0.ending | free), self.i.ready.eq(en)]
        with m.If(take):
            m.d.sync += [
                remaining.eq(remaining - 1),
                lane.eq(lane + 1),
                none_left.eq(remaining == 1),
                one_left.eq(remaining == 2),
            ]
        with m.If(lane0.ending & en):
            m.d.sync += [
                remaining.eq(lanes),
                none_left.eq(0),
                one_left.eq(lanes == 1),
                lane.eq(0),
                job_first.eq(lane0.ending_first),
                job_last.eq(lane0.ending_last),
            ]
        m.d.comb += self.scales.ready.eq(take)
        # the job (the lane's block sum picked by a P:1 multiplexer, its scale entry) is registered on its
        # way to the scaler, so that the multiplexer and the multiplier are not in one cycle
        m.d.sync += [
            scaler.job_valid.eq(take),
            scaler.job_lane.eq(lane),
            scaler.job_sum.eq(Array(sums)[lane]),
            scaler.job_first.eq(job_first),
            scaler.job_last.eq(job_last),
            scaler.mant.eq(self.scales.payload.mant),
            scaler.shift.eq(self.scales.payload.shift),
            scaler.bias.eq(self.scales.payload.bias),
        ]
        m.d.comb += [self.o.valid.eq(scaler.out_valid), self.o.payload.eq(scaler.out)]
        return m
