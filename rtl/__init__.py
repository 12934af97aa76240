"""LeWorld's FPGA predictor in Amaranth HDL, unit by unit, bit-exact with ``numba_kernels.fixed_point``.

Units: :mod:`rtl.mac` (MAC lane and P-lane array), :mod:`rtl.linear` (a linear layer from block RAM),
:mod:`rtl.layernorm`, :mod:`rtl.softmax`, :mod:`rtl.activation` (GELU / SiLU), :mod:`rtl.attention`,
:mod:`rtl.elementwise` (gated residual); composed: :mod:`rtl.block` (a whole adaLN block). Host side:
:mod:`rtl.layout` (memory images), :mod:`rtl.reference` (the reference's constants and tables),
:mod:`rtl.model` (the shipped model, captured activations, BRAM budget, cycle formulas), :mod:`rtl.sim`
(simulation harnesses). See ``docs/rtl.md``.
"""
