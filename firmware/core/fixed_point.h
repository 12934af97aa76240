/* The FPGA's fixed-point predictor, bit for bit as world_models/backends/devices/fixed_point.py
 * (FixedPointPredictor) and numba_kernels/fixed_point.py compute it. The public entry points are in
 * lw_model.h (lw_fixed_quantize / lw_fixed_predict / lw_fixed_rollout); this header is the core's.
 *
 * Activations are int32 with LW_FRAC_BITS (16) fraction bits; intermediates int64 with numba's
 * semantics (two's complement wrap-around, arithmetic right shifts, every right shift rounding half
 * up); float constants are converted as the Python reference converts them at load, in double with
 * round-half-to-even (np.rint) and numpy's saturating casts.
 */
#ifndef LW_FIXED_POINT_H
#define LW_FIXED_POINT_H

#include <stddef.h>
#include <stdint.h>

#include "lq40.h"
#include "lw_model.h"

/* FixedPointPredictor.from_lq40's checks on a model lw_lq40_load accepted: every predictor.blocks
 * layer Q4_0, the predictor's other layers Q4_0, Q8_0 or INT8, and FixedLinear.from_codes'
 * accumulator bound on every predictor layer. Returns 1, or 0 with the layer named in err. */
int lw_fixed_model_ok(const lw_lq40 *q, char *err);

/* Scratch bytes lw_fixed_predict (rollout = 0) or lw_fixed_rollout (rollout = 1) takes for `rows`
 * rows processed together (UINT64_MAX when that is beyond size_t). */
uint64_t lw_fixed_scratch_bytes(const lw_lq40 *q, int rollout, uint32_t rows);

/* model.c's accessors for fixed_point.c. */
const lw_lq40 *lw_model_lq40(const lw_model *m);
int lw_model_fixed_ok(const lw_model *m);

/* numba_kernels.fixed_point helpers, exposed for tests. */
int64_t lw_fx_round_shift(int64_t v, int64_t s);
int32_t lw_fx_to_fixed(double x, int frac); /* fixed_point.to_fixed of one (float64) value */

#endif
