/* Float32 kernels of the forward pass: numba_kernels/linear.py and numba_kernels/nn_ops.py, op for op.
 *
 * Every kernel computes a row from that row alone (no batch-dependent order), with a fixed summation
 * order and no libm call whose rounding could differ between libcs: exp and erf are written here from
 * +, -, *, / (and sqrt / sqrtf, which IEEE 754 rounds correctly everywhere), and the build turns FP
 * contraction off, so the native and the rv32 builds produce the same bytes. Precision follows the
 * numba kernels' types (double where numba computes in float64, e.g. the LayerNorm statistics).
 */
#ifndef LW_KERNELS_H
#define LW_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "lq40.h"
#include "lw_model.h"

enum { LW_ACT_NONE = 0, LW_ACT_GELU = 1, LW_ACT_SILU = 2 }; /* numba_kernels.linear NO_ACT, GELU, SILU */

double lw_rint(double x);   /* round half to even (np.rint) */
double lw_exp(double x);    /* exp to within about an ulp of a double */
float lw_expf(float x);     /* np.float32(math.exp(x)) */
float lw_erff(float x);     /* linear.erf: the rational approximation, in float32 */
float lw_activate(float v, uint32_t act); /* linear.activate */

/* Row n of a layer's weights as float32, as linear._decode computes them (K floats). */
void lw_decode_row(const lw_linear *l, uint32_t n, float *w);

/* y = act(x W^T + b): x [rows, K] -> out [rows, N]; wrow: K floats of scratch (the decoded row). */
void lw_linear_forward(const lw_linear *l, const float *x, uint32_t rows, float *out, float *wrow, uint32_t act);

/* nn_ops.layer_norm / modulated_layer_norm over rows of width d (in place allowed: out == x).
 * Affine when w is not NULL; modulated (adaLN: * (1 + scale) + shift) when shift is not NULL,
 * shift and scale rows `mod_stride` floats apart. */
void lw_layer_norm(const float *x, uint32_t rows, uint32_t d, const float *w, const float *b, const float *shift,
                   const float *scale, uint32_t mod_stride, float *out);

/* nn_ops.batch_norm (eval mode) then an activation, in place on x [rows, c]. */
void lw_batch_norm_act(float *x, uint32_t rows, uint32_t c, const float *mean, const float *var, const float *w,
                       const float *b, uint32_t act);

/* nn_ops.group_norm then an activation, in place on one sample's channels-last map x [positions, c]. */
void lw_group_norm_act(float *x, uint32_t positions, uint32_t c, uint32_t groups, const float *w, const float *b,
                       uint32_t act);

/* nn_ops.attention for one sample: qkv [t, 3d] -> out [t - first_query, d]; weights: t floats of scratch. */
void lw_attention(const float *qkv, uint32_t t, uint32_t d, uint32_t heads, int causal, uint32_t first_query,
                  float *out, float *weights);

/* nn_ops.im2col for one sample and `count` output positions from `first` (row-major over the output
 * map): x channels-last [side_in, side_in, c] -> out [count, c * kernel * kernel], zeros outside. */
void lw_im2col(const float *x, uint32_t side_in, uint32_t c, uint32_t kernel, uint32_t stride, uint32_t padding,
               uint32_t first, uint32_t count, float *out);

/* Scratch: 16-byte aligned pieces of an lw_arena, or NULL when it is full. An arena with base NULL
 * only counts (its size SIZE_MAX): the same allocation code then sizes an operation. */
void *lw_take(lw_arena *a, uint64_t bytes);

/* Bytes still free in an arena, counted from its next 16-byte aligned offset. */
uint64_t lw_arena_free(const lw_arena *a);

/* The most rows, at most `want`, whose scratch bytes(ctx, rows) fit in `avail` bytes; 0 when not
 * even one row fits. bytes must grow with rows (by about the same amount per row). */
uint32_t lw_fit_rows(uint64_t avail, uint32_t want, uint64_t (*bytes)(const void *ctx, uint32_t rows), const void *ctx);

#endif
