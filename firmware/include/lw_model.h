/* The world model on a device: an .lq40 file checked and run in place (docs/lq40.md).
 *
 * A model is the file's bytes, which must stay alive and unchanged while the model is in use, plus
 * a small table of views into them (lw_model). Inference needs scratch memory, handed in by the
 * caller as an arena; nothing here allocates. Float paths follow world_models/backends/numba_engine.py
 * (the numba-q4 backend); the fixed-point path follows world_models/backends/devices/fixed_point.py
 * and numba_kernels/fixed_point.py bit for bit.
 */
#ifndef LW_MODEL_H
#define LW_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "lw_status.h"

typedef struct {
    uint8_t *base;   /* scratch memory, 16-byte aligned */
    size_t size;     /* its bytes */
    size_t used;     /* bytes handed out so far */
} lw_arena;

/* The config fields a caller needs (the full config lives inside lw_model). */
typedef struct {
    uint32_t latent_dim;
    uint32_t action_dim;
    uint32_t history;
    uint32_t image_size;
    uint32_t has_encoder_weights; /* 1 when ENCODE can run */
    uint32_t fixed_point_ok;      /* 1 when the predictor's blocks are Q4_0 (the FPGA path runs) */
} lw_model_info;

/* Opaque to callers; defined in core/model.c so its size is known to whoever embeds it. */
typedef struct lw_model lw_model;

/* sizeof(lw_model): callers reserve this many bytes (8-byte aligned) for one model. */
size_t lw_model_struct_size(void);

/* Check `file` (size bytes) as world_models/backends/lq40.py does and build the model's views.
 * Returns LW_BAD_MODEL (with the field named in err) for any file the Python reader refuses. */
lw_status lw_model_load(lw_model *m, const uint8_t *file, uint32_t size, char *err);

void lw_model_get_info(const lw_model *m, lw_model_info *info);

/* Float path. Shapes are row-major: z_hist [B, T, D], a_hist [B, T, A], a_future [B, H, A],
 * pixels uint8 [B, S, S, 3]. T >= 1; only the last `history` steps are used.
 * Scratch comes from `arena` (reset by the callee to its entry state on return).
 * LW_BAD_INPUT for NaN/inf inputs; LW_TOO_LARGE when the arena is too small for B rows. */
lw_status lw_model_predict(const lw_model *m, lw_arena *arena, const float *z_hist, const float *a_hist,
                           uint32_t B, uint32_t T, float *out, char *err);
lw_status lw_model_rollout(const lw_model *m, lw_arena *arena, const float *z_hist, const float *a_hist,
                           const float *a_future, uint32_t B, uint32_t T, uint32_t H, float *out, char *err);
lw_status lw_model_encode(const lw_model *m, lw_arena *arena, const uint8_t *pixels, uint32_t B, float *out,
                          char *err);

/* Fixed-point path (the FPGA's arithmetic), activations int32 with LW_FRAC_BITS fraction bits.
 * lw_fixed_quantize converts float inputs as FixedPointPredictor.quantize does (LW_BAD_INPUT when
 * out of range or not finite). */
#define LW_FRAC_BITS 16
lw_status lw_fixed_quantize(const float *x, size_t n, int32_t *q, char *err);
lw_status lw_fixed_predict(const lw_model *m, lw_arena *arena, const int32_t *z_hist, const int32_t *a_hist,
                           uint32_t B, uint32_t T, int32_t *out, char *err);
lw_status lw_fixed_rollout(const lw_model *m, lw_arena *arena, const int32_t *z_hist, const int32_t *a_hist,
                           const int32_t *a_future, uint32_t B, uint32_t T, uint32_t H, int32_t *out, char *err);

/* Scratch sizing. Every call above runs a batch in chunks of as many rows as the arena's free bytes
 * hold, so an arena with lw_model_scratch_bytes(m, 1, T, H) bytes free (from a 16-byte aligned
 * `used`) runs any batch of any of them, and one with lw_model_scratch_bytes(m, R, T, H) runs R rows
 * per chunk (faster: each layer's weights are read once per chunk); LW_TOO_LARGE means not even one
 * row fits. Every op sizes for a full window of `history` tokens, so T and H do not change the answer
 * today. SIZE_MAX when the size is beyond size_t. */
typedef enum {
    LW_OP_PREDICT = 0,
    LW_OP_ROLLOUT,
    LW_OP_ENCODE,
    LW_OP_FIXED_PREDICT,
    LW_OP_FIXED_ROLLOUT
} lw_op;
size_t lw_model_op_scratch_bytes(const lw_model *m, lw_op op, uint32_t rows, uint32_t T, uint32_t H);
size_t lw_model_scratch_bytes(const lw_model *m, uint32_t rows, uint32_t T, uint32_t H); /* max over the ops */

#endif
