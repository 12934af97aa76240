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

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.layout import LayerEntry, LayerImage, ModelImage
from rtl.mac import MacArray, MacFormat, array_beat, scale_entry

SCALE_FIFO_DEPTH = 4


def _bits(n: int) -> int:
    """Address bits for a memory of n words."""
    return max(1, (n - 1).bit_length())


class LinearSequencer(wiring.Component):
    """Address generation and framing for linear layers on a P-lane :class:`~rtl.mac.MacArray`, the layer's
    shape taken at run time from a layer table (one row for a single layer's engine, one per layer for a
    whole model's shared engine).

    Args:
        entries: the layer table (:class:`~rtl.layout.LayerEntry`: n, k, block and the layer's base addresses
            in the code, scale and bias memories). lanes: P (divides every n). fmt: the lanes' field widths.
        rows_max: the most rows (tokens) one run may take.

    Ports: ``start`` (pulse, while idle) with ``rows`` (1..rows_max) and ``layer`` (a table row) begins a run;
    ``busy`` while running; ``done`` pulses once the last output is written; ``wide`` is the running layer's
    code memory (1: the 8-bit one). Memory ports are synchronous (one cycle read latency): ``*_addr`` out,
    ``*_data`` in, ``read_en`` the code and x ports' read enable (low while the array stalls); ``out_addr`` /
    ``out_data`` / ``out_en`` write the results. ``mac`` / ``scales`` / ``res`` connect to the array's ``i`` /
    ``scales`` / ``o``.
    """

    def __init__(self, entries: list[LayerEntry], lanes: int, fmt: MacFormat, rows_max: int = 1) -> None:
        for e in entries:
            if e.n % lanes or e.k % e.block:
                raise ValueError(f"{e.name}: n={e.n} must split in groups of {lanes}, k={e.k} in blocks of {e.block}")
            if e.block > fmt.block_max:
                raise ValueError(f"{e.name}: blocks of {e.block} exceed the format's {fmt.block_max}")
        self.entries, self.lanes, self.fmt, self.rows_max = list(entries), lanes, fmt, rows_max
        self.k_max = max(e.k for e in entries)
        self.n_max = max(e.n for e in entries)
        code_words = max(e.code_base + e.n // lanes * e.k for e in entries)
        scale_words = max(e.scale_base + e.n * e.k // e.block for e in entries)
        bias_words = max(e.bias_base + e.n for e in entries)
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "layer": In(range(max(2, len(entries)))),
                "busy": Out(1),
                "done": Out(1),
                "wide": Out(1),
                "code_addr": Out(_bits(code_words)),
                "code_data": In(unsigned(fmt.code_bits * lanes)),
                "scale_addr": Out(_bits(scale_words)),
                "scale_data": In(unsigned(fmt.mant_bits + fmt.shift_bits)),
                "bias_addr": Out(_bits(bias_words)),
                "bias_data": In(unsigned(fmt.bias_bits)),
                "x_addr": Out(_bits(rows_max * self.k_max)),
                "x_data": In(signed(32)),
                "read_en": Out(1),
                "out_addr": Out(_bits(rows_max * self.n_max)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
                "mac": Out(stream.Signature(array_beat(fmt, lanes))),
                "scales": Out(stream.Signature(scale_entry(fmt))),
                "res": In(stream.Signature(signed(32), always_ready=True)),
            }
        )

    def _table(self, value) -> Value:
        """A layer-table column (``value(entry)`` per row) at the ``layer`` input: a constant for one row."""
        values = [int(value(e)) for e in self.entries]
        if len(set(values)) == 1:
            return Const(values[0])
        return Array(Const(v) for v in values)[self.layer]

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes = self.lanes
        self._launch = launch = Signal()
        m.d.comb += launch.eq(self.start & ~self.busy)
        # the running layer's shape, latched at start (the loops compare against registers)
        shape = {
            "k": (self._table(lambda e: e.k), self.k_max),
            "k_last": (self._table(lambda e: e.k - 1), self.k_max),
            "block_last": (self._table(lambda e: e.block - 1), self.fmt.block_max),
            "groups_last": (self._table(lambda e: e.n // lanes - 1), self.n_max // lanes),
            "blocks_last": (self._table(lambda e: e.k // e.block - 1), self.k_max),
            "jobs": (self._table(lambda e: e.n * e.k // e.block), self.n_max * self.k_max),
            "n": (self._table(lambda e: e.n), self.n_max),
            "code_base": (self._table(lambda e: e.code_base), 2 ** len(self.code_addr) - 1),
            "scale_base": (self._table(lambda e: e.scale_base), 2 ** len(self.scale_addr) - 1),
            "bias_base": (self._table(lambda e: e.bias_base), 2 ** len(self.bias_addr) - 1),
            "bias_last": (self._table(lambda e: e.bias_base + e.n - lanes), 2 ** len(self.bias_addr) - 1),
        }
        self._now = {name: value for name, (value, _) in shape.items()}  # this cycle's table row (at start)
        self._reg = {name: Signal(range(top + 1), name=f"shape_{name}") for name, (_, top) in shape.items()}
        rows = Signal.like(self.rows)
        self._rows = rows
        wide = Signal()
        with m.If(launch):
            m.d.sync += [reg.eq(self._now[name]) for name, reg in self._reg.items()]
            m.d.sync += [rows.eq(self.rows), wide.eq(self._table(lambda e: e.wide))]
        m.d.comb += self.wide.eq(wide)
        self._beats(m)
        self._scale_reader(m)
        self._results(m)
        return m

    def _beats(self, m: Module) -> None:
        """The beat issue: x[r, k] and the P codes of (g, k), one cycle behind their addresses."""
        now, reg, rows = self._now, self._reg, self._rows
        row = Signal(range(self.rows_max + 1))
        group = Signal(range(self.n_max // self.lanes + 1))
        kk = Signal(range(self.k_max + 1))
        kb = Signal(range(self.fmt.block_max + 1))
        code_ptr, x_base = Signal.like(self.code_addr), Signal.like(self.x_addr)
        issuing = Signal()
        self._issuing = issuing
        r_valid, r_first, r_block_end, r_last = Signal(), Signal(), Signal(), Signal()
        beat, beat_valid = Signal(array_beat(self.fmt, self.lanes)), Signal()
        # a stalled array holds the beat and freezes the issue
        advance = ~beat_valid | self.mac.ready
        m.d.comb += [self.code_addr.eq(code_ptr), self.x_addr.eq(x_base + kk)]
        with m.If(self._launch):
            m.d.sync += [issuing.eq(1), row.eq(0), group.eq(0), kk.eq(0), kb.eq(0), code_ptr.eq(now["code_base"])]
            m.d.sync += x_base.eq(0)
        with m.If(advance):
            m.d.sync += r_valid.eq(0)
            with m.If(issuing):
                last_k, block_end = kk == reg["k_last"], kb == reg["block_last"]
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
                    with m.If(group == reg["groups_last"]):  # the row's last group: the weights start over
                        m.d.sync += [group.eq(0), code_ptr.eq(reg["code_base"]), row.eq(row + 1)]
                        m.d.sync += x_base.eq(x_base + reg["k"])
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
        fmt, lanes, now, reg = self.fmt, self.lanes, self._now, self._reg
        m.submodules.scale_fifo = buf = fifo.SyncFIFOBuffered(width=scale_entry(fmt).size, depth=SCALE_FIFO_DEPTH)
        left = Signal(range(self.rows_max * self.n_max * self.k_max + 1))
        scale_ptr, lane, blk = (
            Signal.like(self.scale_addr),
            Signal(range(max(2, lanes))),
            Signal(range(self.k_max + 1)),
        )
        bias_ptr = Signal.like(self.bias_addr)
        in_flight = Signal()
        issue = Signal()
        m.d.comb += [
            issue.eq((left != 0) & (buf.level + in_flight < SCALE_FIFO_DEPTH)),
            self.scale_addr.eq(scale_ptr),
            self.bias_addr.eq(bias_ptr + lane),
        ]
        with m.If(self._launch):
            m.d.sync += [
                left.eq(self.rows * now["jobs"]),
                scale_ptr.eq(now["scale_base"]),
                lane.eq(0),
                blk.eq(0),
                bias_ptr.eq(now["bias_base"]),
            ]
        with m.Elif(issue):
            m.d.sync += [left.eq(left - 1), scale_ptr.eq(scale_ptr + 1), lane.eq(lane + 1)]
            with m.If(lane == lanes - 1):
                m.d.sync += [lane.eq(0), blk.eq(blk + 1)]
                with m.If(blk == reg["blocks_last"]):
                    m.d.sync += [blk.eq(0), bias_ptr.eq(bias_ptr + lanes)]
                    with m.If(bias_ptr == reg["bias_last"]):  # the row's last job: the next row starts over
                        m.d.sync += [bias_ptr.eq(reg["bias_base"]), scale_ptr.eq(reg["scale_base"])]
        m.d.sync += in_flight.eq(issue & ~self._launch)
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
        out_ptr = Signal(range(self.rows_max * self.n_max + 1))
        total = Signal.like(out_ptr)
        m.d.comb += [
            self.out_addr.eq(out_ptr),
            self.out_data.eq(self.res.payload),
            self.out_en.eq(self.res.valid),
            self.busy.eq(self._issuing | (out_ptr != total)),
        ]
        m.d.sync += self.done.eq(0)
        with m.If(self._launch):
            m.d.sync += [out_ptr.eq(0), total.eq(self.rows * self._now["n"])]
        with m.Elif(self.res.valid):
            m.d.sync += out_ptr.eq(out_ptr + 1)
            with m.If(out_ptr + 1 == total):
                m.d.sync += self.done.eq(1)


class LinearEngine(wiring.Component):
    """Sequencer + P-lane MAC array + the weight memories (ROM: block RAM init) of one layer (a
    :class:`~rtl.layout.LayerImage`) or of several sharing the array (a :class:`~rtl.layout.ModelImage`: the
    layer is chosen at each start); the activations stay outside, behind ports, so that engines of several
    layers can share buffers.

    Ports: ``start`` / ``rows`` / ``layer`` (the table row; leave 0 for one layer) / ``busy`` / ``done``;
    ``x_addr`` / ``x_data`` / ``x_en`` (a synchronous read port of the input buffer: address, data, read
    enable), ``out_addr`` / ``out_data`` / ``out_en`` (a write port of the output buffer). Row r's input k is
    at ``r*K + k``, its output n at ``r*N + n``.
    """

    def __init__(self, image: LayerImage | ModelImage, rows_max: int = 1) -> None:
        self.image = image if isinstance(image, ModelImage) else ModelImage.single(image)
        self.rows_max = rows_max
        image = self.image
        fmt = image.fmt
        self.sequencer = LinearSequencer(image.entries, image.lanes, fmt, rows_max)
        self.code_mems = {
            kind: memory.Memory(shape=unsigned(bits * image.lanes), depth=len(words), init=words)
            for kind, bits, words in (("narrow", 4, image.narrow_codes), ("wide", 8, image.wide_codes))
            if words
        }
        self.scale_mems = {
            kind: memory.Memory(
                shape=unsigned(image.scale_mant_bits[kind] + fmt.shift_bits), depth=len(words), init=words
            )
            for kind, words in (("narrow", image.narrow_scales), ("wide", image.wide_scales))
            if words
        }
        self.bias_mem = memory.Memory(shape=unsigned(fmt.bias_bits), depth=len(image.biases), init=image.biases)
        seq = self.sequencer
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "layer": In(len(seq.layer)),
                "busy": Out(1),
                "done": Out(1),
                "x_addr": Out(len(seq.x_addr)),
                "x_data": In(signed(32)),
                "x_en": Out(1),
                "out_addr": Out(len(seq.out_addr)),
                "out_data": Out(signed(32)),
                "out_en": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        seq, lanes, fmt = self.sequencer, self.image.lanes, self.image.fmt
        m.submodules.sequencer = seq
        m.submodules.array = array = MacArray(lanes, fmt)
        for kind, mem in self.code_mems.items():
            m.submodules[f"{kind}_code_mem"] = mem
        for kind, mem in self.scale_mems.items():
            m.submodules[f"{kind}_scale_mem"] = mem
        m.submodules.bias_mem = self.bias_mem
        wiring.connect(m, seq.mac, array.i)
        wiring.connect(m, seq.scales, array.scales)
        wiring.connect(m, array.o, seq.res)
        m.d.comb += [
            seq.start.eq(self.start),
            seq.rows.eq(self.rows),
            seq.layer.eq(self.layer),
            self.busy.eq(seq.busy),
            self.done.eq(seq.done),
            self.x_addr.eq(seq.x_addr),
            seq.x_data.eq(self.x_data),
            self.x_en.eq(seq.read_en),
            self.out_addr.eq(seq.out_addr),
            self.out_data.eq(seq.out_data),
            self.out_en.eq(seq.out_en),
        ]
        # the codes: the array's own width, or 4-bit codes sign-extended into 8-bit lanes
        codes = {}
        for kind, mem in self.code_mems.items():
            port = mem.read_port()
            m.d.comb += [port.addr.eq(seq.code_addr), port.en.eq(seq.read_en)]
            bits = len(port.data) // lanes
            fields = [port.data[bits * i : bits * (i + 1)] for i in range(lanes)]
            codes[kind] = Cat(*(Cat(f, f[-1].replicate(fmt.code_bits - bits)) for f in fields))
        # the scales: (mantissa, shift), a narrow mantissa sign-extended to the array's width
        scales = {}
        for kind, mem in self.scale_mems.items():
            port = mem.read_port()
            m.d.comb += port.addr.eq(seq.scale_addr)
            mant_bits = self.image.scale_mant_bits[kind]
            mant = port.data[:mant_bits]
            scales[kind] = Cat(mant, mant[-1].replicate(fmt.mant_bits - mant_bits), port.data[mant_bits:])
        for data_in, words in ((seq.code_data, codes), (seq.scale_data, scales)):
            if len(words) == 2:
                m.d.comb += data_in.eq(Mux(seq.wide, words["wide"], words["narrow"]))
            else:
                m.d.comb += data_in.eq(next(iter(words.values())))
        port = self.bias_mem.read_port()
        m.d.comb += [port.addr.eq(seq.bias_addr), seq.bias_data.eq(port.data)]
        return m


class LinearLayer(wiring.Component):
    """A :class:`LinearEngine` with its own input and output buffers: one linear layer (a
    :class:`~rtl.layout.LayerImage`) or a table of them sharing the engine (a :class:`~rtl.layout.ModelImage`),
    from block RAM.

    Ports: ``start`` / ``rows`` / ``layer`` / ``busy`` / ``done``; ``x_waddr`` / ``x_wdata`` / ``x_wen`` write input
    activations (row r's element k at ``r*K + k``); ``y_raddr`` / ``y_rdata`` read outputs (row r's n at
    ``r*N + n``, one cycle latency). ``x_mem`` / ``y_mem`` are the buffers (simulations load and read them
    directly).
    """

    def __init__(self, image: LayerImage | ModelImage, rows_max: int = 1) -> None:
        self.engine = LinearEngine(image, rows_max)
        self.image = self.engine.image
        self.sequencer = seq = self.engine.sequencer
        self.x_mem = memory.Memory(shape=signed(32), depth=rows_max * seq.k_max, init=[])
        self.y_mem = memory.Memory(shape=signed(32), depth=rows_max * seq.n_max, init=[])
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(1, rows_max + 1)),
                "layer": In(len(seq.layer)),
                "busy": Out(1),
                "done": Out(1),
                "x_waddr": In(_bits(rows_max * seq.k_max)),
                "x_wdata": In(signed(32)),
                "x_wen": In(1),
                "y_raddr": In(_bits(rows_max * seq.n_max)),
                "y_rdata": Out(signed(32)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        eng = self.engine
        m.submodules.engine = eng
        m.submodules.x_mem, m.submodules.y_mem = self.x_mem, self.y_mem
        m.d.comb += [eng.start.eq(self.start), eng.rows.eq(self.rows), eng.layer.eq(self.layer)]
        m.d.comb += [self.busy.eq(eng.busy), self.done.eq(eng.done)]
        x_r, x_w = self.x_mem.read_port(), self.x_mem.write_port()
        m.d.comb += [x_r.addr.eq(eng.x_addr), x_r.en.eq(eng.x_en), eng.x_data.eq(x_r.data)]
        m.d.comb += [x_w.addr.eq(self.x_waddr), x_w.data.eq(self.x_wdata), x_w.en.eq(self.x_wen)]
        y_w, y_r = self.y_mem.write_port(), self.y_mem.read_port()
        m.d.comb += [y_w.addr.eq(eng.out_addr), y_w.data.eq(eng.out_data), y_w.en.eq(eng.out_en)]
        m.d.comb += [y_r.addr.eq(self.y_raddr), self.y_rdata.eq(y_r.data)]
        return m
