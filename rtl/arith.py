"""Combinational integer helpers shared by the units, each the hardware twin of a scalar helper in
:mod:`numba_kernels.fixed_point` (``round_shift``, ``saturate32``, ``bit_length``, ``shift_add4/8``).

They build Amaranth expressions; none holds state. Widths are chosen so that no intermediate wraps for
the operand widths given (the reference's int64 never wraps either: its load-time checks prove it).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Value, signed

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def round_shift_const(v: Value, s: int) -> Value:
    """``v * 2**-s`` rounded half up for a constant ``s > 0`` (``((v >> (s-1)) + 1) >> 1``, arithmetic);
    exactly ``v << -s`` for ``s <= 0``. The mirror of ``fixed_point.round_shift`` with a constant amount."""
    v = v.as_signed()
    if s <= 0:
        return v << -s
    return (((v >> (s - 1)) + 1) >> 1).as_signed()


def round_shift_right(v: Value, r: Value) -> Value:
    """``v * 2**-r`` rounded half up for an unsigned variable ``r >= 0`` (``r = 0``: v unchanged).

    A barrel shifter (``v >> (r - 1)``), an increment and a one-bit shift; a right shift past the MSB
    gives the sign (0 or -1), then 0 after rounding, as the reference's ``s > 63`` case does."""
    v = v.as_signed()
    r = r.as_unsigned()
    pre = v >> (r - 1)[: len(r)]
    return Mux(r == 0, v, ((pre + 1) >> 1).as_signed()).as_signed()


def round_shift_var(v: Value, s: Value, left_max: int, right_max: int) -> Value:
    """``round_shift(v, s)`` for a signed variable ``s`` in ``[-left_max, right_max]``: a rounded right shift by
    ``s`` when ``s > 0``, an exact left shift by ``-s`` otherwise. The result keeps every bit (width of
    ``v`` plus ``left_max``); callers slice it where the reference's bounds allow."""
    v = v.as_signed()
    s = s.as_signed()
    right_bits = max(1, right_max.bit_length())
    left_bits = max(1, left_max.bit_length())
    right = round_shift_right(v, s[:right_bits].as_unsigned())
    left = v << (-s)[:left_bits].as_unsigned()
    return Mux(s > 0, right, left).as_signed()


def saturate(v: Value, bits: int = 32) -> Value:
    """Clamp a signed value to ``bits``-bit two's complement (``saturate32`` for bits = 32)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = v.as_signed()
    return Mux(v > hi, Const(hi, signed(bits)), Mux(v < lo, Const(lo, signed(bits)), v[:bits].as_signed()))


def _top_index(v: Value) -> Value:
    """floor(log2(v)) of a non-zero value whose width is a power of two: multiplexers only (the top half's
    index with a 1 on top when the top half is not zero, else the bottom half's with a 0)."""
    if len(v) == 2:
        return v[1]
    half = len(v) // 2
    low, high = v[:half], v[half:]
    return Mux(high.any(), Cat(_top_index(high), Const(1, 1)), Cat(_top_index(low), Const(0, 1)))


def bit_length(v: Value) -> Value:
    """Bits of a non-negative value (a leading-zero count): 0 for 0, else 1 + the index of the top set bit.

    The index is a tree of multiplexers over the value padded to a power-of-two width (log2(width)
    levels, no adders), then one increment."""
    v = v.as_unsigned()
    width = len(v)
    out_bits = max(1, width.bit_length())
    if width == 1:
        return v[0].as_unsigned()
    padded = Cat(v, Const(0, (1 << (width - 1).bit_length()) - width))
    return Mux(v.any(), _top_index(padded) + 1, 0)[:out_bits]


def bit_length_signed(v: Value) -> Value:
    """:func:`bit_length` as a signed value (one zero bit on top), ready for ``bit_length(v) - c``."""
    return Cat(bit_length(v), Const(0, 1)).as_signed()


def _select(x: Value, code: Value, bit: int) -> Value:
    """``x << bit`` where bit ``bit`` of the code is set, else 0 (a multiplexer, as ``_select``)."""
    return Mux(code[bit], x.as_signed() << bit, 0)


def shift_add(code: Value, x: Value) -> Value:
    """``code * x`` for a two's complement code of any width (4: ``shift_add4``, 8: ``shift_add8``) with no
    multiplier: one shifted copy of x per set bit, the sign bit's copy subtracted."""
    bits = len(code)
    total = _select(x, code, 0)
    for bit in range(1, bits - 1):
        total = total + _select(x, code, bit)
    return (total - _select(x, code, bits - 1)).as_signed()


def abs_value(v: Value) -> Value:
    """|v| of a signed value, unsigned and one bit wider than needed for -2**(w-1)."""
    v = v.as_signed()
    return Mux(v < 0, -v, v).as_unsigned()


def _slices(v: Value, chunk: int) -> list[tuple[Value, int]]:
    """``v`` (signed) as slices of ``chunk`` bits, low ones unsigned, the top one signed: (slice, offset)."""
    out = []
    for lo in range(0, len(v), chunk):
        hi = min(lo + chunk, len(v))
        out.append((v[lo:hi].as_signed() if hi == len(v) else v[lo:hi].as_unsigned(), lo))
    return out


def pipelined_multiply(m, a: Value, b: Value, chunk: int = 17, name: str = "mul") -> Value:
    """``a * b`` (signed) in two registered steps: cycle 1 registers the partial products of 17-bit slices of
    both operands (each fits one 18x18 DSP: unsigned slices, the top ones signed), cycle 2 registers their
    shifted sum (a balanced adder tree). Returns that register, valid two clock-enabled cycles after the
    operands. Call it inside the caller's clock-enable block."""
    from amaranth.hdl import Signal

    a, b = a.as_signed(), b.as_signed()
    terms = []
    for i, (pa, la) in enumerate(_slices(a, chunk)):
        for k, (pb, lb) in enumerate(_slices(b, chunk)):
            p = Signal(signed(len(pa) + len(pb) + 1), name=f"{name}_p{i}{k}")
            m.d.sync += p.eq(pa * pb)
            terms.append(p << (la + lb))
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    product = Signal(signed(len(a) + len(b)), name=f"{name}_product")
    m.d.sync += product.eq(terms[0])
    return product


def delayed(m, value: Value, cycles: int, name: str = "delay") -> Value:
    """``value`` through ``cycles`` registers (a delay line for a pipeline's side band). Call it inside the
    caller's clock-enable block."""
    from amaranth.hdl import Signal

    for i in range(cycles):
        stage = Signal(value.shape(), name=f"{name}{i}")
        m.d.sync += stage.eq(value)
        value = stage
    return value


def const_multiply(v: Value, c: int) -> Value:
    """``v * c`` for a constant ``c`` as shifts and adds of its canonical signed digits (no DSP block: for small
    constants such as the row width, an adder or two in logic beats a multiplier's delay)."""
    digits, k, total = [], int(c), None
    shift = 0
    while k:
        if k & 1:
            digit = 2 - (k & 3)  # +1 or -1
            digits.append((digit, shift))
            k -= digit
        k >>= 1
        shift += 1
    for digit, shift in digits:
        term = v << shift
        total = (term if digit > 0 else -term) if total is None else (total + term if digit > 0 else total - term)
    return Const(0, 1) if total is None else total
