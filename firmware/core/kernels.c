/* Float32 kernels (kernels.h). Comments name the numba kernel each one ports. */
#include "kernels.h"

#include <math.h> /* sqrt, sqrtf (correctly rounded by IEEE 754), INFINITY */
#include <string.h>

/* ------------------------------------------------------------------ scalar maths */

double lw_rint(double x) {
    /* Adding and removing 2^52 rounds to an integer in the current (nearest-even) mode. */
    const double two52 = 4503599627370496.0;
    if (!(x < two52 && x > -two52)) return x; /* already an integer, or inf / NaN */
    if (x >= 0) return (x + two52) - two52;
    return -((-x + two52) - two52);
}

/* 2^n as a double for -1022 <= n <= 1023. */
static double pow2(int n) {
    uint64_t bits = (uint64_t)(n + 1023) << 52;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

double lw_exp(double x) {
    if (x != x) return x;
    if (x > 709.782712893384) return (double)INFINITY;
    if (x < -708.0) return 0.0; /* (not exact down to -745: lw_expf needs exp of inputs down to -110 only) */
    /* x = n ln2 + r, |r| <= ln2 / 2; ln2_hi has trailing zero bits, so n * ln2_hi is exact (fdlibm's split). */
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    double n = lw_rint(x * 1.44269504088896338700e+00);
    double r = (x - n * ln2_hi) - n * ln2_lo;
    /* Taylor series to r^13: the truncation error is below 2e-16 of the result at |r| = ln2 / 2. */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return n > 1023 ? p * 2.0 * pow2((int)n - 1) : p * pow2((int)n);
}

float lw_expf(float x) {
    /* Beyond these, float32(exp(x)) is inf or 0 (exp(-110) is far below half the least subnormal). */
    if (x > 90.0f) return (float)INFINITY;
    if (x < -110.0f) return 0.0f;
    return (float)lw_exp((double)x);
}

float lw_erff(float x) {
    /* linear.erf: x * P(x^2) / Q(x^2) on [-4, 4], coefficients rounded to float32 as np.float32 does */
    static const double P[7] = {-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                                -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                                -1.60960333262415e-02};
    static const double Q[5] = {-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                                -7.37332916720468e-03, -1.42647390514189e-02};
    x = x < -4.0f ? -4.0f : x > 4.0f ? 4.0f : x;
    float x2 = x * x;
    float p = (float)P[0];
    for (int i = 1; i < 7; i++) p = p * x2 + (float)P[i];
    float q = (float)Q[0];
    for (int i = 1; i < 5; i++) q = q * x2 + (float)Q[i];
    return x * p / q;
}

float lw_activate(float v, uint32_t act) {
    if (act == LW_ACT_GELU) return 0.5f * v * (1.0f + lw_erff(v * (float)0.7071067811865475));
    if (act == LW_ACT_SILU) return v / (1.0f + lw_expf(-v));
    return v;
}

/* ------------------------------------------------------------------ linear layers */

static const float TERNARY[4] = {0.0f, 1.0f, -1.0f, 0.0f}; /* quant.TERNARY_DECODE */

void lw_decode_row(const lw_linear *l, uint32_t n, float *w) {
    const uint8_t *row = l->w + (size_t)n * l->row_bytes;
    uint32_t k = l->k;
    switch (l->kind) {
    case LW_DT_F32: memcpy(w, row, (size_t)k * sizeof(float)); break;
    case LW_DT_Q4_0:
        for (uint32_t b = 0; b < k / LW_QK; b++) {
            const uint8_t *blk = row + b * LW_Q4_0_BLOCK_BYTES;
            float d = lw_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
            for (uint32_t j = 0; j < LW_QK / 2; j++) {
                w[b * LW_QK + j] = d * (float)((int)(blk[2 + j] & 0x0F) - 8);
                w[b * LW_QK + LW_QK / 2 + j] = d * (float)((int)(blk[2 + j] >> 4) - 8);
            }
        }
        break;
    case LW_DT_Q8_0:
        for (uint32_t b = 0; b < k / LW_QK; b++) {
            const uint8_t *blk = row + b * LW_Q8_0_BLOCK_BYTES;
            float d = lw_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
            for (uint32_t j = 0; j < LW_QK; j++) w[b * LW_QK + j] = d * (float)(int8_t)blk[2 + j];
        }
        break;
    case LW_DT_I8:
        for (uint32_t j = 0; j < k; j++) w[j] = l->scale[n] * (float)(int8_t)row[j];
        break;
    default: /* t2 */
        for (uint32_t j = 0; j < k; j++) w[j] = l->scale[n] * TERNARY[(row[j >> 2] >> (2 * (j & 3))) & 3];
        break;
    }
}

/* A dot product in eight interleaved float32 lanes, summed as a tree: a fixed order (so every build
 * rounds alike), about 8x less rounding error than one running sum, and lanes a compiler can keep in
 * SIMD registers without reassociating anything. */
static float dot(const float *w, const float *x, uint32_t k) {
    float l0 = 0, l1 = 0, l2 = 0, l3 = 0, l4 = 0, l5 = 0, l6 = 0, l7 = 0;
    uint32_t j = 0;
    for (; j + 8 <= k; j += 8) {
        l0 += w[j] * x[j];
        l1 += w[j + 1] * x[j + 1];
        l2 += w[j + 2] * x[j + 2];
        l3 += w[j + 3] * x[j + 3];
        l4 += w[j + 4] * x[j + 4];
        l5 += w[j + 5] * x[j + 5];
        l6 += w[j + 6] * x[j + 6];
        l7 += w[j + 7] * x[j + 7];
    }
    float s = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7));
    for (; j < k; j++) s += w[j] * x[j];
    return s;
}

void lw_linear_forward(const lw_linear *l, const float *x, uint32_t rows, float *out, float *wrow, uint32_t act) {
    uint32_t n_out = l->n, k = l->k;
    /* Each weight row is decoded once and used for every input row: the weights are read once per call. */
    for (uint32_t n = 0; n < n_out; n++) {
        const float *w = wrow;
        if (l->kind == LW_DT_F32)
            w = (const float *)(const void *)(l->w + (size_t)n * l->row_bytes);
        else
            lw_decode_row(l, n, wrow);
        float b = l->bias[n];
        for (uint32_t m = 0; m < rows; m++)
            out[(size_t)m * n_out + n] = lw_activate(dot(w, x + (size_t)m * k, k) + b, act);
    }
}

/* ------------------------------------------------------------------ norms */

void lw_layer_norm(const float *x, uint32_t rows, uint32_t d, const float *w, const float *b, const float *shift,
                   const float *scale, uint32_t mod_stride, float *out) {
    /* nn_ops._layer_norm as numba types it: the sum in float32, the mean and variance in float64
     * (mean / d promotes), inv = 1 / float32(sqrt(var / d + eps)) in float32, the output in float64. */
    const double eps = (double)1e-5f;
    for (uint32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        float sum = 0.0f;
        for (uint32_t j = 0; j < d; j++) sum += xr[j];
        double mean = (double)sum / d;
        double var = 0.0;
        for (uint32_t j = 0; j < d; j++) var += ((double)xr[j] - mean) * ((double)xr[j] - mean);
        float inv = 1.0f / (float)sqrt(var / d + eps);
        float *o = out + (size_t)r * d;
        for (uint32_t j = 0; j < d; j++) {
            double v = ((double)xr[j] - mean) * (double)inv;
            if (w) v = v * (double)w[j] + (double)b[j];
            if (shift) {
                const float *sh = shift + (size_t)r * mod_stride, *sc = scale + (size_t)r * mod_stride;
                v = v * (double)(1.0f + sc[j]) + (double)sh[j];
            }
            o[j] = (float)v;
        }
    }
}

void lw_batch_norm_act(float *x, uint32_t rows, uint32_t c, const float *mean, const float *var, const float *w,
                       const float *b, uint32_t act) {
    /* nn_ops._batch_norm_act: float32 throughout; float32(sqrt(double(var + eps))) == sqrtf(var + eps) */
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t j = 0; j < c; j++) {
            float *v = x + (size_t)r * c + j;
            *v = lw_activate((*v - mean[j]) / sqrtf(var[j] + 1e-5f) * w[j] + b[j], act);
        }
}

void lw_group_norm_act(float *x, uint32_t positions, uint32_t c, uint32_t groups, const float *w, const float *b,
                       uint32_t act) {
    /* nn_ops._group_norm_act: statistics in float64 (a group spans thousands of values), eps the
     * Python float 1e-5, the normalization in float32 */
    uint32_t per = c / groups;
    double count = (double)positions * per;
    for (uint32_t g = 0; g < groups; g++) {
        uint32_t lo = g * per, hi = lo + per;
        double total = 0.0;
        for (uint32_t p = 0; p < positions; p++)
            for (uint32_t ch = lo; ch < hi; ch++) total += x[(size_t)p * c + ch];
        double mean = total / count;
        double sq = 0.0;
        for (uint32_t p = 0; p < positions; p++)
            for (uint32_t ch = lo; ch < hi; ch++) {
                double dv = x[(size_t)p * c + ch] - mean;
                sq += dv * dv;
            }
        float m32 = (float)mean;
        float inv = (float)(1.0 / sqrt(sq / count + 1e-5));
        for (uint32_t p = 0; p < positions; p++)
            for (uint32_t ch = lo; ch < hi; ch++) {
                float *v = x + (size_t)p * c + ch;
                *v = lw_activate((*v - m32) * inv * w[ch] + b[ch], act);
            }
    }
}

/* ------------------------------------------------------------------ attention, im2col */

void lw_attention(const float *qkv, uint32_t t, uint32_t d, uint32_t heads, int causal, uint32_t first_query,
                  float *out, float *weights) {
    /* nn_ops._attention: float32 scores and sums, exp as float32(math.exp(double)) */
    uint32_t hd = d / heads, stride = 3 * d;
    float scale = (float)(1.0 / sqrt((double)hd));
    for (uint32_t h = 0; h < heads; h++) {
        uint32_t qo = h * hd, ko = d + h * hd, vo = 2 * d + h * hd;
        for (uint32_t q = first_query; q < t; q++) {
            uint32_t last = causal ? q + 1 : t;
            float top = -(float)INFINITY;
            for (uint32_t s = 0; s < last; s++) {
                float acc = 0.0f;
                for (uint32_t j = 0; j < hd; j++) acc += qkv[(size_t)q * stride + qo + j] * qkv[(size_t)s * stride + ko + j];
                weights[s] = acc * scale;
                top = weights[s] > top ? weights[s] : top;
            }
            float total = 0.0f;
            for (uint32_t s = 0; s < last; s++) {
                weights[s] = lw_expf(weights[s] - top);
                total += weights[s];
            }
            for (uint32_t j = 0; j < hd; j++) {
                float acc = 0.0f;
                for (uint32_t s = 0; s < last; s++) acc += weights[s] * qkv[(size_t)s * stride + vo + j];
                out[(size_t)(q - first_query) * d + h * hd + j] = acc / total;
            }
        }
    }
}

void lw_im2col(const float *x, uint32_t side_in, uint32_t c, uint32_t kernel, uint32_t stride, uint32_t padding,
               uint32_t first, uint32_t count, float *out) {
    uint32_t side_out = (side_in + 2 * padding - kernel) / stride + 1;
    uint32_t width = c * kernel * kernel;
    for (uint32_t r = 0; r < count; r++) {
        uint32_t oy = (first + r) / side_out, ox = (first + r) % side_out;
        float *row = out + (size_t)r * width;
        for (uint32_t ch = 0; ch < c; ch++)
            for (uint32_t ky = 0; ky < kernel; ky++) {
                int64_t iy = (int64_t)oy * stride - padding + ky;
                for (uint32_t kx = 0; kx < kernel; kx++) {
                    int64_t ix = (int64_t)ox * stride - padding + kx;
                    int inside = iy >= 0 && iy < side_in && ix >= 0 && ix < side_in;
                    row[(ch * kernel + ky) * kernel + kx] = inside ? x[((size_t)iy * side_in + (size_t)ix) * c + ch] : 0.0f;
                }
            }
    }
}

/* ------------------------------------------------------------------ scratch */

void *lw_take(lw_arena *a, uint64_t bytes) {
    uint64_t off = ((uint64_t)a->used + 15u) & ~(uint64_t)15u;
    if (off > a->size || bytes > (uint64_t)a->size - off) return NULL;
    a->used = (size_t)(off + bytes);
    /* counting mode hands out a non-NULL address that is never dereferenced */
    return a->base ? (void *)(a->base + off) : (void *)(uintptr_t)16u;
}

uint64_t lw_arena_free(const lw_arena *a) {
    uint64_t off = ((uint64_t)a->used + 15u) & ~(uint64_t)15u;
    return a->size > off ? a->size - off : 0;
}

uint32_t lw_fit_rows(uint64_t avail, uint32_t want, uint64_t (*bytes)(const void *ctx, uint32_t rows), const void *ctx) {
    if (want == 0) return 0;
    uint64_t one = bytes(ctx, 1);
    if (one > avail) return 0;
    if (want == 1) return 1;
    uint64_t two = bytes(ctx, 2);
    uint64_t per = two > one ? two - one : 1;
    uint64_t r = 1 + (avail - one) / per;
    if (r > want) r = want;
    /* Alignment padding makes the growth slightly uneven: step down to a count that fits. */
    while (r > 1 && bytes(ctx, (uint32_t)r) > avail) r--;
    return (uint32_t)r;
}
