"""A whole linear layer ``[N, K]`` from block RAM: :class:`LinearSequencer` walks the code and activation
memories, feeding the :class:`~rtl.mac.MacArray` one beat per cycle, and the scale and bias memories,
feeding its scaler one job per cycle; :class:`LinearLayer` puts sequencer, array and memories together
(the memory layout is :mod:`rtl.layout`'s).

Loop order: for each input row r (a token), for each group g of P outputs, for each input k: one beat
(activation ``x[r, k]`` broadcast, the P codes of word ``g*K + k``). The scale reader runs ahead through
the jobs in the same order (group, block, lane), through a 4-entry FIFO. The P outputs of a group come
back one a cycle, in lane order, and are written at consecutive addresses: the output buffer is the
next layer's input buffer as it is (plain int32 words).

Cycles: ``rows * (N / P) * K`` beats back to back (when a block holds at least P weights), plus the read,
lane and scaler latencies and the last group's P jobs: ``rows * N * K / P + P + 7`` to ``+ P + 11``
(:func:`rtl.model.linear_cycles`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import const_multiply
from rtl.layout import LayerImage
from rtl.mac import MacArray, MacFormat, array_beat, scale_entry

SCALE_FIFO_DEPTH = 4


def _bits(n: int) -> int:
    """Address bits for a memory of n words."""
    return max(1, (n - 1).bit_length())


class LinearSequencer(wiring.Component):
    """Address generation and framing for one linear layer on a P-lane :class:`~rtl.mac.MacArray`.

    Args:
        n, k: the layer's outputs and inputs. block: weights per block scale. lanes: P (divides n).
        fmt: the lanes' field widths. rows_max: the most rows (tokens) one run may take.

    Ports: ``start`` (pulse, while idle) with ``rows`` (1..rows_max) begins a run; ``busy`` while running;
    ``done`` pulses once the last output is written. Memory ports are synchronous (one cycle read
    latency): ``*_addr`` out, ``*_data`` in, ``read_en`` the code and x ports' read enable (low while the
    array stalls); ``out_addr`` / ``out_data`` / ``out_en`` write the results. ``mac`` / ``scales`` / ``res``
    connect to the array's ``i`` / ``scales`` / ``o``.
    """

    def __init__(self, n: int, k: int, block: int, lanes: int, fmt: MacFormat, rows_max: int = 1) -> None:
        if n % lanes or k % block:
            raise ValueError(f"n={n} must split into groups of {lanes} and k={k} into blocks of {block}")
        self.n, self.k, self.block, self.lanes, self.fmt, self.rows_max = n, k, block, lanes, fmt, rows_max
        self.groups, self.blocks = n // lanes, k // block
        self.jobs = self.groups * self.blocks * lanes  # scale words per row
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "code_addr": Out(_bits(self.groups * k)),
                "code_data": In(unsigned(fmt.code_bits * lanes)),
                "scale_addr": Out(_bits(self.jobs)),
                "scale_data": In(unsigned(fmt.mant_bits + fmt.shift_bits)),
                "bias_addr": Out(_bits(n)),
                "bias_data": In(unsigned(fmt.bias_bits)),
                "x_addr": Out(_bits(rows_max * k)),
                "x_data": In(signed(32)),
                "read_en": Out(1),
                "out_addr": Out(_bits(rows_max * n)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
                "mac": Out(stream.Signature(array_beat(fmt, lanes))),
                "scales": Out(stream.Signature(scale_entry(fmt))),
                "res": In(stream.Signature(signed(32), always_ready=True)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        self._beats(m)
        self._scale_reader(m)
        self._results(m)
        return m

    def _beats(self, m: Module) -> None:
        """The beat issue: x[r, k] and the P codes of (g, k), one cycle behind their addresses."""
        row = Signal(range(self.rows_max + 1))
        group = Signal(range(self.groups + 1))
        kk = Signal(range(self.k + 1))
        kb = Signal(range(self.block + 1))
        code_ptr, x_base = Signal.like(self.code_addr), Signal.like(self.x_addr)
        issuing = Signal()
        self._issuing = issuing
        r_valid, r_first, r_block_end, r_last = Signal(), Signal(), Signal(), Signal()
        beat, beat_valid = Signal(array_beat(self.fmt, self.lanes)), Signal()
        rows = Signal.like(self.rows)
        self._rows = rows
        # a stalled array holds the beat and freezes the issue
        advance = ~beat_valid | self.mac.ready
        m.d.comb += [self.code_addr.eq(code_ptr), self.x_addr.eq(x_base + kk)]
        with m.If(self.start & ~self.busy):
            m.d.sync += [issuing.eq(1), row.eq(0), group.eq(0), kk.eq(0), kb.eq(0), code_ptr.eq(0), x_base.eq(0)]
            m.d.sync += rows.eq(self.rows)
        with m.If(advance):
            m.d.sync += r_valid.eq(0)
            with m.If(issuing):
                last_k, block_end = kk == self.k - 1, kb == self.block - 1
                m.d.sync += [
                    r_valid.eq(1),
                    r_first.eq(kk == 0),
                    r_block_end.eq(block_end),
                    r_last.eq(last_k),
                    kk.eq(kk + 1),
                    kb.eq(kb + 1),
                    code_ptr.eq(code_ptr + 1),
                ]
                with m.If(block_end):
                    m.d.sync += kb.eq(0)
                with m.If(last_k):
                    m.d.sync += [kk.eq(0), group.eq(group + 1)]
                    with m.If(group == self.groups - 1):  # the row's last group: the weights start over
                        m.d.sync += [group.eq(0), code_ptr.eq(0), row.eq(row + 1), x_base.eq(x_base + self.k)]
                        with m.If(row == rows - 1):
                            m.d.sync += issuing.eq(0)
            m.d.sync += beat_valid.eq(r_valid)
            with m.If(r_valid):
                m.d.sync += [
                    beat.x.eq(self.x_data),
                    beat.code.as_value().eq(self.code_data),
                    beat.first.eq(r_first),
                    beat.block_end.eq(r_block_end),
                    beat.last.eq(r_last),
                ]
        # on a stall the code and x memories hold their outputs (read enable low) with the counters
        m.d.comb += [self.mac.valid.eq(beat_valid), self.mac.payload.eq(beat), self.read_en.eq(advance)]

    def _scale_reader(self, m: Module) -> None:
        """Scale and bias words in job order (group, block, lane) into a FIFO, as fast as it drains."""
        fmt, lanes = self.fmt, self.lanes
        m.submodules.scale_fifo = buf = fifo.SyncFIFOBuffered(width=scale_entry(fmt).size, depth=SCALE_FIFO_DEPTH)
        left = Signal(range(self.rows_max * self.jobs + 1))
        scale_ptr, lane, blk = (
            Signal.like(self.scale_addr),
            Signal(range(max(2, lanes))),
            Signal(range(self.blocks + 1)),
        )
        bias_base = Signal(range(self.n + 1))
        in_flight = Signal()
        issue = Signal()
        m.d.comb += [
            issue.eq((left != 0) & (buf.level + in_flight < SCALE_FIFO_DEPTH)),
            self.scale_addr.eq(scale_ptr),
            self.bias_addr.eq(bias_base + lane),
        ]
        with m.If(self.start & ~self.busy):
            m.d.sync += [
                left.eq(const_multiply(self.rows, self.jobs)),
                scale_ptr.eq(0),
                lane.eq(0),
                blk.eq(0),
                bias_base.eq(0),
            ]
        with m.Elif(issue):
            m.d.sync += [left.eq(left - 1), scale_ptr.eq(scale_ptr + 1), lane.eq(lane + 1)]
            with m.If(lane == lanes - 1):
                m.d.sync += [lane.eq(0), blk.eq(blk + 1)]
                with m.If(blk == self.blocks - 1):
                    m.d.sync += [blk.eq(0), bias_base.eq(bias_base + lanes)]
                    with m.If(bias_base == self.n - lanes):  # the row's last job: the next row starts over
                        m.d.sync += [bias_base.eq(0), scale_ptr.eq(0)]
        m.d.sync += in_flight.eq(issue & ~(self.start & ~self.busy))
        entry = Signal(scale_entry(fmt))
        m.d.comb += [
            entry.mant.eq(self.scale_data[: fmt.mant_bits]),
            entry.shift.eq(self.scale_data[fmt.mant_bits :]),
            entry.bias.eq(self.bias_data),
            buf.w_data.eq(entry.as_value()),
            buf.w_en.eq(in_flight),
            self.scales.valid.eq(buf.r_rdy),
            self.scales.payload.as_value().eq(buf.r_data),
            buf.r_en.eq(self.scales.ready),
        ]
        self._scales_left = left

    def _results(self, m: Module) -> None:
        """Outputs in order at consecutive addresses; ``done`` after the last."""
        out_ptr = Signal(range(self.rows_max * self.n + 1))
        total = Signal.like(out_ptr)
        m.d.comb += [
            self.out_addr.eq(out_ptr),
            self.out_data.eq(self.res.payload),
            self.out_en.eq(self.res.valid),
            self.busy.eq(self._issuing | (out_ptr != total)),
        ]
        m.d.sync += self.done.eq(0)
        with m.If(self.start & ~self.busy):
            m.d.sync += [out_ptr.eq(0), total.eq(const_multiply(self.rows, self.n))]
        with m.Elif(self.res.valid):
            m.d.sync += out_ptr.eq(out_ptr + 1)
            with m.If(out_ptr + 1 == total):
                m.d.sync += self.done.eq(1)


class LinearEngine(wiring.Component):
    """Sequencer + P-lane MAC array + the layer's weight memories (ROM: block RAM init); the activations
    stay outside, behind ports, so that engines of several layers can share buffers.

    Ports: ``start`` / ``rows`` / ``busy`` / ``done``; ``x_addr`` / ``x_data`` / ``x_en`` (a synchronous read port
    of the input buffer: address, data, read enable), ``out_addr`` / ``out_data`` / ``out_en`` (a write port of
    the output buffer). Row r's input k is at ``r*K + k``, its output n at ``r*N + n``.
    """

    def __init__(self, image: LayerImage, rows_max: int = 1) -> None:
        self.image = image
        self.rows_max = rows_max
        fmt = image.fmt
        self.sequencer = LinearSequencer(image.n, image.k, image.block, image.lanes, fmt, rows_max)
        self.code_mem = memory.Memory(
            shape=unsigned(fmt.code_bits * image.lanes), depth=len(image.codes), init=image.codes
        )
        scale_bits = fmt.mant_bits + fmt.shift_bits
        self.scale_mem = memory.Memory(shape=unsigned(scale_bits), depth=len(image.scales), init=image.scales)
        self.bias_mem = memory.Memory(shape=unsigned(fmt.bias_bits), depth=len(image.biases), init=image.biases)
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "x_addr": Out(_bits(rows_max * image.k)),
                "x_data": In(signed(32)),
                "x_en": Out(1),
                "out_addr": Out(_bits(rows_max * image.n)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        seq = self.sequencer
        m.submodules.sequencer = seq
        m.submodules.array = array = MacArray(self.image.lanes, self.image.fmt)
        for name in ("code_mem", "scale_mem", "bias_mem"):
            m.submodules[name] = getattr(self, name)
        wiring.connect(m, seq.mac, array.i)
        wiring.connect(m, seq.scales, array.scales)
        wiring.connect(m, array.o, seq.res)
        m.d.comb += [
            seq.start.eq(self.start),
            seq.rows.eq(self.rows),
            self.busy.eq(seq.busy),
            self.done.eq(seq.done),
            self.x_addr.eq(seq.x_addr),
            seq.x_data.eq(self.x_data),
            self.x_en.eq(seq.read_en),
            self.out_addr.eq(seq.out_addr),
            self.out_data.eq(seq.out_data),
            self.out_en.eq(seq.out_en),
        ]
        for mem, addr, data_in, en in (
            (self.code_mem, seq.code_addr, seq.code_data, seq.read_en),
            (self.scale_mem, seq.scale_addr, seq.scale_data, 1),
            (self.bias_mem, seq.bias_addr, seq.bias_data, 1),
        ):
            port = mem.read_port()
            m.d.comb += [port.addr.eq(addr), data_in.eq(port.data), port.en.eq(en)]
        return m


class LinearLayer(wiring.Component):
    """A :class:`LinearEngine` with its own input and output buffers: one linear layer from block RAM.

    Ports: ``start`` / ``rows`` / ``busy`` / ``done``; ``x_waddr`` / ``x_wdata`` / ``x_wen`` write input
    activations (row r's element k at ``r*K + k``); ``y_raddr`` / ``y_rdata`` read outputs (row r's n at
    ``r*N + n``, one cycle latency). ``x_mem`` / ``y_mem`` are the buffers (simulations load and read them
    directly).
    """

    def __init__(self, image: LayerImage, rows_max: int = 1) -> None:
        self.image = image
        self.engine = LinearEngine(image, rows_max)
        self.sequencer = self.engine.sequencer
        self.x_mem = memory.Memory(shape=signed(32), depth=rows_max * image.k, init=[])
        self.y_mem = memory.Memory(shape=signed(32), depth=rows_max * image.n, init=[])
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "busy": Out(1),
                "done": Out(1),
                "x_waddr": In(_bits(rows_max * image.k)),
                "x_wdata": In(signed(32)),
                "x_wen": In(1),
                "y_raddr": In(_bits(rows_max * image.n)),
                "y_rdata": Out(signed(32)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        eng = self.engine
        m.submodules.engine = eng
        m.submodules.x_mem, m.submodules.y_mem = self.x_mem, self.y_mem
        m.d.comb += [eng.start.eq(self.start), eng.rows.eq(self.rows), self.busy.eq(eng.busy), self.done.eq(eng.done)]
        x_r, x_w = self.x_mem.read_port(), self.x_mem.write_port()
        m.d.comb += [x_r.addr.eq(eng.x_addr), x_r.en.eq(eng.x_en), eng.x_data.eq(x_r.data)]
        m.d.comb += [x_w.addr.eq(self.x_waddr), x_w.data.eq(self.x_wdata), x_w.en.eq(self.x_wen)]
        y_w, y_r = self.y_mem.write_port(), self.y_mem.read_port()
        m.d.comb += [y_w.addr.eq(eng.out_addr), y_w.data.eq(eng.out_data), y_w.en.eq(eng.out_en)]
        m.d.comb += [y_r.addr.eq(self.y_raddr), self.y_rdata.eq(y_r.data)]
        return m
