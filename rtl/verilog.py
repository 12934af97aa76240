"""The predictor as Verilog, simulated by Verilator: the netlist Amaranth exports (through its bundled yosys)
driven by a generated testbench that, for each window, loads it, pulses ``start``, counts the cycles to
``done`` and prints the predicted latent, so the exported Verilog itself is checked bit for bit against the
Python reference, not only Amaranth's own simulation of the design.

``verilator`` (5.x, for ``--binary --timing``) comes from the Debian package ``verilator``. Icarus Verilog
(``iverilog``) was tried first and dropped: it does not evaluate yosys' ``always @*`` blocks at time zero
(so logic whose inputs never change stays ``x``), and with ``always_comb`` it took over 15 minutes for one
44 k-cycle window that Verilator runs in 0.2 s after a 30 s compile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import Signal, Value

from rtl.predictor import Predictor

TOP = "predictor"
CYCLE_LIMIT = 2_000_000


def verilator_tool() -> str | None:
    """The ``verilator`` path (5.x: ``--binary --timing``), or None when Verilator is not installed."""
    return shutil.which("verilator")


def design_ports(component) -> list[Signal]:
    """The signals of a component's signature (constant members such as ``always_ready`` left out)."""
    ports = []
    for _, _, value in component.signature.flatten(component):
        value = Value.cast(value)
        if isinstance(value, Signal):
            ports.append(value)
    return ports


def export(pred: Predictor) -> str:
    """The predictor as one Verilog module named :data:`TOP` (weights as memory initializers)."""
    return verilog.convert(pred, name=TOP, ports=design_ports(pred), emit_src=False)


def _literal(v: int) -> str:
    return f"-32'sd{-v}" if v < 0 else f"32'sd{v}"


def testbench(pred: Predictor, windows: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """A Verilog testbench running ``windows`` (int32 z [T, D], a [T, A]) one after another: for each, load z and a,
    start, wait for done, print ``CYCLES w n`` and one ``OUT w i v`` per output."""
    decls, conns = [], []
    driven = {"start", "tokens", "z_waddr", "z_wdata", "z_wen", "a_waddr", "a_wdata", "a_wen", "out_raddr"}
    for sig in design_ports(pred):
        kind = "reg" if sig.name in driven else "wire"
        sign = " signed" if sig.shape().signed else ""
        width = f" [{len(sig) - 1}:0]" if len(sig) > 1 else ""
        init = " = 0" if kind == "reg" else ""
        decls.append(f"  {kind}{sign}{width} {sig.name}{init};")
        conns.append(f".{sig.name}({sig.name})")
    body = []
    for w, (z_q, a_q) in enumerate(windows):
        for name, values in (("z", z_q), ("a", a_q)):
            body.append(f"    {name}_wen = 1;")
            for i, v in enumerate(np.asarray(values, np.int64).ravel()):
                body.append(f"    {name}_waddr = {i}; {name}_wdata = {_literal(int(v))}; @(negedge clk);")
            body.append(f"    {name}_wen = 0;")
        body += [
            f"    tokens = {np.shape(z_q)[0]}; start = 1; @(negedge clk); start = 0; cycles = 1;",
            "    while (!done) begin",
            "      @(negedge clk); cycles = cycles + 1;",
            f'      if (cycles > {CYCLE_LIMIT}) begin $display("TIMEOUT"); $finish; end',
            "    end",
            f'    $display("CYCLES {w} %0d", cycles);',
            f"    for (i = 0; i < {pred.widths['out']}; i = i + 1) begin",
            f'      out_raddr = i; @(negedge clk); $display("OUT {w} %0d %0d", i, out_rdata);',
            "    end",
        ]
    return "\n".join(
        [
            "`timescale 1ns/1ps",
            "module tb;",
            "  reg clk = 0;",
            "  reg rst = 1;",
            "  always #5 clk = ~clk;",
            *decls,
            "  integer i, cycles;",
            f"  {TOP} dut(.clk(clk), .rst(rst), {', '.join(conns)});",
            "  initial begin",
            "    @(negedge clk); rst = 0; @(negedge clk);",
            *body,
            "    $finish;",
            "  end",
            "endmodule",
            "",
        ]
    )


@dataclass
class VerilogRun:
    """What one Verilator run gave: per window the latent (int32 [D]) and the cycles from ``start`` to ``done``."""

    out: list[np.ndarray]
    cycles: list[int]


def simulate(
    pred: Predictor,
    windows: list[tuple[np.ndarray, np.ndarray]],
    workdir: Path | None = None,
    timeout: float = 1800.0,
) -> VerilogRun:
    """Export ``pred`` to Verilog (a fresh :class:`Predictor`: a design is elaborated once), build it with its
    testbench by ``verilator --binary`` and run it on ``windows`` (int32 z [T, D], a [T, A] each).
    ``workdir`` keeps the files (a temporary folder otherwise)."""
    tool = verilator_tool()
    if tool is None:
        raise FileNotFoundError("verilator not found: install the Debian package 'verilator'")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{TOP}.v").write_text(export(pred))
        (work / "tb.v").write_text(testbench(pred, windows))
        cmd = [tool, "--binary", "--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "tb"]
        cmd += ["-Mdir", "obj", "-O1", "-j", "0", "tb.v", f"{TOP}.v"]  # -j 0: build on every core
        built = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, check=False)
        if built.returncode:
            raise RuntimeError(f"verilator failed in {work}:\n{built.stdout[-2000:]}{built.stderr[-3000:]}")
        ran = subprocess.run(
            [str(work / "obj" / "Vtb")], cwd=work, capture_output=True, text=True, timeout=timeout, check=False
        )
    text = ran.stdout
    found = dict((int(w), int(n)) for w, n in re.findall(r"CYCLES (\d+) (\d+)", text))
    if ran.returncode or "TIMEOUT" in text or len(found) != len(windows):
        raise RuntimeError(
            f"the Verilog simulation did not finish (rc {ran.returncode}):\n{text[-2000:]}{ran.stderr[-2000:]}"
        )
    values: dict[tuple[int, int], int] = {}
    for w, i, v in re.findall(r"OUT (\d+) (\d+) (-?\d+)", text):
        values[int(w), int(i)] = int(v)
    width = pred.widths["out"]
    outs = [np.array([values[w, i] for i in range(width)], np.int64).astype(np.int32) for w in range(len(windows))]
    return VerilogRun(outs, [found[w] for w in range(len(windows))])
