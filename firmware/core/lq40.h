/* The LQ40 reader: every check world_models/backends/lq40.py (read_model), world_models/config.py
 * (ModelConfig.from_dict) and world_models/backends/layout.py (check_tensors) make, in their order
 * (docs/lq40.md "What a reader checks", steps 1-8; step 9 is a model folder's and has no device
 * counterpart), then views into the file's bytes for every tensor the forward pass reads.
 *
 * Sizes the file declares are checked in 64-bit arithmetic against the file's own size before any
 * of them is used, so a hostile header cannot overflow a 32-bit size_t (rv32). The file must stay
 * alive and unchanged while the views are in use, must start 4-byte aligned (the f32 views are
 * read in place), and is little-endian, as every device here is.
 */
#ifndef LW_LQ40_H
#define LW_LQ40_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "lw_status.h"

#define LW_LQ40_ALIGN 64u
#define LW_LQ40_MAX_HEADER (16u << 20)
#define LW_MAX_DEPTH 64u      /* config.MAX_DEPTH: encoder_depth, predictor_depth */
#define LW_MAX_TENSORS 4096u  /* manifest entries a device indexes (a depth-64 model has about 2040) */
#define LW_CONV_LAYERS 4u     /* config.CONV_LAYERS */
#define LW_CONV_GROUPS 8u     /* config.CONV_GROUPS */
#define LW_PROBE_OUTPUTS 6u   /* layout.PROBE_OUTPUTS */

/* Weight formats, in numba_kernels.linear.KINDS order. */
typedef enum { LW_DT_F32 = 0, LW_DT_Q4_0, LW_DT_Q8_0, LW_DT_I8, LW_DT_T2, LW_DT_COUNT } lw_dtype;
typedef enum { LW_ENC_VIT = 0, LW_ENC_CNN = 1 } lw_encoder_kind;

#define LW_QK 32u
#define LW_Q4_0_BLOCK_BYTES 18u
#define LW_Q8_0_BLOCK_BYTES 34u

/* One manifest entry in the tensor index: where its name is in the header, so names are compared
 * by their bytes without walking the entry again. */
#define LW_NAME_ESCAPED 0x80000000u /* in name_len: the name holds a JSON escape (compare it decoded) */
typedef struct {
    uint32_t hash;     /* FNV-1a of the decoded name (lw_json_str_hash) */
    uint32_t name_at;  /* the name's opening quote (a header position) */
    uint32_t name_len; /* raw bytes between the quotes, | LW_NAME_ESCAPED when one is a backslash */
    uint32_t pos;      /* the entry's '{' */
} lw_tensor_ref;

/* The config fields the forward pass reads (checked as ModelConfig checks all of them). */
typedef struct {
    uint32_t image_size, patch_size;
    uint32_t encoder; /* lw_encoder_kind */
    uint32_t encoder_dim, encoder_depth, encoder_heads;
    uint32_t latent_dim, projector_hidden;
    uint32_t predictor_dim, predictor_depth, predictor_heads;
    uint32_t action_dim, action_embed_dim, conv_width, history;
    double mlp_ratio;
    uint32_t encoder_hidden;   /* int(encoder_dim * mlp_ratio) */
    uint32_t predictor_hidden; /* int(predictor_dim * mlp_ratio) */
} lw_config;

/* One linear layer y = x W^T + b over stored weights (rows of K weights, N rows). */
typedef struct {
    const uint8_t *w;   /* f32: N*K floats; q4_0 / q8_0: N rows of K/32 blocks; i8: N*K codes; t2: N rows */
    const float *bias;  /* [N] */
    const float *scale; /* [N] for i8 and t2, else NULL */
    uint32_t n, k;
    uint32_t kind;      /* lw_dtype */
    uint32_t row_bytes; /* stored bytes of one row */
} lw_linear;

/* projector: Linear, BatchNorm1d (eval), GELU, Linear (lewm.model's). */
typedef struct {
    lw_linear l0, l3;
    const float *bn_weight, *bn_bias, *bn_mean, *bn_var;
} lw_projector;

typedef struct {
    lw_linear qkv, proj, mlp0, mlp2;
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;
} lw_vit_block;

typedef struct {
    lw_linear conv; /* [C_out, C_in * 9] over (channel, row, column) patches */
    const float *norm_w, *norm_b;
    uint32_t c_in, c_out, side; /* side: the output map's */
} lw_conv_layer;

typedef struct {
    lw_linear qkv, proj, mlp0, mlp2, modulation;
} lw_pred_block;

typedef struct {
    lw_config cfg;
    const uint8_t *file;
    uint32_t size;
    /* the encoder: ViT or conv stem */
    lw_linear patch_embed;
    const float *cls_token, *enc_pos_embed;
    lw_vit_block vit[LW_MAX_DEPTH];
    lw_conv_layer conv[LW_CONV_LAYERS];
    lw_linear flat;
    const float *enc_norm_w, *enc_norm_b;
    lw_projector enc_proj;
    /* the predictor */
    lw_linear input, act_conv, act_mlp0, act_mlp2;
    lw_pred_block pred[LW_MAX_DEPTH];
    const float *pred_pos_embed, *pred_norm_w, *pred_norm_b;
    lw_projector pred_proj;
    /* the probe's layers are checked but run on the host */
    uint32_t has_probe, probe_hidden;
    /* The manifest index (load time), sorted by (hash, name, position) once the manifest is read:
     * duplicates are neighbours and a lookup is a binary search, so a load costs O(n log n) name
     * comparisons however the names' hashes collide. name_compares counts the comparisons of two
     * names' bytes (equal hashes) during the last load: the tests bound it. */
    uint32_t n_tensors;
    uint32_t name_compares;
    lw_tensor_ref index[LW_MAX_TENSORS];
} lw_lq40;

/* Check `file` and fill q. LW_BAD_MODEL with a message naming the field for every file the Python
 * reader (world_models.load(path, backend="numba-q4")) refuses; LW_INTERNAL when the buffer is not
 * 4-byte aligned. */
lw_status lw_lq40_load(lw_lq40 *q, const uint8_t *file, uint32_t size, char *err);

/* The name comparisons of the load that filled q (for the tests: it bounds the work a hostile
 * manifest of colliding names can cause). */
uint32_t lw_lq40_name_compares(const lw_lq40 *q);

/* IEEE half -> float (the F16_TO_F32 table, computed: exact, NaN/inf kept). */
float lw_f16_to_f32(uint16_t h);

#endif
