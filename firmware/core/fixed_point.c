/* The fixed-point predictor (fixed_point.h): numba_kernels/fixed_point.py's kernels and
 * FixedPointPredictor's forward pass, in C. Integer results are bit-identical to the reference for
 * every int32 input: int64 arithmetic wraps exactly as numba's does (unsigned arithmetic, cast back),
 * right shifts are arithmetic, and the float constants are converted as the reference converts them. */
#include "fixed_point.h"

#include <math.h> /* sqrt: correctly rounded by IEEE 754 */
#include <string.h>

#include "fixed_tables.h"
#include "json.h"
#include "kernels.h"
#include "window.h"

#define F LW_FRAC_BITS
#define ACC_GUARD LW_FX_ACC_GUARD_BITS
#define COEF LW_FX_COEF_BITS

/* ------------------------------------------------------------------ integer helpers (numba int64) */

static int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static int64_t wsub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
static int64_t wmul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }

/* fixed_point.round_shift: v * 2^-s rounded half up for s > 0, v << -s for s <= 0. */
int64_t lw_fx_round_shift(int64_t v, int64_t s) {
    if (s <= 0) return s <= -64 ? 0 : (int64_t)((uint64_t)v << (unsigned)(-s));
    if (s > 63) return 0;
    return wadd(v >> (s - 1), 1) >> 1;
}
#define round_shift lw_fx_round_shift

static int32_t saturate32(int64_t v) { return v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : (int32_t)v; }

static int64_t bit_length(int64_t v) { /* v >= 0 */
    int64_t n = 0;
    while (n < 64 && ((uint64_t)v >> n)) n++;
    return n;
}

/* 2^n as a double for -1074 <= n <= 1023 (exact). */
static double pow2(int n) {
    if (n < -1022) return pow2(n + 64) / 18446744073709551616.0;
    uint64_t bits = (uint64_t)(n + 1023) << 52;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* numpy's float64 -> int64 cast on x86: NaN and out-of-range values become INT64_MIN. */
static int64_t numpy_to_i64(double v) {
    if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0)) return INT64_MIN;
    return (int64_t)v;
}

/* fixed_point.to_fixed of one value: rint(x * 2^frac), clipped to int32 (NaN -> INT32_MIN, numpy's). */
int32_t lw_fx_to_fixed(double x, int frac) {
    double v = lw_rint(x * pow2(frac));
    if (v != v) return INT32_MIN;
    if (v <= -2147483648.0) return INT32_MIN;
    if (v >= 2147483647.0) return INT32_MAX;
    return (int32_t)v;
}

/* fp16_mantissa_exponent: value = M * 2^E exactly. */
static void f16_mant_exp(uint16_t h, int32_t *mant, int32_t *exp) {
    int32_t e = (h >> 10) & 0x1F, f = h & 0x3FF;
    int32_t m = e > 0 ? 1024 + f : f;
    *mant = (h >> 15) ? -m : m;
    *exp = e > 0 ? e - 25 : -24;
}

/* f32_mantissa_exponent(scale, 16): frexp in float64, then a 16-bit mantissa rounded half to even. */
static void f32_mant_exp(float scale, int64_t *mant, int32_t *exp) {
    double d = (double)scale;
    if (d == 0.0) { /* np.frexp(0) = (0, 0) */
        *mant = 0;
        *exp = -16;
        return;
    }
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits); /* a float32 is a normal double: no subnormal case */
    int32_t e = (int32_t)((bits >> 52) & 0x7FF);
    uint64_t fbits = (bits & ~((uint64_t)0x7FF << 52)) | ((uint64_t)1022 << 52); /* into [0.5, 1) */
    double frac;
    memcpy(&frac, &fbits, sizeof frac);
    *mant = numpy_to_i64(lw_rint(frac * 65536.0));
    *exp = e - 1022 - 16;
}

/* ------------------------------------------------------------------ linear layers (block_linear) */

typedef struct {
    int8_t *codes;  /* one row's codes [K] */
    int64_t *mant;  /* its blocks' mantissas */
    int32_t *shift; /* and shifts E + ACC_GUARD_BITS */
} fx_row;

/* One row of FixedLinear: codes, block mantissas and shifts; returns the block length. */
static uint32_t fx_decode_row(const lw_linear *l, uint32_t n, fx_row *r) {
    const uint8_t *row = l->w + (size_t)n * l->row_bytes;
    uint32_t k = l->k;
    if (l->kind == LW_DT_I8) {
        int32_t e;
        for (uint32_t j = 0; j < k; j++) r->codes[j] = (int8_t)row[j];
        f32_mant_exp(l->scale[n], &r->mant[0], &e);
        r->shift[0] = e + ACC_GUARD;
        return k;
    }
    uint32_t width = l->kind == LW_DT_Q4_0 ? LW_Q4_0_BLOCK_BYTES : LW_Q8_0_BLOCK_BYTES;
    for (uint32_t b = 0; b < k / LW_QK; b++) {
        const uint8_t *blk = row + b * width;
        int32_t m, e;
        f16_mant_exp((uint16_t)(blk[0] | blk[1] << 8), &m, &e);
        r->mant[b] = m;
        r->shift[b] = e + ACC_GUARD;
        int8_t *c = r->codes + b * LW_QK;
        if (l->kind == LW_DT_Q4_0) {
            for (uint32_t j = 0; j < LW_QK / 2; j++) {
                c[j] = (int8_t)((blk[2 + j] & 0x0F) - 8);
                c[j + LW_QK / 2] = (int8_t)((blk[2 + j] >> 4) - 8);
            }
        } else {
            for (uint32_t j = 0; j < LW_QK; j++) c[j] = (int8_t)blk[2 + j];
        }
    }
    return LW_QK;
}

/* block_linear: out = saturate(round((x W^T) 2^-16 + bias)) with W's blocks as M * 2^E. Each block's
 * sum of code * x is the exact integer the shift-add tree forms (no product here exceeds 2^38). */
static void fx_linear(const lw_linear *l, const int32_t *x, uint32_t rows, int32_t *out, fx_row *r) {
    uint32_t n_out = l->n, k = l->k;
    for (uint32_t n = 0; n < n_out; n++) {
        uint32_t block = fx_decode_row(l, n, r);
        int64_t bias_acc = numpy_to_i64(lw_rint((double)l->bias[n] * pow2(F + ACC_GUARD)));
        for (uint32_t m = 0; m < rows; m++) {
            const int32_t *xm = x + (size_t)m * k;
            int64_t acc = bias_acc;
            for (uint32_t b = 0; b < k / block; b++) {
                int64_t sum = 0;
                const int8_t *c = r->codes + (size_t)b * block;
                const int32_t *xb = xm + (size_t)b * block;
                for (uint32_t j = 0; j < block; j++) sum += (int64_t)c[j] * xb[j];
                acc = wadd(acc, round_shift(wmul(sum, r->mant[b]), -(int64_t)r->shift[b]));
            }
            out[(size_t)m * n_out + n] = saturate32(round_shift(acc, ACC_GUARD));
        }
    }
}

/* ------------------------------------------------------------------ the load-time checks */

/* numpy's pairwise summation (pairwise_sum_DOUBLE), over term(i) for i in [lo, lo + n). */
typedef struct {
    const lw_linear *l;
    uint32_t n;
    int bits;
} worst_ctx;

static double worst_term(const worst_ctx *w, uint32_t b, double *block_worst) {
    const lw_linear *l = w->l;
    const uint8_t *row = l->w + (size_t)w->n * l->row_bytes;
    double absm, block;
    int32_t shift;
    if (l->kind == LW_DT_I8) {
        int64_t m;
        int32_t e;
        f32_mant_exp(l->scale[w->n], &m, &e);
        absm = (double)(m < 0 ? -m : m);
        block = (double)l->k;
        shift = e + ACC_GUARD;
    } else {
        uint32_t width = l->kind == LW_DT_Q4_0 ? LW_Q4_0_BLOCK_BYTES : LW_Q8_0_BLOCK_BYTES;
        const uint8_t *blk = row + (size_t)b * width;
        int32_t m, e;
        f16_mant_exp((uint16_t)(blk[0] | blk[1] << 8), &m, &e);
        absm = (double)(m < 0 ? -m : m);
        block = (double)LW_QK;
        shift = e + ACC_GUARD;
    }
    /* np.abs(mant).astype(float64) * block * 2 ** (bits - 1) * 2.0 ** 31, left to right (all exact) */
    *block_worst = absm * block * pow2(w->bits - 1) * 2147483648.0;
    return *block_worst * pow2(shift);
}

static double pairwise(const worst_ctx *w, uint32_t lo, uint32_t n, int *too_big) {
    double bw;
    if (n < 8) {
        double res = 0.0;
        for (uint32_t i = 0; i < n; i++) {
            res += worst_term(w, lo + i, &bw);
            if (bw >= 4611686018427387904.0) *too_big = 1;
        }
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (uint32_t j = 0; j < 8; j++) {
            r[j] = worst_term(w, lo + j, &bw);
            if (bw >= 4611686018427387904.0) *too_big = 1;
        }
        uint32_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (uint32_t j = 0; j < 8; j++) {
                r[j] += worst_term(w, lo + i + j, &bw);
                if (bw >= 4611686018427387904.0) *too_big = 1;
            }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            res += worst_term(w, lo + i, &bw);
            if (bw >= 4611686018427387904.0) *too_big = 1;
        }
        return res;
    }
    uint32_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise(w, lo, n2, too_big) + pairwise(w, lo + n2, n - n2, too_big);
}

/* FixedLinear.from_codes' bound: no block's s * M, and no row's accumulator, reaches 2^62 with every
 * input at the int32 limit (as float64, summed as numpy sums a row). */
static int accumulator_fits(const lw_linear *l) {
    int bits = l->kind == LW_DT_Q4_0 ? 4 : 8;
    uint32_t blocks = l->kind == LW_DT_I8 ? 1 : l->k / LW_QK;
    int too_big = 0;
    for (uint32_t n = 0; n < l->n; n++) {
        worst_ctx w = {l, n, bits};
        if (pairwise(&w, 0, blocks, &too_big) >= 4611686018427387904.0 || too_big) return 0;
    }
    return 1;
}

static int layer_ok(const lw_linear *l, const char *prefix, uint32_t index, const char *suffix, int block,
                    char *err) {
    static const char *const NAMES[LW_DT_COUNT] = {"f32", "q4_0", "q8_0", "i8", "t2"};
    int allowed = l->kind == LW_DT_Q4_0 || (!block && (l->kind == LW_DT_Q8_0 || l->kind == LW_DT_I8));
    lw_msg m;
    if (!allowed || !accumulator_fits(l)) {
        lw_msg_init(&m, err, LW_ERR_LEN);
        if (!allowed) lw_msg_str(&m, "the fixed-point (FPGA) predictor needs a Q4 predictor: ");
        lw_msg_str(&m, "layer ");
        lw_msg_str(&m, prefix);
        if (index != UINT32_MAX) lw_msg_u64(&m, index);
        lw_msg_str(&m, suffix);
        if (!allowed) {
            lw_msg_str(&m, " is ");
            lw_msg_str(&m, NAMES[l->kind]);
            lw_msg_str(&m, block ? ", expected q4_0" : ", expected q4_0 or q8_0 or i8");
            lw_msg_str(&m, " (make one with leworld quantize --mode full)");
        } else {
            lw_msg_str(&m, ": block scales too large for the int64 accumulator");
        }
        return 0;
    }
    return 1;
}

int lw_fixed_model_ok(const lw_lq40 *q, char *err) {
    /* layout.linear_shapes' predictor layers, in its order */
    if (!layer_ok(&q->input, "predictor.input", UINT32_MAX, "", 0, err)) return 0;
    if (!layer_ok(&q->act_conv, "predictor.action_encoder.conv", UINT32_MAX, "", 0, err)) return 0;
    if (!layer_ok(&q->act_mlp0, "predictor.action_encoder.mlp.0", UINT32_MAX, "", 0, err)) return 0;
    if (!layer_ok(&q->act_mlp2, "predictor.action_encoder.mlp.2", UINT32_MAX, "", 0, err)) return 0;
    for (uint32_t i = 0; i < q->cfg.predictor_depth; i++) {
        const lw_pred_block *b = &q->pred[i];
        if (!layer_ok(&b->qkv, "predictor.blocks.", i, ".attn.qkv", 1, err)) return 0;
        if (!layer_ok(&b->proj, "predictor.blocks.", i, ".attn.proj", 1, err)) return 0;
        if (!layer_ok(&b->mlp0, "predictor.blocks.", i, ".mlp.0", 1, err)) return 0;
        if (!layer_ok(&b->mlp2, "predictor.blocks.", i, ".mlp.2", 1, err)) return 0;
        if (!layer_ok(&b->modulation, "predictor.blocks.", i, ".modulation.1", 1, err)) return 0;
    }
    if (!layer_ok(&q->pred_proj.l0, "predictor.projector.0", UINT32_MAX, "", 0, err)) return 0;
    if (!layer_ok(&q->pred_proj.l3, "predictor.projector.3", UINT32_MAX, "", 0, err)) return 0;
    return 1;
}

/* ------------------------------------------------------------------ elementwise ops */

/* lut_activation: a Q24 ROM of f at knots 2^-6 apart from lo, linear interpolation; 0 below it,
 * the identity above it. */
static void fx_lut(int32_t *x, size_t n, const int32_t *table, uint32_t len, int64_t lo) {
    const int64_t sub = F - LW_FX_LUT_STEP_BITS;
    const int64_t mask = ((int64_t)1 << sub) - 1;
    const int64_t top = (int64_t)(len - 1) << sub;
    const int64_t origin = lo * ((int64_t)1 << F);
    for (size_t i = 0; i < n; i++) {
        int64_t t = (int64_t)x[i] - origin;
        if (t < 0) {
            x[i] = 0;
        } else if (t < top) {
            int64_t k = t >> sub;
            int64_t v = table[k] + round_shift(((int64_t)table[k + 1] - table[k]) * (t & mask), sub);
            x[i] = saturate32(round_shift(v, LW_FX_LUT_BITS - F));
        } /* else: x stays */
    }
}
static void fx_gelu(int32_t *x, size_t n) { fx_lut(x, n, LW_FX_GELU_TABLE, LW_FX_GELU_TABLE_LEN, -LW_FX_GELU_RANGE); }
static void fx_silu(int32_t *x, size_t n) { fx_lut(x, n, LW_FX_SILU_TABLE, LW_FX_SILU_TABLE_LEN, -LW_FX_SILU_RANGE); }

/* gated_add: x += round(gate * y 2^-F), saturated; gate rows `gstride` apart. */
static void fx_gated_add(int32_t *x, uint32_t rows, uint32_t d, const int32_t *gate, uint32_t gstride, const int32_t *y) {
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t j = 0; j < d; j++) {
            int32_t *v = x + (size_t)r * d + j;
            int64_t g = gate[(size_t)r * gstride + j];
            *v = saturate32((int64_t)*v + round_shift(g * y[(size_t)r * d + j], F));
        }
}

/* channel_affine: BatchNorm folded into x * scale (Q.20) + offset. */
static void fx_channel_affine(int32_t *x, uint32_t rows, uint32_t c, const int32_t *scale, const int32_t *offset) {
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t j = 0; j < c; j++) {
            int32_t *v = x + (size_t)r * c + j;
            *v = saturate32(round_shift((int64_t)*v * scale[j], COEF) + offset[j]);
        }
}

/* ------------------------------------------------------------------ layer norm */

/* inv_sqrt: 1 / sqrt(a) ~ r 2^-45 2^(-s/2) for a >= 1 (seed ROM and three Newton steps). */
static int64_t fx_inv_sqrt(int64_t a, int64_t *s_out) {
    int64_t s = bit_length(a) - 30;
    if (s & 1) s += 1;
    int64_t m = round_shift(a, s);
    int64_t idx = (m >> 24) - 16;
    idx = idx < 0 ? 0 : idx > (int64_t)LW_FX_ISQRT_SEEDS_LEN - 1 ? (int64_t)LW_FX_ISQRT_SEEDS_LEN - 1 : idx;
    int64_t r = LW_FX_ISQRT_SEEDS[idx]; /* (a is normalized into [2^28, 2^30]: the clamp never acts) */
    const int64_t three = (int64_t)3 << 30;
    for (int i = 0; i < 3; i++) {
        int64_t t = round_shift(wmul(r, r), 31);
        int64_t p = round_shift(wmul(m, t), 29);
        r = round_shift(wmul(r, wsub(three, p)), 31);
    }
    *s_out = s;
    return r;
}

/* layer_norm_fixed: plain, affine (w Q.20, b) or modulated (shift, scale rows mstride apart).
 * c: d int64 of scratch. out may be x. */
static void fx_layer_norm(const int32_t *x, uint32_t rows, uint32_t d, const int32_t *w, const int32_t *b,
                          const int32_t *shift, const int32_t *scale, uint32_t mstride, int32_t *out, int64_t *c) {
    /* layer_norm_constants(d): Python's round() of float64 products, half to even */
    int64_t eps_q = (int64_t)lw_rint(LW_FX_LN_EPS * (double)((uint64_t)d * d * d) * 1099511627776.0);
    int64_t sqrt_d_q = (int64_t)lw_rint(sqrt((double)d) * 16777216.0);
    for (uint32_t r = 0; r < rows; r++) {
        const int32_t *xr = x + (size_t)r * d;
        int64_t total = 0;
        for (uint32_t j = 0; j < d; j++) total += xr[j];
        int64_t cmax = 0;
        for (uint32_t j = 0; j < d; j++) {
            c[j] = (int64_t)d * xr[j] - total;
            int64_t a = c[j] < 0 ? -c[j] : c[j];
            cmax = a > cmax ? a : cmax;
        }
        int64_t k = bit_length(cmax) - 24;
        if (k < F - 24) k = F - 24; /* at the floor the shift is an exact left shift */
        int64_t sq = 0;
        for (uint32_t j = 0; j < d; j++) {
            c[j] = round_shift(c[j], k);
            sq = wadd(sq, wmul(c[j], c[j]));
        }
        int64_t a = wadd(sq, round_shift(eps_q, 40 - 2 * F + 2 * k));
        int64_t s;
        int64_t rinv = fx_inv_sqrt(a, &s);
        int64_t g = round_shift(wmul(rinv, sqrt_d_q), 31); /* sqrt(D) / sqrt(m) * 2^38 */
        int64_t out_shift = 38 + s / 2 - F;               /* s is even */
        int32_t *o = out + (size_t)r * d;
        for (uint32_t j = 0; j < d; j++) {
            int64_t v = round_shift(wmul(c[j], g), out_shift);
            if (w) v = wadd(round_shift(wmul(v, w[j]), COEF), b[j]);
            if (shift) {
                int64_t one_plus = ((int64_t)1 << F) + scale[(size_t)r * mstride + j];
                v = wadd(round_shift(wmul(v, one_plus), F), shift[(size_t)r * mstride + j]);
            }
            o[j] = saturate32(v);
        }
    }
}

/* ------------------------------------------------------------------ attention */

/* exp_neg: exp(u) in Q30 for u <= 0 (F fraction bits). */
static int64_t fx_exp_neg(int64_t u) {
    if (u < -((int64_t)32 << F)) return 0;
    int64_t w = round_shift(u * LW_FX_LOG2E_Q30, F - 2); /* u log2 e, 32 fraction bits */
    int64_t n = w >> 32;
    int64_t f = w & (int64_t)0xFFFFFFFF;
    int64_t i = f >> (32 - LW_FX_EXP2_INDEX_BITS);
    int64_t rem = f & (((int64_t)1 << (32 - LW_FX_EXP2_INDEX_BITS)) - 1);
    const int64_t *t = LW_FX_EXP2_TABLE;
    int64_t v = t[i] + round_shift((t[i + 1] - t[i]) * rem, 32 - LW_FX_EXP2_INDEX_BITS);
    return round_shift(v, -n);
}

/* attention_fixed for one sample: causal, qkv [t, 3d] -> out [t - first_query, d]; scores: t int64. */
static void fx_attention(const int32_t *qkv, uint32_t t, uint32_t d, uint32_t heads, uint32_t first_query,
                         int32_t *out, int64_t *scores) {
    uint32_t hd = d / heads, stride = 3 * d;
    int64_t inv_q = (int64_t)lw_rint(1048576.0 / sqrt((double)hd)); /* round(2**COEF_BITS / sqrt(hd)) */
    for (uint32_t h = 0; h < heads; h++) {
        uint32_t qo = h * hd, ko = d + h * hd, vo = 2 * d + h * hd;
        for (uint32_t q = first_query; q < t; q++) {
            int64_t top = -((int64_t)1 << 62);
            for (uint32_t s = 0; s <= q; s++) {
                int64_t dot = 0;
                for (uint32_t j = 0; j < hd; j++) {
                    dot += (int64_t)qkv[(size_t)q * stride + qo + j] * qkv[(size_t)s * stride + ko + j];
                    dot = dot < -LW_FX_DOT_LIMIT ? -LW_FX_DOT_LIMIT : dot > LW_FX_DOT_LIMIT ? LW_FX_DOT_LIMIT : dot;
                }
                int64_t score = round_shift(dot, F);
                score = score < -LW_FX_SCORE_LIMIT ? -LW_FX_SCORE_LIMIT : score > LW_FX_SCORE_LIMIT ? LW_FX_SCORE_LIMIT : score;
                scores[s] = round_shift(score * inv_q, COEF);
                top = scores[s] > top ? scores[s] : top;
            }
            int64_t total = 0;
            for (uint32_t s = 0; s <= q; s++) {
                scores[s] = fx_exp_neg(scores[s] - top);
                total += scores[s];
            }
            int64_t recip = (((int64_t)1 << 61) + total) / (2 * total); /* 2^60 / total, rounded */
            for (uint32_t s = 0; s <= q; s++) scores[s] = round_shift(scores[s] * recip, LW_FX_PROB_BITS);
            for (uint32_t j = 0; j < hd; j++) {
                int64_t acc = 0;
                for (uint32_t s = 0; s <= q; s++) acc = wadd(acc, scores[s] * qkv[(size_t)s * stride + vo + j]);
                out[(size_t)(q - first_query) * d + h * hd + j] = saturate32(round_shift(acc, LW_FX_PROB_BITS));
            }
        }
    }
}

/* ------------------------------------------------------------------ the forward pass */

typedef struct {
    int32_t *zq, *aq;                  /* gathered inputs [r*t, D], [r*t, A] */
    int32_t *win_in, *win_cond;        /* token features [r][stride][d] */
    int32_t *c1, *c2;                  /* action encoder [r*t, E], [r*t, 4d] */
    int32_t *x, *condc, *mod, *y, *qkv, *att, *tmp, *hid; /* [r*t, ...] */
    int32_t *xl, *modl;                /* the last token [r, d], [r, 6d] */
    int32_t *ph, *lat;                 /* [r, P], [r, D] */
    int32_t *pos, *norm_w, *norm_b, *bn_scale, *bn_offset; /* converted constants */
    int64_t *scores, *lnc;             /* [t], [d] */
    fx_row row;
} fx_bufs;

static uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

/* The widest input of any predictor layer (the decoded row's length). */
static uint32_t max_in(const lw_config *c) {
    uint32_t d = c->predictor_dim;
    uint32_t k = max_u32(max_u32(c->latent_dim, c->action_dim), max_u32(c->action_embed_dim, 4 * d));
    return max_u32(max_u32(k, c->predictor_hidden), c->projector_hidden);
}

#define TAKE(ptr, count)                                                                                               \
    do {                                                                                                               \
        if (!((ptr) = lw_take(a, (uint64_t)(count) * sizeof *(ptr)))) return -1;                                       \
    } while (0)

/* Every buffer for r rows of t tokens (window rows `stride` tokens long). */
static int fx_alloc(lw_arena *a, const lw_config *c, uint32_t r, uint32_t t, uint32_t stride, fx_bufs *b) {
    uint64_t rt = (uint64_t)r * t, d = c->predictor_dim;
    TAKE(b->zq, rt * c->latent_dim);
    TAKE(b->aq, rt * c->action_dim);
    TAKE(b->win_in, (uint64_t)r * stride * d);
    TAKE(b->win_cond, (uint64_t)r * stride * d);
    TAKE(b->c1, rt * c->action_embed_dim);
    TAKE(b->c2, rt * 4 * d);
    TAKE(b->x, rt * d);
    TAKE(b->condc, rt * d);
    TAKE(b->mod, rt * 6 * d);
    TAKE(b->y, rt * d);
    TAKE(b->qkv, rt * 3 * d);
    TAKE(b->att, rt * d);
    TAKE(b->tmp, rt * d);
    TAKE(b->hid, rt * c->predictor_hidden);
    TAKE(b->xl, (uint64_t)r * d);
    TAKE(b->modl, (uint64_t)r * 6 * d);
    TAKE(b->ph, (uint64_t)r * c->projector_hidden);
    TAKE(b->lat, (uint64_t)r * c->latent_dim);
    TAKE(b->pos, (uint64_t)c->history * d);
    TAKE(b->norm_w, d);
    TAKE(b->norm_b, d);
    TAKE(b->bn_scale, c->projector_hidden);
    TAKE(b->bn_offset, c->projector_hidden);
    TAKE(b->scores, stride);
    TAKE(b->lnc, d);
    uint32_t k = max_in(c);
    TAKE(b->row.codes, k);
    TAKE(b->row.mant, k / LW_QK + 1);
    TAKE(b->row.shift, k / LW_QK + 1);
    return 0;
}

typedef struct {
    const lw_config *cfg;
    uint32_t t, stride;
} fx_size_ctx;

static uint64_t fx_bytes(const void *ctx, uint32_t rows) {
    const fx_size_ctx *s = ctx;
    lw_arena count = {NULL, SIZE_MAX, 0};
    fx_bufs b;
    return fx_alloc(&count, s->cfg, rows, s->t, s->stride, &b) == 0 ? count.used : UINT64_MAX;
}

uint64_t lw_fixed_scratch_bytes(const lw_lq40 *q, int rollout, uint32_t rows) {
    uint32_t h = q->cfg.history;
    fx_size_ctx s = {&q->cfg, h, h};
    (void)rollout; /* predict and rollout take the same buffers: a window of `history` tokens */
    return fx_bytes(&s, rows);
}

/* The load-time conversions of FixedPointPredictor.__init__ (done per call: a few hundred values). */
static void fx_constants(const lw_lq40 *q, fx_bufs *b) {
    const lw_config *c = &q->cfg;
    uint32_t d = c->predictor_dim;
    for (uint32_t i = 0; i < c->history * d; i++) b->pos[i] = lw_fx_to_fixed((double)q->pred_pos_embed[i], F);
    for (uint32_t j = 0; j < d; j++) {
        b->norm_w[j] = lw_fx_to_fixed((double)q->pred_norm_w[j], COEF);
        b->norm_b[j] = lw_fx_to_fixed((double)q->pred_norm_b[j], F);
    }
    /* BatchNorm (eval) folded in float64: scale = w / sqrt(var + eps), offset = b - mean * scale */
    const lw_projector *p = &q->pred_proj;
    for (uint32_t j = 0; j < c->projector_hidden; j++) {
        double scale = (double)p->bn_weight[j] / sqrt((double)p->bn_var[j] + LW_FX_LN_EPS);
        double offset = (double)p->bn_bias[j] - (double)p->bn_mean[j] * scale;
        b->bn_scale[j] = lw_fx_to_fixed(scale, COEF);
        b->bn_offset[j] = lw_fx_to_fixed(offset, F);
    }
}

/* FixedPointPredictor._tokens for R tokens: input projection and action condition (the modulations
 * are formed from cond per block, when needed). */
static void fx_tokens(const lw_lq40 *q, fx_bufs *b, uint32_t R, const int32_t *z, const int32_t *act, int32_t *inp,
                      int32_t *cond) {
    uint32_t d = q->cfg.predictor_dim;
    fx_linear(&q->input, z, R, inp, &b->row);
    fx_linear(&q->act_conv, act, R, b->c1, &b->row);
    fx_linear(&q->act_mlp0, b->c1, R, b->c2, &b->row);
    fx_silu(b->c2, (size_t)R * 4 * d);
    fx_linear(&q->act_mlp2, b->c2, R, cond, &b->row);
    fx_silu(cond, (size_t)R * d); /* the modulation's own SiLU */
}

/* FixedPointPredictor._predict_tokens over r rows of t tokens held in the window buffers -> b->lat. */
static void fx_predict_tokens(const lw_lq40 *q, fx_bufs *b, uint32_t r, uint32_t t, uint32_t stride) {
    const lw_config *c = &q->cfg;
    uint32_t d = c->predictor_dim, rt = r * t;
    for (uint32_t i = 0; i < r; i++)
        for (uint32_t j = 0; j < t; j++)
            for (uint32_t k = 0; k < d; k++) {
                size_t src = ((size_t)i * stride + j) * d + k, dst = ((size_t)i * t + j) * d + k;
                b->x[dst] = saturate32((int64_t)b->win_in[src] + b->pos[(size_t)j * d + k]);
                b->condc[dst] = b->win_cond[src];
            }
    int32_t *x = b->x, *mod = b->mod;
    uint32_t rows = rt;
    for (uint32_t i = 0; i < c->predictor_depth; i++) {
        const lw_pred_block *blk = &q->pred[i];
        int last = i + 1 == c->predictor_depth;
        fx_linear(&blk->modulation, b->condc, rt, b->mod, &b->row);
        fx_layer_norm(b->x, rt, d, NULL, NULL, b->mod, b->mod + d, 6 * d, b->y, b->lnc);
        fx_linear(&blk->qkv, b->y, rt, b->qkv, &b->row);
        uint32_t first = last ? t - 1 : 0;
        for (uint32_t s = 0; s < r; s++)
            fx_attention(b->qkv + (size_t)s * t * 3 * d, t, d, c->predictor_heads, first, b->att + (size_t)s * (t - first) * d,
                         b->scores);
        if (last) { /* only the last token's output is needed from here */
            for (uint32_t s = 0; s < r; s++) {
                memcpy(b->xl + (size_t)s * d, b->x + ((size_t)s * t + t - 1) * d, d * sizeof *b->xl);
                memcpy(b->modl + (size_t)s * 6 * d, b->mod + ((size_t)s * t + t - 1) * 6 * d, 6 * d * sizeof *b->modl);
            }
            x = b->xl;
            mod = b->modl;
            rows = r;
        }
        /* _block_tail: gated projection, modulated norm, gated MLP */
        fx_linear(&blk->proj, b->att, rows, b->tmp, &b->row);
        fx_gated_add(x, rows, d, mod + 2 * d, 6 * d, b->tmp);
        fx_layer_norm(x, rows, d, NULL, NULL, mod + 3 * d, mod + 4 * d, 6 * d, b->y, b->lnc);
        fx_linear(&blk->mlp0, b->y, rows, b->hid, &b->row);
        fx_gelu(b->hid, (size_t)rows * c->predictor_hidden);
        fx_linear(&blk->mlp2, b->hid, rows, b->tmp, &b->row);
        fx_gated_add(x, rows, d, mod + 5 * d, 6 * d, b->tmp);
    }
    fx_layer_norm(x, r, d, b->norm_w, b->norm_b, NULL, NULL, 0, b->y, b->lnc);
    fx_linear(&q->pred_proj.l0, b->y, r, b->ph, &b->row);
    fx_channel_affine(b->ph, r, c->projector_hidden, b->bn_scale, b->bn_offset);
    fx_gelu(b->ph, (size_t)r * c->projector_hidden);
    fx_linear(&q->pred_proj.l3, b->ph, r, b->lat, &b->row);
}

/* Token features of rows' histories into the window: tokens [r*h] -> win [r][stride][d], j < h. */
static void fill_window(const lw_lq40 *q, fx_bufs *b, uint32_t r, uint32_t h, uint32_t stride) {
    uint32_t d = q->cfg.predictor_dim;
    fx_tokens(q, b, r * h, b->zq, b->aq, b->x, b->condc); /* x and condc are free until predict */
    for (uint32_t i = 0; i < r; i++) {
        memcpy(b->win_in + (size_t)i * stride * d, b->x + (size_t)i * h * d, (size_t)h * d * sizeof *b->x);
        memcpy(b->win_cond + (size_t)i * stride * d, b->condc + (size_t)i * h * d, (size_t)h * d * sizeof *b->x);
    }
}

static lw_status fx_begin(const lw_model *m, lw_arena *arena, uint32_t B, uint32_t T, char *err, uint32_t *rows) {
    lw_msg msg;
    if (!lw_model_fixed_ok(m)) {
        char why[LW_ERR_LEN];
        lw_fixed_model_ok(lw_model_lq40(m), why);
        lw_msg_init(&msg, err, LW_ERR_LEN);
        lw_msg_str(&msg, why);
        return LW_UNSUPPORTED;
    }
    if (T == 0) {
        lw_msg_init(&msg, err, LW_ERR_LEN);
        lw_msg_str(&msg, "z_q and a_q need T >= 1 steps");
        return LW_BAD_INPUT;
    }
    const lw_lq40 *q = lw_model_lq40(m);
    fx_size_ctx s = {&q->cfg, q->cfg.history, q->cfg.history};
    uint64_t avail = lw_arena_free(arena);
    *rows = lw_fit_rows(avail, B, fx_bytes, &s);
    if (*rows == 0 && B > 0) {
        lw_msg_init(&msg, err, LW_ERR_LEN);
        lw_msg_str(&msg, "the scratch arena has ");
        lw_msg_u64(&msg, avail);
        lw_msg_str(&msg, " bytes free; one row of the fixed-point predictor needs ");
        lw_msg_u64(&msg, fx_bytes(&s, 1));
        return LW_TOO_LARGE;
    }
    return LW_OK;
}

lw_status lw_fixed_predict(const lw_model *m, lw_arena *arena, const int32_t *z_hist, const int32_t *a_hist,
                           uint32_t B, uint32_t T, int32_t *out, char *err) {
    uint32_t chunk;
    lw_status st = fx_begin(m, arena, B, T, err, &chunk);
    if (st != LW_OK || B == 0) return st;
    const lw_lq40 *q = lw_model_lq40(m);
    const lw_config *c = &q->cfg;
    uint32_t h = T < c->history ? T : c->history;
    size_t entry_used = arena->used;
    fx_bufs b;
    fx_alloc(arena, c, chunk, c->history, c->history, &b); /* fits: lw_fit_rows sized it */
    fx_constants(q, &b);
    for (uint32_t b0 = 0; b0 < B; b0 += chunk) {
        uint32_t r = B - b0 < chunk ? B - b0 : chunk;
        lw_gather_last(z_hist, T, c->latent_dim, b0, r, h, b.zq, sizeof *b.zq);
        lw_gather_last(a_hist, T, c->action_dim, b0, r, h, b.aq, sizeof *b.aq);
        fill_window(q, &b, r, h, c->history);
        fx_predict_tokens(q, &b, r, h, c->history);
        memcpy(out + (size_t)b0 * c->latent_dim, b.lat, (size_t)r * c->latent_dim * sizeof *out);
    }
    arena->used = entry_used;
    return LW_OK;
}

lw_status lw_fixed_rollout(const lw_model *m, lw_arena *arena, const int32_t *z_hist, const int32_t *a_hist,
                           const int32_t *a_future, uint32_t B, uint32_t T, uint32_t H, int32_t *out, char *err) {
    uint32_t chunk;
    lw_status st = fx_begin(m, arena, B, T, err, &chunk);
    if (st != LW_OK) return st;
    if (H == 0) {
        lw_msg msg;
        lw_msg_init(&msg, err, LW_ERR_LEN);
        lw_msg_str(&msg, "future_q needs H >= 1 steps");
        return LW_BAD_INPUT;
    }
    if (B == 0) return LW_OK;
    const lw_lq40 *q = lw_model_lq40(m);
    const lw_config *c = &q->cfg;
    uint32_t hist = c->history, d = c->predictor_dim, D = c->latent_dim, A = c->action_dim;
    uint32_t h = T < hist ? T : hist;
    size_t entry_used = arena->used;
    fx_bufs b;
    fx_alloc(arena, c, chunk, hist, hist, &b);
    fx_constants(q, &b);
    for (uint32_t b0 = 0; b0 < B; b0 += chunk) {
        uint32_t r = B - b0 < chunk ? B - b0 : chunk;
        lw_gather_last(z_hist, T, D, b0, r, h, b.zq, sizeof *b.zq);
        lw_gather_last(a_hist, T, A, b0, r, h, b.aq, sizeof *b.aq);
        fill_window(q, &b, r, h, hist);
        uint32_t t = h;
        for (uint32_t k = 0; k < H; k++) {
            fx_predict_tokens(q, &b, r, t, hist);
            for (uint32_t i = 0; i < r; i++) {
                memcpy(out + ((size_t)(b0 + i) * H + k) * D, b.lat + (size_t)i * D, D * sizeof *out);
                memcpy(b.aq + (size_t)i * A, a_future + ((size_t)(b0 + i) * H + k) * A, A * sizeof *out);
            }
            if (k + 1 == H) break; /* the last prediction's token is never read */
            /* the predicted latent and a_future[:, k] become the window's newest token */
            fx_tokens(q, &b, r, b.lat, b.aq, b.x, b.condc);
            t = lw_window_push(b.win_in, b.win_cond, b.x, b.condc, r, hist, d, t, sizeof *b.x);
        }
    }
    arena->used = entry_used;
    return LW_OK;
}

lw_status lw_fixed_quantize(const float *x, size_t n, int32_t *q, char *err) {
    /* FixedPointPredictor: finite inputs (check_history), |x| < 2^(31 - F) (_in_range), then
     * round(x * 2^F) half to even; the product is exact in float64. */
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (!(v - v == 0.0f) || !(v < 32768.0f && v > -32768.0f)) {
            lw_msg msg;
            lw_msg_init(&msg, err, LW_ERR_LEN);
            lw_msg_str(&msg, v - v == 0.0f ? "an input lies outside the fixed-point range (|x| < 32768 at 16 fraction bits), at index "
                                          : "an input holds NaN or inf, at index ");
            lw_msg_u64(&msg, i);
            return LW_BAD_INPUT;
        }
        q[i] = (int32_t)lw_rint((double)v * 65536.0);
    }
    return LW_OK;
}
