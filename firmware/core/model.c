/* The world model on the device (lw_model.h): load, info, scratch sizing and the float path,
 * following world_models/backends/numba_engine.py (NumbaLeWM) line for line; the fixed-point path
 * is fixed_point.c's.
 *
 * Batches run in chunks of as many rows as the arena holds (rows never interact, so a row's output
 * does not depend on the chunk it ran in); one chunk's buffers are taken once per call and the arena
 * is handed back as it came. LW_TOO_LARGE only when not even one row fits. */
#include <string.h>

#include "fixed_point.h"
#include "json.h"
#include "kernels.h"
#include "window.h"
#include "lq40.h"
#include "lw_model.h"

#define LW_CONV_TILE 16u /* conv-stem output positions per im2col tile: the weights are decoded once per tile */

struct lw_model {
    lw_lq40 q;
    int fixed_ok; /* lw_fixed_model_ok */
};

size_t lw_model_struct_size(void) { return sizeof(lw_model); }
const lw_lq40 *lw_model_lq40(const lw_model *m) { return &m->q; }
int lw_model_fixed_ok(const lw_model *m) { return m->fixed_ok; }

lw_status lw_model_load(lw_model *m, const uint8_t *file, uint32_t size, char *err) {
    m->fixed_ok = 0;
    lw_status st = lw_lq40_load(&m->q, file, size, err);
    if (st != LW_OK) return st;
    char why[LW_ERR_LEN];
    m->fixed_ok = lw_fixed_model_ok(&m->q, why);
    return LW_OK;
}

void lw_model_get_info(const lw_model *m, lw_model_info *info) {
    const lw_config *c = &m->q.cfg;
    info->latent_dim = c->latent_dim;
    info->action_dim = c->action_dim;
    info->history = c->history;
    info->image_size = c->image_size;
    info->has_encoder_weights = 1; /* the layout check requires every encoder tensor */
    info->fixed_point_ok = (uint32_t)m->fixed_ok;
}

static void message(char *err, const char *a, const char *b) {
    lw_msg m;
    lw_msg_init(&m, err, LW_ERR_LEN);
    lw_msg_str(&m, a);
    if (b) lw_msg_str(&m, b);
}

static uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

#define TAKE(ptr, count)                                                                                               \
    do {                                                                                                               \
        if (!((ptr) = lw_take(a, (uint64_t)(count) * sizeof *(ptr)))) return -1;                                       \
    } while (0)

/* ------------------------------------------------------------------ the predictor */

typedef struct {
    float *zg, *ag;              /* gathered inputs [r*t, D], [r*t, A] */
    float *win_in, *win_cond;    /* token features [r][stride][d] */
    float *c1, *c2;              /* action encoder [r*t, E], [r*t, 4d] */
    float *x, *condc, *mod, *y, *qkv, *att, *tmp, *hid; /* [r*t, ...] */
    float *xl, *modl;            /* the last token [r, d], [r, 6d] */
    float *ph, *lat;             /* [r, P], [r, D] */
    float *weights, *wrow;       /* attention [t]; a decoded weight row */
} pr_bufs;

static uint32_t pred_max_in(const lw_config *c) {
    uint32_t d = c->predictor_dim;
    uint32_t k = max_u32(max_u32(c->latent_dim, c->action_dim), max_u32(c->action_embed_dim, 4 * d));
    return max_u32(max_u32(k, c->predictor_hidden), c->projector_hidden);
}

static int pr_alloc(lw_arena *a, const lw_config *c, uint32_t r, uint32_t t, pr_bufs *b) {
    uint64_t rt = (uint64_t)r * t, d = c->predictor_dim;
    TAKE(b->zg, rt * c->latent_dim);
    TAKE(b->ag, rt * c->action_dim);
    TAKE(b->win_in, rt * d);
    TAKE(b->win_cond, rt * d);
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
    TAKE(b->weights, t);
    TAKE(b->wrow, pred_max_in(c));
    return 0;
}

static uint64_t pr_bytes(const void *ctx, uint32_t rows) {
    const lw_config *c = ctx;
    lw_arena count = {NULL, SIZE_MAX, 0};
    pr_bufs b;
    return pr_alloc(&count, c, rows, c->history, &b) == 0 ? count.used : UINT64_MAX;
}

/* NumbaLeWM.tokens for R tokens: the input projection and the action condition (the blocks'
 * modulations are formed from cond when each block runs). */
static void pr_tokens(const lw_lq40 *q, pr_bufs *b, uint32_t R, const float *z, const float *act, float *inp,
                      float *cond) {
    lw_linear_forward(&q->input, z, R, inp, b->wrow, LW_ACT_NONE);
    lw_linear_forward(&q->act_conv, act, R, b->c1, b->wrow, LW_ACT_NONE);
    lw_linear_forward(&q->act_mlp0, b->c1, R, b->c2, b->wrow, LW_ACT_SILU);
    lw_linear_forward(&q->act_mlp2, b->c2, R, cond, b->wrow, LW_ACT_SILU); /* then apply_activation(SILU) */
}

/* NumbaLeWM.predict_tokens (shared = 0) over r rows of t tokens in the window -> b->lat. */
static void pr_predict_tokens(const lw_lq40 *q, pr_bufs *b, uint32_t r, uint32_t t, uint32_t stride) {
    const lw_config *c = &q->cfg;
    uint32_t d = c->predictor_dim, rt = r * t;
    for (uint32_t i = 0; i < r; i++)
        for (uint32_t j = 0; j < t; j++)
            for (uint32_t k = 0; k < d; k++) {
                size_t src = ((size_t)i * stride + j) * d + k, dst = ((size_t)i * t + j) * d + k;
                b->x[dst] = b->win_in[src] + q->pred_pos_embed[(size_t)j * d + k];
                b->condc[dst] = b->win_cond[src];
            }
    float *x = b->x, *mod = b->mod;
    uint32_t rows = rt;
    for (uint32_t i = 0; i < c->predictor_depth; i++) {
        const lw_pred_block *blk = &q->pred[i];
        int last = i + 1 == c->predictor_depth; /* only the last step's output is needed from here */
        lw_linear_forward(&blk->modulation, b->condc, rt, b->mod, b->wrow, LW_ACT_NONE);
        lw_layer_norm(b->x, rt, d, NULL, NULL, b->mod, b->mod + d, 6 * d, b->y);
        lw_linear_forward(&blk->qkv, b->y, rt, b->qkv, b->wrow, LW_ACT_NONE);
        uint32_t first = last ? t - 1 : 0;
        for (uint32_t s = 0; s < r; s++)
            lw_attention(b->qkv + (size_t)s * t * 3 * d, t, d, c->predictor_heads, 1, first,
                         b->att + (size_t)s * (t - first) * d, b->weights);
        if (last) {
            for (uint32_t s = 0; s < r; s++) {
                memcpy(b->xl + (size_t)s * d, b->x + ((size_t)s * t + t - 1) * d, d * sizeof *b->x);
                memcpy(b->modl + (size_t)s * 6 * d, b->mod + ((size_t)s * t + t - 1) * 6 * d, 6 * d * sizeof *b->x);
            }
            x = b->xl;
            mod = b->modl;
            rows = r;
        }
        /* _block_tail: x + gate * proj(att), modulated norm, x + gate * mlp */
        lw_linear_forward(&blk->proj, b->att, rows, b->tmp, b->wrow, LW_ACT_NONE);
        for (uint32_t s = 0; s < rows; s++)
            for (uint32_t k = 0; k < d; k++) x[(size_t)s * d + k] += mod[(size_t)s * 6 * d + 2 * d + k] * b->tmp[(size_t)s * d + k];
        lw_layer_norm(x, rows, d, NULL, NULL, mod + 3 * d, mod + 4 * d, 6 * d, b->y);
        lw_linear_forward(&blk->mlp0, b->y, rows, b->hid, b->wrow, LW_ACT_GELU);
        lw_linear_forward(&blk->mlp2, b->hid, rows, b->tmp, b->wrow, LW_ACT_NONE);
        for (uint32_t s = 0; s < rows; s++)
            for (uint32_t k = 0; k < d; k++) x[(size_t)s * d + k] += mod[(size_t)s * 6 * d + 5 * d + k] * b->tmp[(size_t)s * d + k];
    }
    lw_layer_norm(x, r, d, q->pred_norm_w, q->pred_norm_b, NULL, NULL, 0, b->y);
    const lw_projector *p = &q->pred_proj;
    lw_linear_forward(&p->l0, b->y, r, b->ph, b->wrow, LW_ACT_NONE);
    lw_batch_norm_act(b->ph, r, c->projector_hidden, p->bn_mean, p->bn_var, p->bn_weight, p->bn_bias, LW_ACT_GELU);
    lw_linear_forward(&p->l3, b->ph, r, b->lat, b->wrow, LW_ACT_NONE);
}

static void fill_window(const lw_lq40 *q, pr_bufs *b, uint32_t r, uint32_t h, uint32_t stride) {
    uint32_t d = q->cfg.predictor_dim;
    pr_tokens(q, b, r * h, b->zg, b->ag, b->x, b->condc);
    for (uint32_t i = 0; i < r; i++) {
        memcpy(b->win_in + (size_t)i * stride * d, b->x + (size_t)i * h * d, (size_t)h * d * sizeof *b->x);
        memcpy(b->win_cond + (size_t)i * stride * d, b->condc + (size_t)i * h * d, (size_t)h * d * sizeof *b->x);
    }
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(x[i] - x[i] == 0.0f)) return 0;
    return 1;
}

static lw_status too_large(char *err, uint64_t avail, uint64_t need) {
    lw_msg m;
    lw_msg_init(&m, err, LW_ERR_LEN);
    lw_msg_str(&m, "the scratch arena has ");
    lw_msg_u64(&m, avail);
    lw_msg_str(&m, " bytes free; one row needs ");
    lw_msg_u64(&m, need);
    return LW_TOO_LARGE;
}

#define arena_free lw_arena_free

/* The checks every float predict / rollout makes (interface.check_history), and the chunk size. */
static lw_status pr_begin(const lw_model *m, lw_arena *arena, const float *z_hist, const float *a_hist, uint32_t B,
                          uint32_t T, char *err, uint32_t *rows) {
    const lw_config *c = &m->q.cfg;
    if (T == 0) {
        message(err, "z_hist and a_hist need T >= 1 steps", NULL);
        return LW_BAD_INPUT;
    }
    if (!all_finite(z_hist, (size_t)B * T * c->latent_dim)) {
        message(err, "z_hist holds NaN or inf values", NULL);
        return LW_BAD_INPUT;
    }
    if (!all_finite(a_hist, (size_t)B * T * c->action_dim)) {
        message(err, "a_hist holds NaN or inf values", NULL);
        return LW_BAD_INPUT;
    }
    *rows = lw_fit_rows(arena_free(arena), B, pr_bytes, c);
    if (*rows == 0 && B > 0) return too_large(err, arena_free(arena), pr_bytes(c, 1));
    return LW_OK;
}

lw_status lw_model_predict(const lw_model *m, lw_arena *arena, const float *z_hist, const float *a_hist, uint32_t B,
                           uint32_t T, float *out, char *err) {
    uint32_t chunk;
    lw_status st = pr_begin(m, arena, z_hist, a_hist, B, T, err, &chunk);
    if (st != LW_OK || B == 0) return st;
    const lw_lq40 *q = &m->q;
    const lw_config *c = &q->cfg;
    uint32_t h = T < c->history ? T : c->history;
    size_t entry_used = arena->used;
    pr_bufs b;
    pr_alloc(arena, c, chunk, c->history, &b);
    for (uint32_t b0 = 0; b0 < B; b0 += chunk) {
        uint32_t r = B - b0 < chunk ? B - b0 : chunk;
        lw_gather_last(z_hist, T, c->latent_dim, b0, r, h, b.zg, sizeof *b.zg);
        lw_gather_last(a_hist, T, c->action_dim, b0, r, h, b.ag, sizeof *b.ag);
        fill_window(q, &b, r, h, h);
        pr_predict_tokens(q, &b, r, h, h);
        memcpy(out + (size_t)b0 * c->latent_dim, b.lat, (size_t)r * c->latent_dim * sizeof *out);
    }
    arena->used = entry_used;
    return LW_OK;
}

lw_status lw_model_rollout(const lw_model *m, lw_arena *arena, const float *z_hist, const float *a_hist,
                           const float *a_future, uint32_t B, uint32_t T, uint32_t H, float *out, char *err) {
    uint32_t chunk;
    lw_status st = pr_begin(m, arena, z_hist, a_hist, B, T, err, &chunk);
    if (st != LW_OK) return st;
    const lw_lq40 *q = &m->q;
    const lw_config *c = &q->cfg;
    uint32_t hist = c->history, d = c->predictor_dim, D = c->latent_dim, A = c->action_dim;
    if (H == 0) {
        message(err, "a_future needs H >= 1 steps", NULL);
        return LW_BAD_INPUT;
    }
    if (!all_finite(a_future, (size_t)B * H * A)) {
        message(err, "a_future holds NaN or inf values", NULL);
        return LW_BAD_INPUT;
    }
    if (B == 0) return LW_OK;
    uint32_t h = T < hist ? T : hist;
    size_t entry_used = arena->used;
    pr_bufs b;
    pr_alloc(arena, c, chunk, hist, &b);
    /* WorldModel._rollout: predict, then the prediction and a_future[:, k] join the window of the last
     * `history` latents; each token's features are computed once, as it enters the window. */
    for (uint32_t b0 = 0; b0 < B; b0 += chunk) {
        uint32_t r = B - b0 < chunk ? B - b0 : chunk;
        lw_gather_last(z_hist, T, D, b0, r, h, b.zg, sizeof *b.zg);
        lw_gather_last(a_hist, T, A, b0, r, h, b.ag, sizeof *b.ag);
        fill_window(q, &b, r, h, hist);
        uint32_t t = h;
        for (uint32_t k = 0; k < H; k++) {
            pr_predict_tokens(q, &b, r, t, hist);
            for (uint32_t i = 0; i < r; i++) {
                memcpy(out + ((size_t)(b0 + i) * H + k) * D, b.lat + (size_t)i * D, D * sizeof *out);
                memcpy(b.ag + (size_t)i * A, a_future + ((size_t)(b0 + i) * H + k) * A, A * sizeof *out);
            }
            if (k + 1 == H) break;
            pr_tokens(q, &b, r, b.lat, b.ag, b.x, b.condc);
            t = lw_window_push(b.win_in, b.win_cond, b.x, b.condc, r, hist, d, t, sizeof *b.x);
        }
    }
    arena->used = entry_used;
    return LW_OK;
}

/* ------------------------------------------------------------------ the encoders */

typedef struct {
    /* ViT: [r * tokens, ...] */
    float *patches, *h, *y, *qkv, *att, *hid;
    /* conv stem: two feature maps of one image, an im2col tile, the flattened maps [r, C s s] */
    float *map_a, *map_b, *tile, *flat;
    /* both: [r, dE], [r, P], attention weights, a decoded weight row */
    float *feat, *ph, *weights, *wrow;
} en_bufs;

static uint32_t en_max_in(const lw_lq40 *q) {
    const lw_config *c = &q->cfg;
    uint32_t k = max_u32(c->encoder_dim, c->projector_hidden);
    if (c->encoder == LW_ENC_CNN) {
        for (uint32_t i = 0; i < LW_CONV_LAYERS; i++) k = max_u32(k, q->conv[i].conv.k);
        return max_u32(k, q->flat.k);
    }
    return max_u32(max_u32(k, 3 * c->patch_size * c->patch_size), c->encoder_hidden);
}

static int en_alloc(lw_arena *a, const lw_lq40 *q, uint32_t r, en_bufs *b) {
    const lw_config *c = &q->cfg;
    uint64_t de = c->encoder_dim;
    memset(b, 0, sizeof *b);
    if (c->encoder == LW_ENC_CNN) {
        uint64_t even = 0, odd = 0, kmax = 0;
        for (uint32_t i = 0; i < LW_CONV_LAYERS; i++) {
            const lw_conv_layer *l = &q->conv[i];
            uint64_t cells = (uint64_t)l->side * l->side * l->c_out;
            if (i % 2 == 0) even = cells > even ? cells : even;
            else odd = cells > odd ? cells : odd;
            kmax = l->conv.k > kmax ? l->conv.k : kmax;
        }
        TAKE(b->map_a, even);
        TAKE(b->map_b, odd);
        TAKE(b->tile, (uint64_t)LW_CONV_TILE * kmax);
        TAKE(b->flat, (uint64_t)r * q->flat.k);
        TAKE(b->weights, 1);
    } else {
        uint64_t g = c->image_size / c->patch_size, n = g * g + 1, rn = (uint64_t)r * n;
        TAKE(b->patches, (uint64_t)r * g * g * 3 * c->patch_size * c->patch_size);
        TAKE(b->h, rn * de);
        TAKE(b->y, rn * de);
        TAKE(b->qkv, rn * 3 * de);
        TAKE(b->att, rn * de);
        TAKE(b->hid, rn * c->encoder_hidden);
        TAKE(b->weights, n);
    }
    TAKE(b->feat, (uint64_t)r * de);
    TAKE(b->ph, (uint64_t)r * c->projector_hidden);
    TAKE(b->wrow, en_max_in(q));
    return 0;
}

static uint64_t en_bytes(const void *ctx, uint32_t rows) {
    lw_arena count = {NULL, SIZE_MAX, 0};
    en_bufs b;
    return en_alloc(&count, ctx, rows, &b) == 0 ? count.used : UINT64_MAX;
}

/* im2col of layer 0 straight from the uint8 frame: x = p / 127.5 - 1 (NumbaLeWM.encode, float32). */
static void im2col_pixels(const uint8_t *px, uint32_t side_in, uint32_t first, uint32_t count, float *out) {
    uint32_t side_out = (side_in + 2 - 3) / 2 + 1;
    for (uint32_t r = 0; r < count; r++) {
        uint32_t oy = (first + r) / side_out, ox = (first + r) % side_out;
        float *row = out + (size_t)r * 27;
        for (uint32_t ch = 0; ch < 3; ch++)
            for (uint32_t ky = 0; ky < 3; ky++) {
                int64_t iy = (int64_t)oy * 2 - 1 + ky;
                for (uint32_t kx = 0; kx < 3; kx++) {
                    int64_t ix = (int64_t)ox * 2 - 1 + kx;
                    int inside = iy >= 0 && iy < side_in && ix >= 0 && ix < side_in;
                    row[(ch * 3 + ky) * 3 + kx] =
                        inside ? (float)px[((size_t)iy * side_in + (size_t)ix) * 3 + ch] / 127.5f - 1.0f : 0.0f;
                }
            }
    }
}

/* NumbaLeWM._encode_cnn for one frame -> its flattened last map (channel-major, torch's NCHW). */
static void encode_cnn_frame(const lw_lq40 *q, en_bufs *b, const uint8_t *px, float *flat) {
    const lw_config *c = &q->cfg;
    const float *in = NULL;
    uint32_t side_in = c->image_size;
    for (uint32_t i = 0; i < LW_CONV_LAYERS; i++) {
        const lw_conv_layer *l = &q->conv[i];
        float *out = i % 2 == 0 ? b->map_a : b->map_b;
        uint32_t cells = l->side * l->side;
        for (uint32_t first = 0; first < cells; first += LW_CONV_TILE) {
            uint32_t count = cells - first < LW_CONV_TILE ? cells - first : LW_CONV_TILE;
            if (i == 0)
                im2col_pixels(px, side_in, first, count, b->tile);
            else
                lw_im2col(in, side_in, l->c_in, 3, 2, 1, first, count, b->tile);
            lw_linear_forward(&l->conv, b->tile, count, out + (size_t)first * l->c_out, b->wrow, LW_ACT_NONE);
        }
        lw_group_norm_act(out, cells, l->c_out, LW_CONV_GROUPS, l->norm_w, l->norm_b, LW_ACT_GELU);
        in = out;
        side_in = l->side;
    }
    const lw_conv_layer *last = &q->conv[LW_CONV_LAYERS - 1];
    uint32_t cells = last->side * last->side;
    for (uint32_t p = 0; p < cells; p++)
        for (uint32_t ch = 0; ch < last->c_out; ch++) flat[(size_t)ch * cells + p] = in[(size_t)p * last->c_out + ch];
}

/* NumbaLeWM._encode_vit for r frames -> the CLS rows, normalized, in b->feat. */
static void encode_vit(const lw_lq40 *q, en_bufs *b, const uint8_t *px, uint32_t r) {
    const lw_config *c = &q->cfg;
    uint32_t p = c->patch_size, s = c->image_size, g = s / p, n = g * g + 1, de = c->encoder_dim, pp = 3 * p * p;
    /* patches in (channel, row, column) order: x.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4) */
    for (uint32_t i = 0; i < r; i++)
        for (uint32_t gy = 0; gy < g; gy++)
            for (uint32_t gx = 0; gx < g; gx++) {
                float *row = b->patches + ((size_t)i * g * g + gy * g + gx) * pp;
                for (uint32_t ch = 0; ch < 3; ch++)
                    for (uint32_t py = 0; py < p; py++)
                        for (uint32_t pxi = 0; pxi < p; pxi++) {
                            uint8_t v = px[(((size_t)i * s + gy * p + py) * s + gx * p + pxi) * 3 + ch];
                            row[(ch * p + py) * p + pxi] = (float)v / 127.5f - 1.0f;
                        }
            }
    lw_linear_forward(&q->patch_embed, b->patches, r * g * g, b->att, b->wrow, LW_ACT_NONE);
    for (uint32_t i = 0; i < r; i++) {
        float *h = b->h + (size_t)i * n * de;
        memcpy(h, q->cls_token, de * sizeof *h);
        memcpy(h + de, b->att + (size_t)i * g * g * de, (size_t)g * g * de * sizeof *h);
        for (uint32_t k = 0; k < n * de; k++) h[k] += q->enc_pos_embed[k];
    }
    uint32_t rn = r * n;
    for (uint32_t i = 0; i < c->encoder_depth; i++) {
        const lw_vit_block *blk = &q->vit[i];
        lw_layer_norm(b->h, rn, de, blk->norm1_w, blk->norm1_b, NULL, NULL, 0, b->y);
        lw_linear_forward(&blk->qkv, b->y, rn, b->qkv, b->wrow, LW_ACT_NONE);
        for (uint32_t k = 0; k < r; k++)
            lw_attention(b->qkv + (size_t)k * n * 3 * de, n, de, c->encoder_heads, 0, 0, b->att + (size_t)k * n * de,
                         b->weights);
        lw_linear_forward(&blk->proj, b->att, rn, b->y, b->wrow, LW_ACT_NONE);
        for (size_t k = 0; k < (size_t)rn * de; k++) b->h[k] += b->y[k];
        lw_layer_norm(b->h, rn, de, blk->norm2_w, blk->norm2_b, NULL, NULL, 0, b->y);
        lw_linear_forward(&blk->mlp0, b->y, rn, b->hid, b->wrow, LW_ACT_GELU);
        lw_linear_forward(&blk->mlp2, b->hid, rn, b->y, b->wrow, LW_ACT_NONE);
        for (size_t k = 0; k < (size_t)rn * de; k++) b->h[k] += b->y[k];
    }
    for (uint32_t i = 0; i < r; i++) memcpy(b->feat + (size_t)i * de, b->h + (size_t)i * n * de, de * sizeof *b->feat);
    lw_layer_norm(b->feat, r, de, q->enc_norm_w, q->enc_norm_b, NULL, NULL, 0, b->feat);
}

lw_status lw_model_encode(const lw_model *m, lw_arena *arena, const uint8_t *pixels, uint32_t B, float *out,
                          char *err) {
    const lw_lq40 *q = &m->q;
    const lw_config *c = &q->cfg;
    uint32_t chunk = lw_fit_rows(arena_free(arena), B, en_bytes, q);
    if (B == 0) return LW_OK;
    if (chunk == 0) return too_large(err, arena_free(arena), en_bytes(q, 1));
    size_t entry_used = arena->used, frame = (size_t)c->image_size * c->image_size * 3;
    en_bufs b;
    en_alloc(arena, q, chunk, &b);
    for (uint32_t b0 = 0; b0 < B; b0 += chunk) {
        uint32_t r = B - b0 < chunk ? B - b0 : chunk;
        const uint8_t *px = pixels + (size_t)b0 * frame;
        if (c->encoder == LW_ENC_CNN) {
            for (uint32_t i = 0; i < r; i++) encode_cnn_frame(q, &b, px + i * frame, b.flat + (size_t)i * q->flat.k);
            lw_linear_forward(&q->flat, b.flat, r, b.feat, b.wrow, LW_ACT_NONE);
            lw_layer_norm(b.feat, r, c->encoder_dim, q->enc_norm_w, q->enc_norm_b, NULL, NULL, 0, b.feat);
        } else {
            encode_vit(q, &b, px, r);
        }
        const lw_projector *p = &q->enc_proj;
        lw_linear_forward(&p->l0, b.feat, r, b.ph, b.wrow, LW_ACT_NONE);
        lw_batch_norm_act(b.ph, r, c->projector_hidden, p->bn_mean, p->bn_var, p->bn_weight, p->bn_bias, LW_ACT_GELU);
        lw_linear_forward(&p->l3, b.ph, r, out + (size_t)b0 * c->latent_dim, b.wrow, LW_ACT_NONE);
    }
    arena->used = entry_used;
    return LW_OK;
}

/* ------------------------------------------------------------------ scratch sizing */

size_t lw_model_op_scratch_bytes(const lw_model *m, lw_op op, uint32_t rows, uint32_t T, uint32_t H) {
    (void)T; /* every op takes buffers for a full window of `history` tokens, so T and H do not matter */
    (void)H;
    uint64_t n;
    switch (op) {
    case LW_OP_PREDICT:
    case LW_OP_ROLLOUT: n = pr_bytes(&m->q.cfg, rows); break;
    case LW_OP_ENCODE: n = en_bytes(&m->q, rows); break;
    default: n = lw_fixed_scratch_bytes(&m->q, op == LW_OP_FIXED_ROLLOUT, rows); break;
    }
    return n >= (uint64_t)SIZE_MAX ? SIZE_MAX : (size_t)n; /* for an arena whose `used` is 16-byte aligned */
}

size_t lw_model_scratch_bytes(const lw_model *m, uint32_t rows, uint32_t T, uint32_t H) {
    size_t most = 0;
    for (int op = LW_OP_PREDICT; op <= LW_OP_FIXED_ROLLOUT; op++) {
        size_t n = lw_model_op_scratch_bytes(m, (lw_op)op, rows, T, H);
        most = n > most ? n : most;
    }
    return most;
}
