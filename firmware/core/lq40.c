/* The LQ40 reader (lq40.h), in the order of world_models/backends/lq40.py:
 *   _parse_header -> _checked_data -> per manifest entry (_manifest_entry, _check_place, the
 *   duplicate check, _read_tensor's value checks) -> read_model (ModelConfig.from_dict,
 *   layers_from_tensors, the f32 others) -> layout.check_tensors (the others' shapes).
 * Messages follow the Python ones without the file name (a device has none). */
#include "lq40.h"

#include <string.h>

#include "crc32.h"

/* ------------------------------------------------------------------ small helpers */

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t align64(uint64_t n) { return (n + LW_LQ40_ALIGN - 1) / LW_LQ40_ALIGN * LW_LQ40_ALIGN; }

float lw_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1Fu, f = h & 0x3FFu, bits;
    if (e == 0x1F) {
        bits = sign | 0x7F800000u | (f << 13); /* inf / NaN */
    } else if (e != 0) {
        bits = sign | ((e + 112u) << 23) | (f << 13);
    } else if (f == 0) {
        bits = sign;
    } else { /* subnormal half: normalize into a float32 normal */
        uint32_t shift = 0;
        while (!(f & 0x400u)) {
            f <<= 1;
            shift++;
        }
        bits = sign | ((113u - shift) << 23) | ((f & 0x3FFu) << 13);
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* FNV-1a over ASCII characters: lw_json_str_hash of a JSON string with the same contents. */
static uint32_t hash_ascii(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static const char *const DTYPE_NAMES[LW_DT_COUNT] = {"f32", "q4_0", "q8_0", "i8", "t2"};

/* Python's `value == v` for a JSON value and an int: ints exactly, floats by value, True == 1. */
static int json_equals_int(const lw_json *j, uint32_t pos, int64_t v) {
    if (pos == LW_JSON_NONE) return 0;
    lw_json_type t = lw_json_type_at(j, pos);
    if (t == LW_JSON_TRUE) return v == 1;
    if (t == LW_JSON_FALSE) return v == 0;
    if (t != LW_JSON_NUMBER) return 0;
    lw_json_num num;
    lw_json_number(j, pos, &num);
    if (num.kind == LW_NUM_INT) return num.i == v;
    if (num.kind == LW_NUM_HUGE) return 0;
    return num.f == (double)v; /* |v| < 2^53 here: exact */
}

/* isinstance(value, int) and not isinstance(value, bool): an integer token (any size). */
static int json_is_int(const lw_json *j, uint32_t pos, lw_json_num *num) {
    if (pos == LW_JSON_NONE || lw_json_type_at(j, pos) != LW_JSON_NUMBER) return 0;
    lw_json_number(j, pos, num);
    return num->kind != LW_NUM_FLOAT;
}

/* Message pieces. */
typedef struct {
    const lw_json *j;
    char *err;
    lw_msg m;
} ctx;


static void start(ctx *c) { lw_msg_init(&c->m, c->err, LW_ERR_LEN); }
static void put(ctx *c, const char *s) { lw_msg_str(&c->m, s); }
static void put_u(ctx *c, uint64_t v) { lw_msg_u64(&c->m, v); }
static void put_token(ctx *c, uint32_t pos) {
    char tok[64];
    if (pos == LW_JSON_NONE) {
        put(c, "None");
        return;
    }
    lw_json_token_copy(c->j, pos, tok, sizeof tok);
    put(c, tok);
}
static void put_where(ctx *c, uint32_t index, uint32_t name_pos) {
    if (name_pos == LW_JSON_NONE) {
        put(c, "tensors[");
        put_u(c, index);
        put(c, "]");
    } else {
        char name[96];
        lw_json_str_copy(c->j, name_pos, name, sizeof name);
        put(c, "tensor '");
        put(c, name);
        put(c, "'");
    }
}
static void put_dims(ctx *c, const uint64_t *dims, uint32_t ndim) {
    put(c, "[");
    for (uint32_t i = 0; i < ndim; i++) {
        if (i) put(c, ", ");
        put_u(c, dims[i]);
    }
    put(c, "]");
}

/* A float token of more than LW_JSON_MAX_FLOAT_DIGITS significant digits where the reader uses the
 * value: refused (Python would round it; the device reads numbers exactly only as far as Python's
 * writer writes them, docs/lq40.md "What a device reads"). `where` and `field` name it. */
static int too_precise(const lw_json *j, uint32_t pos) {
    lw_json_num num;
    if (pos == LW_JSON_NONE || lw_json_type_at(j, pos) != LW_JSON_NUMBER) return 0;
    lw_json_number(j, pos, &num);
    return num.too_precise;
}

static lw_status refuse_precise(ctx *c, const char *where, const char *field) {
    start(c);
    put(c, where);
    put(c, field);
    put(c, " has more than 19 significant digits: a device reads numbers as Python's json writer writes them "
           "(at most 17)");
    return LW_BAD_MODEL;
}

/* ------------------------------------------------------------------ manifest entries */

typedef struct {
    uint32_t name_pos;
    uint32_t dtype;
    uint32_t ndim;
    uint64_t dims[4];
    int64_t offset;
    uint64_t nbytes;
    const uint8_t *data;
} entry;

static int dtype_of(const lw_json *j, uint32_t pos) {
    for (uint32_t d = 0; d < LW_DT_COUNT; d++)
        if (lw_json_str_eq(j, pos, DTYPE_NAMES[d])) return (int)d;
    return -1;
}

/* Stored bytes of a tensor, or UINT64_MAX when that overflows 64 bits (no file is that large). */
static uint64_t tensor_nbytes(uint32_t dtype, const uint64_t *dims, uint32_t ndim) {
    uint64_t elements = 1;
    if (dtype != LW_DT_F32) {
        uint64_t n = dims[0], k = dims[1], per_row;
        if (dtype == LW_DT_Q4_0) per_row = k / LW_QK * LW_Q4_0_BLOCK_BYTES;
        else if (dtype == LW_DT_Q8_0) per_row = k / LW_QK * LW_Q8_0_BLOCK_BYTES;
        else if (dtype == LW_DT_I8) per_row = k;
        else per_row = k / 4 + (k % 4 != 0);
        if (per_row != 0 && n > UINT64_MAX / per_row) return UINT64_MAX;
        return n * per_row;
    }
    for (uint32_t i = 0; i < ndim; i++) {
        if (elements > UINT64_MAX / dims[i]) return UINT64_MAX;
        elements *= dims[i];
    }
    return elements > UINT64_MAX / 4 ? UINT64_MAX : elements * 4;
}

/* _manifest_entry: the entry's fields, each checked in the Python order. */
static lw_status manifest_entry(ctx *c, uint32_t pos, uint32_t index, entry *e) {
    const lw_json *j = c->j;
    lw_json_num num;
    e->name_pos = LW_JSON_NONE;
    if (lw_json_type_at(j, pos) != LW_JSON_OBJECT) {
        start(c);
        put_where(c, index, LW_JSON_NONE);
        put(c, " must be an object");
        return LW_BAD_MODEL;
    }
    uint32_t name = lw_json_get(j, pos, "name");
    if (name == LW_JSON_NONE || lw_json_type_at(j, name) != LW_JSON_STRING) {
        start(c);
        put_where(c, index, LW_JSON_NONE);
        put(c, ": field 'name' must be str, got ");
        put_token(c, name);
        return LW_BAD_MODEL;
    }
    e->name_pos = name;
    uint32_t dt = lw_json_get(j, pos, "dtype");
    if (dt == LW_JSON_NONE || lw_json_type_at(j, dt) != LW_JSON_STRING) {
        start(c);
        put_where(c, index, name);
        put(c, ": field 'dtype' must be str, got ");
        put_token(c, dt);
        return LW_BAD_MODEL;
    }
    int d = dtype_of(j, dt);
    if (d < 0) {
        start(c);
        put_where(c, index, name);
        put(c, ": unknown dtype ");
        put_token(c, dt);
        put(c, "; expected one of f32, q4_0, q8_0, i8, t2");
        return LW_BAD_MODEL;
    }
    e->dtype = (uint32_t)d;
    uint32_t shape = lw_json_get(j, pos, "shape");
    if (shape == LW_JSON_NONE || lw_json_type_at(j, shape) != LW_JSON_ARRAY) {
        start(c);
        put_where(c, index, name);
        put(c, ": field 'shape' must be list, got ");
        put_token(c, shape);
        return LW_BAD_MODEL;
    }
    uint32_t ndim = lw_json_count(j, shape);
    int ok = ndim >= 1 && ndim <= 4;
    int huge = 0;
    uint32_t i = 0;
    for (uint32_t v = lw_json_first(j, shape); ok && v != LW_JSON_NONE; v = lw_json_next(j, v), i++) {
        if (!json_is_int(j, v, &num) || (num.kind == LW_NUM_INT ? num.i <= 0 : num.i < 0)) {
            ok = 0;
        } else if (num.kind == LW_NUM_HUGE) {
            huge = 1; /* a positive int beyond int64: valid to Python, and no file holds its bytes */
        } else {
            e->dims[i] = (uint64_t)num.i;
        }
    }
    if (!ok) {
        start(c);
        put_where(c, index, name);
        put(c, ": shape ");
        put_token(c, shape);
        put(c, " must be 1 to 4 positive integers");
        return LW_BAD_MODEL;
    }
    e->ndim = ndim;
    int quant = e->dtype == LW_DT_Q4_0 || e->dtype == LW_DT_Q8_0;
    if (e->dtype != LW_DT_F32 && (ndim != 2 || (quant && !huge && e->dims[1] % LW_QK))) {
        start(c);
        put_where(c, index, name);
        put(c, ": a ");
        put(c, DTYPE_NAMES[e->dtype]);
        put(c, " tensor must be [N, K]");
        if (quant) put(c, " with K a multiple of 32");
        put(c, ", got ");
        put_token(c, shape);
        return LW_BAD_MODEL;
    }
    uint32_t off = lw_json_get(j, pos, "offset");
    if (!json_is_int(j, off, &num)) {
        start(c);
        put_where(c, index, name);
        put(c, ": field 'offset' must be int, got ");
        put_token(c, off);
        return LW_BAD_MODEL;
    }
    int off_huge = num.kind == LW_NUM_HUGE;
    e->offset = off_huge ? (num.i > 0 ? INT64_MAX : INT64_MIN) : num.i;
    uint32_t nb = lw_json_get(j, pos, "nbytes");
    if (!json_is_int(j, nb, &num)) {
        start(c);
        put_where(c, index, name);
        put(c, ": field 'nbytes' must be int, got ");
        put_token(c, nb);
        return LW_BAD_MODEL;
    }
    /* A dimension beyond int64 needs more bytes than any nbytes a device can hold: Python refuses
     * such an entry either here or at the bounds check; both are refusals. */
    uint64_t need = huge ? UINT64_MAX : tensor_nbytes(e->dtype, e->dims, ndim);
    if (num.kind != LW_NUM_INT || num.i < 0 || need == UINT64_MAX || (uint64_t)num.i != need) {
        start(c);
        put_where(c, index, name);
        put(c, ": nbytes ");
        put_token(c, nb);
        put(c, " does not fit ");
        put(c, DTYPE_NAMES[e->dtype]);
        put(c, " ");
        put_token(c, shape);
        put(c, " (");
        if (need == UINT64_MAX)
            put(c, "more than 2^64");
        else
            put_u(c, need);
        put(c, " bytes)");
        return LW_BAD_MODEL;
    }
    e->nbytes = need;
    return LW_OK;
}

/* _read_tensor's value checks: finite f32 values and block scales, no ternary code 3. */
static lw_status check_values(ctx *c, const entry *e, uint32_t index) {
    const uint8_t *p = e->data;
    const char *what = NULL;
    if (e->dtype == LW_DT_F32) {
        for (uint64_t i = 0; i < e->nbytes; i += 4)
            if ((rd_u32(p + i) & 0x7F800000u) == 0x7F800000u) {
                what = " holds NaN or inf";
                break;
            }
    } else if (e->dtype == LW_DT_Q4_0 || e->dtype == LW_DT_Q8_0) {
        uint64_t width = e->dtype == LW_DT_Q4_0 ? LW_Q4_0_BLOCK_BYTES : LW_Q8_0_BLOCK_BYTES;
        for (uint64_t i = 0; i < e->nbytes; i += width)
            if (((p[i + 1] >> 2) & 0x1F) == 0x1F) { /* the fp16 exponent of the block scale */
                what = ": a block scale is NaN or inf";
                break;
            }
    } else if (e->dtype == LW_DT_T2) {
        for (uint64_t i = 0; i < e->nbytes; i++)
            if (p[i] & (p[i] >> 1) & 0x55u) { /* some 2-bit field is 0b11 */
                what = ": holds the invalid ternary code 3";
                break;
            }
    }
    if (what) {
        start(c);
        put_where(c, index, e->name_pos);
        put(c, what);
        return LW_BAD_MODEL;
    }
    return LW_OK;
}

/* ------------------------------------------------------------------ the tensor index */

static lw_tensor_ref make_ref(const lw_json *j, uint32_t pos, uint32_t name_at) {
    lw_tensor_ref r;
    uint32_t len = lw_json_skip(j, name_at) - name_at - 2;
    r.hash = lw_json_str_hash(j, name_at);
    r.name_at = name_at;
    r.name_len = len | (memchr(j->s + name_at + 1, '\\', len) ? LW_NAME_ESCAPED : 0u);
    r.pos = pos;
    return r;
}

static int cmp_bytes(const uint8_t *a, uint32_t la, const uint8_t *b, uint32_t lb) {
    int c = memcmp(a, b, la < lb ? la : lb);
    if (c) return c < 0 ? -1 : 1;
    return (la > lb) - (la < lb);
}

/* Two names by (hash, decoded contents): the raw bytes when neither holds an escape (the UTF-8 of
 * the decoded string, whose byte order is the code point order lw_json_str_cmp uses). */
static int cmp_refs(lw_lq40 *q, const lw_json *j, const lw_tensor_ref *a, const lw_tensor_ref *b) {
    if (a->hash != b->hash) return a->hash < b->hash ? -1 : 1;
    q->name_compares++;
    if ((a->name_len | b->name_len) & LW_NAME_ESCAPED) return lw_json_str_cmp(j, a->name_at, b->name_at);
    return cmp_bytes(j->s + a->name_at + 1, a->name_len, j->s + b->name_at + 1, b->name_len);
}

/* The index's order: by name, then by position (the manifest's order) among equal names. */
static int ref_less(lw_lq40 *q, const lw_json *j, const lw_tensor_ref *a, const lw_tensor_ref *b) {
    int c = cmp_refs(q, j, a, b);
    return c < 0 || (c == 0 && a->pos < b->pos);
}

static void sift_down(lw_lq40 *q, const lw_json *j, uint32_t root, uint32_t n) {
    lw_tensor_ref *r = q->index;
    for (;;) {
        uint32_t child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && ref_less(q, j, &r[child], &r[child + 1])) child++;
        if (!ref_less(q, j, &r[root], &r[child])) return;
        lw_tensor_ref t = r[root];
        r[root] = r[child];
        r[child] = t;
        root = child;
    }
}

/* Heapsort: in place, no recursion, O(n log n) comparisons whatever the input. */
static void sort_index(lw_lq40 *q, const lw_json *j) {
    uint32_t n = q->n_tensors;
    for (uint32_t i = n / 2; i-- > 0;) sift_down(q, j, i, n);
    for (uint32_t end = n; end > 1;) {
        end--;
        lw_tensor_ref t = q->index[0];
        q->index[0] = q->index[end];
        q->index[end] = t;
        sift_down(q, j, 0, end);
    }
}

/* The first index position whose name is not below key's (binary search of the sorted index). */
static uint32_t lower_bound(lw_lq40 *q, const lw_json *j, const lw_tensor_ref *key) {
    uint32_t lo = 0, hi = q->n_tensors;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cmp_refs(q, j, &q->index[mid], key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The entry position of the tensor named `name` (ASCII), or LW_JSON_NONE. */
static uint32_t find_entry(lw_lq40 *q, const lw_json *j, const char *name) {
    uint32_t h = hash_ascii(name), lo = 0, hi = q->n_tensors, len = (uint32_t)strlen(name);
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const lw_tensor_ref *r = &q->index[mid];
        int c;
        if (r->hash != h) {
            c = r->hash < h ? -1 : 1;
        } else {
            q->name_compares++;
            c = (r->name_len & LW_NAME_ESCAPED) ? lw_json_str_cmp_ascii(j, r->name_at, name)
                                                : cmp_bytes(j->s + r->name_at + 1, r->name_len, (const uint8_t *)name, len);
        }
        if (c == 0) return r->pos;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return LW_JSON_NONE;
}

uint32_t lw_lq40_name_compares(const lw_lq40 *q) { return q->name_compares; }

/* A manifest entry already validated: read back its dtype, shape and data. */
static void read_entry(const lw_lq40 *q, const lw_json *j, uint32_t pos, uint64_t data_start, entry *e) {
    lw_json_num num;
    e->name_pos = lw_json_get(j, pos, "name");
    e->dtype = (uint32_t)dtype_of(j, lw_json_get(j, pos, "dtype"));
    uint32_t shape = lw_json_get(j, pos, "shape");
    e->ndim = 0;
    for (uint32_t v = lw_json_first(j, shape); v != LW_JSON_NONE; v = lw_json_next(j, v)) {
        lw_json_number(j, v, &num);
        e->dims[e->ndim++] = (uint64_t)num.i; /* accepted entries have dims below the file size */
    }
    lw_json_number(j, lw_json_get(j, pos, "offset"), &num);
    e->offset = num.i;
    e->nbytes = tensor_nbytes(e->dtype, e->dims, e->ndim);
    e->data = q->file + data_start + (uint64_t)e->offset;
}

/* ------------------------------------------------------------------ the config (ModelConfig) */

typedef enum { FT_INT, FT_FLOAT, FT_STR, FT_DICT } ftype;
typedef struct {
    const char *name;
    ftype type;
    uint32_t limit; /* INT_LIMITS */
} field_spec;

enum {
    F_IMAGE_SIZE,
    F_ENCODER,
    F_PATCH_SIZE,
    F_ENCODER_DIM,
    F_ENCODER_DEPTH,
    F_ENCODER_HEADS,
    F_LATENT_DIM,
    F_PROJECTOR_HIDDEN,
    F_PREDICTOR_DIM,
    F_PREDICTOR_DEPTH,
    F_PREDICTOR_HEADS,
    F_ACTION_DIM,
    F_ACTION_EMBED_DIM,
    F_CONV_WIDTH,
    F_HISTORY,
    F_FRAMESKIP,
    F_ACTION_SCALE,
    F_MLP_RATIO,
    F_SIGREG_WEIGHT,
    F_SIGREG_PROJECTIONS,
    F_SIGREG_KNOTS,
    F_POSE_WEIGHT,
    F_EXTRA,
    F_COUNT
};

/* ModelConfig's fields in declaration order, with config.INT_LIMITS. */
static const field_spec FIELDS[F_COUNT] = {
    {"image_size", FT_INT, 1024},       {"encoder", FT_STR, 0},
    {"patch_size", FT_INT, 1024},       {"encoder_dim", FT_INT, 8192},
    {"encoder_depth", FT_INT, 64},      {"encoder_heads", FT_INT, 8192},
    {"latent_dim", FT_INT, 8192},       {"projector_hidden", FT_INT, 8192},
    {"predictor_dim", FT_INT, 8192},    {"predictor_depth", FT_INT, 64},
    {"predictor_heads", FT_INT, 8192},  {"action_dim", FT_INT, 64},
    {"action_embed_dim", FT_INT, 8192}, {"conv_width", FT_INT, 8192},
    {"history", FT_INT, 2048},          {"frameskip", FT_INT, 1000},
    {"action_scale", FT_FLOAT, 0},      {"mlp_ratio", FT_FLOAT, 0},
    {"sigreg_weight", FT_FLOAT, 0},     {"sigreg_projections", FT_INT, 65536},
    {"sigreg_knots", FT_INT, 1024},     {"pose_weight", FT_FLOAT, 0},
    {"extra", FT_DICT, 0},
};

/* A field's value: ints exact (int_ok when it fits int64), floats as doubles. */
typedef struct {
    int present;
    int64_t i;
    int int_ok;     /* an int token that fits int64 */
    int is_int;     /* an int token (any size): Python skips the finite check for ints */
    double f;       /* the value as a double (ints converted; huge ints +-inf) */
    uint32_t pos;
} field_value;

static int type_ok(const lw_json *j, ftype t, uint32_t pos) {
    lw_json_type jt = lw_json_type_at(j, pos);
    if (t == FT_STR) return jt == LW_JSON_STRING;
    if (t == FT_DICT) return jt == LW_JSON_OBJECT;
    if (jt != LW_JSON_NUMBER) return 0;
    if (t == FT_FLOAT) return 1; /* int or float, never bool */
    lw_json_num n;
    lw_json_number(j, pos, &n);
    return n.kind != LW_NUM_FLOAT;
}

static int is_finite(double f) { return f - f == 0.0; } /* inf - inf and NaN - NaN are NaN */

static int known_field(const lw_json *j, uint32_t key) {
    for (uint32_t f = 0; f < F_COUNT; f++)
        if (lw_json_str_eq(j, key, FIELDS[f].name)) return (int)f;
    return -1;
}

/* ModelConfig.from_dict(header["model"]) and ModelConfig.__post_init__, as far as a refusal goes:
 * the same files are refused, the message names the first problem Python names. */
static lw_status parse_config(ctx *c, uint32_t model, lw_config *cfg) {
    const lw_json *j = c->j;
    field_value v[F_COUNT];
    memset(v, 0, sizeof v);
    const char *src = "header field 'model': ";
    /* unknown fields */
    for (uint32_t k = lw_json_first(j, model); k != LW_JSON_NONE; k = lw_json_next(j, k)) {
        if (known_field(j, k) < 0 && !lw_json_str_eq(j, k, "format_version")) {
            char name[64];
            lw_json_str_copy(j, k, name, sizeof name);
            start(c);
            put(c, src);
            put(c, "unknown field(s) ");
            put(c, name);
            put(c, "; known: image_size, encoder, patch_size, ... (ModelConfig's fields)");
            return LW_BAD_MODEL;
        }
    }
    uint32_t fv = lw_json_get(j, model, "format_version");
    /* A format-1 config may lack the fields added while format 1 was current. */
    int optional = json_equals_int(j, fv, 1);
    int missing = fv == LW_JSON_NONE;
    for (uint32_t f = 0; f < F_COUNT; f++) {
        v[f].pos = lw_json_get(j, model, FIELDS[f].name);
        v[f].present = v[f].pos != LW_JSON_NONE;
        int later = f == F_ENCODER || f == F_CONV_WIDTH || f == F_POSE_WEIGHT;
        if (!v[f].present && !(optional && later)) missing = 1;
    }
    if (missing) {
        start(c);
        put(c, src);
        put(c, "missing field(s)");
        const char *sep = " ";
        if (fv == LW_JSON_NONE) {
            put(c, " format_version");
            sep = ", ";
        }
        for (uint32_t f = 0; f < F_COUNT; f++) {
            int later = f == F_ENCODER || f == F_CONV_WIDTH || f == F_POSE_WEIGHT;
            if (!v[f].present && !(optional && later)) {
                put(c, sep);
                put(c, FIELDS[f].name);
                sep = ", ";
            }
        }
        put(c, "; a model config names every field (a config this package wrote always does: the file is "
               "damaged or was edited)");
        return LW_BAD_MODEL;
    }
    lw_json_num num;
    if (!json_is_int(j, fv, &num) || num.kind != LW_NUM_INT || (num.i != 1 && num.i != 2)) {
        start(c);
        put(c, src);
        put(c, "format_version ");
        put_token(c, fv);
        put(c, " is not supported (expected one of 1, 2)");
        return LW_BAD_MODEL;
    }
    static const char *const TYPE_NAMES[] = {"int", "float", "str", "dict[str, Any]"};
    for (uint32_t f = 0; f < F_COUNT; f++) {
        if (!v[f].present) continue;
        if (!type_ok(j, FIELDS[f].type, v[f].pos)) {
            start(c);
            put(c, src);
            put(c, "field ");
            put(c, FIELDS[f].name);
            put(c, " must be ");
            put(c, TYPE_NAMES[FIELDS[f].type]);
            put(c, ", got ");
            put_token(c, v[f].pos);
            return LW_BAD_MODEL;
        }
        if (FIELDS[f].type == FT_INT || FIELDS[f].type == FT_FLOAT) {
            if (too_precise(j, v[f].pos)) return refuse_precise(c, "header field 'model': field ", FIELDS[f].name);
            lw_json_number(j, v[f].pos, &num);
            v[f].is_int = num.kind != LW_NUM_FLOAT;
            v[f].int_ok = num.kind == LW_NUM_INT;
            v[f].i = num.i;
            v[f].f = num.f;
        }
    }
    /* The dataclass defaults of the optional fields. */
    if (!v[F_CONV_WIDTH].present) {
        v[F_CONV_WIDTH].is_int = v[F_CONV_WIDTH].int_ok = 1;
        v[F_CONV_WIDTH].i = 32;
    }
    if (!v[F_POSE_WEIGHT].present) v[F_POSE_WEIGHT].f = 0.0;
    /* __post_init__, first pass: ranges of the ints, finite floats. */
    for (uint32_t f = 0; f < F_COUNT; f++) {
        if (FIELDS[f].type == FT_INT) {
            if (!v[f].int_ok || v[f].i < 1 || v[f].i > (int64_t)FIELDS[f].limit) {
                start(c);
                put(c, src);
                put(c, "invalid model config: ");
                put(c, FIELDS[f].name);
                put(c, " must be >= 1 and <= ");
                put_u(c, FIELDS[f].limit);
                put(c, ", got ");
                put_token(c, v[f].pos);
                return LW_BAD_MODEL;
            }
        } else if (FIELDS[f].type == FT_FLOAT && v[f].present && !v[f].is_int && !is_finite(v[f].f)) {
            start(c);
            put(c, src);
            put(c, "invalid model config: ");
            put(c, FIELDS[f].name);
            put(c, " must be a finite number, got ");
            put_token(c, v[f].pos);
            return LW_BAD_MODEL;
        }
    }
    /* Second pass: the relations between fields. */
    int is_cnn = v[F_ENCODER].present && lw_json_str_eq(j, v[F_ENCODER].pos, "cnn");
    int is_vit = !v[F_ENCODER].present || lw_json_str_eq(j, v[F_ENCODER].pos, "vit");
    uint64_t image = (uint64_t)v[F_IMAGE_SIZE].i, patch = (uint64_t)v[F_PATCH_SIZE].i;
    uint64_t conv_width = (uint64_t)v[F_CONV_WIDTH].i;
    double mlp = v[F_MLP_RATIO].f, scale = v[F_ACTION_SCALE].f;
    const char *problem = NULL;
    if (!is_cnn && !is_vit)
        problem = "encoder must be one of vit, cnn";
    else if (is_cnn && image % 16)
        problem = "image_size is not a multiple of 16 (the conv stem)";
    else if (is_cnn && conv_width % LW_CONV_GROUPS)
        problem = "conv_width * 1 is not divisible by 8 GroupNorm groups";
    if (!problem && !is_cnn && image % patch) problem = "image_size is not a multiple of patch_size";
    if (!problem && is_vit && v[F_ENCODER_DIM].i % v[F_ENCODER_HEADS].i)
        problem = "encoder_dim is not divisible by encoder_heads";
    if (!problem && v[F_PREDICTOR_DIM].i % v[F_PREDICTOR_HEADS].i)
        problem = "predictor_dim is not divisible by predictor_heads";
    if (!problem && !(v[F_POSE_WEIGHT].f >= 0)) problem = "pose_weight must be >= 0";
    if (!problem && !(v[F_SIGREG_WEIGHT].f >= 0)) problem = "sigreg_weight must be >= 0";
    if (!problem && !(0 < mlp && mlp <= 64.0 && scale > 0))
        problem = "mlp_ratio must be in (0, 64] and action_scale > 0";
    int64_t min_dim = v[F_ENCODER_DIM].i < v[F_PREDICTOR_DIM].i ? v[F_ENCODER_DIM].i : v[F_PREDICTOR_DIM].i;
    if (!problem && (double)min_dim * mlp < 1) problem = "mlp_ratio leaves an MLP with no hidden units";
    if (problem) {
        start(c);
        put(c, src);
        put(c, "invalid model config: ");
        put(c, problem);
        return LW_BAD_MODEL;
    }
    cfg->image_size = (uint32_t)image;
    cfg->patch_size = (uint32_t)patch;
    cfg->encoder = is_cnn ? LW_ENC_CNN : LW_ENC_VIT;
    cfg->encoder_dim = (uint32_t)v[F_ENCODER_DIM].i;
    cfg->encoder_depth = (uint32_t)v[F_ENCODER_DEPTH].i;
    cfg->encoder_heads = (uint32_t)v[F_ENCODER_HEADS].i;
    cfg->latent_dim = (uint32_t)v[F_LATENT_DIM].i;
    cfg->projector_hidden = (uint32_t)v[F_PROJECTOR_HIDDEN].i;
    cfg->predictor_dim = (uint32_t)v[F_PREDICTOR_DIM].i;
    cfg->predictor_depth = (uint32_t)v[F_PREDICTOR_DEPTH].i;
    cfg->predictor_heads = (uint32_t)v[F_PREDICTOR_HEADS].i;
    cfg->action_dim = (uint32_t)v[F_ACTION_DIM].i;
    cfg->action_embed_dim = (uint32_t)v[F_ACTION_EMBED_DIM].i;
    cfg->conv_width = (uint32_t)conv_width;
    cfg->history = (uint32_t)v[F_HISTORY].i;
    cfg->mlp_ratio = mlp;
    /* int(dim * mlp_ratio): the same double product Python forms (or the exact int one, equal here) */
    cfg->encoder_hidden = (uint32_t)((double)cfg->encoder_dim * mlp);
    cfg->predictor_hidden = (uint32_t)((double)cfg->predictor_dim * mlp);
    return LW_OK;
}

/* ------------------------------------------------------------------ the layout (layout.py) */

typedef struct {
    ctx *c;
    lw_lq40 *q;
    uint64_t data_start;
    char name[128];
} layout;

/* name = a + (index, when not UINT32_MAX) + b */
static const char *make_name(layout *l, const char *a, uint32_t index, const char *b) {
    lw_msg m;
    lw_msg_init(&m, l->name, sizeof l->name);
    lw_msg_str(&m, a);
    if (index != UINT32_MAX) lw_msg_u64(&m, index);
    lw_msg_str(&m, b);
    return l->name;
}

static int lookup(layout *l, const char *name, entry *e) {
    uint32_t pos = find_entry(l->q, l->c->j, name);
    if (pos == LW_JSON_NONE) return 0;
    read_entry(l->q, l->c->j, pos, l->data_start, e);
    return 1;
}

/* layers_from_tensors for one prefix: weight and bias present, of the config's shape, the scale
 * of an i8 / t2 weight present. */
static lw_status get_linear(layout *l, const char *prefix, uint64_t n, uint64_t k, lw_linear *out) {
    ctx *c = l->c;
    char pre[112];
    lw_msg pm;
    lw_msg_init(&pm, pre, sizeof pre);
    lw_msg_str(&pm, prefix);
    entry w, b, s;
    int has_w = lookup(l, make_name(l, pre, UINT32_MAX, ".weight"), &w);
    int has_b = lookup(l, make_name(l, pre, UINT32_MAX, ".bias"), &b);
    if (!has_w || !has_b) {
        start(c);
        put(c, "missing tensor ");
        put(c, pre);
        put(c, has_w ? ".bias" : ".weight");
        return LW_BAD_MODEL;
    }
    if (w.ndim != 2 || w.dims[0] != n || w.dims[1] != k || b.ndim != 1 || b.dims[0] != n || b.dtype != LW_DT_F32) {
        uint64_t want[2] = {n, k};
        start(c);
        put(c, "layer ");
        put(c, pre);
        put(c, " is stored as ");
        put(c, DTYPE_NAMES[w.dtype]);
        put(c, " ");
        put_dims(c, w.dims, w.ndim);
        put(c, " with bias ");
        put_dims(c, b.dims, b.ndim);
        put(c, "; the model config needs ");
        put_dims(c, want, 2);
        put(c, " and ");
        put_dims(c, want, 1);
        put(c, " (f32)");
        return LW_BAD_MODEL;
    }
    out->scale = NULL;
    if (w.dtype == LW_DT_I8 || w.dtype == LW_DT_T2) {
        int has_s = lookup(l, make_name(l, pre, UINT32_MAX, ".weight.scale"), &s);
        if (!has_s || s.ndim != 1 || s.dims[0] != n || s.dtype != LW_DT_F32) {
            start(c);
            put(c, "layer ");
            put(c, pre);
            put(c, " (");
            put(c, DTYPE_NAMES[w.dtype]);
            put(c, ") needs an f32 [");
            put_u(c, n);
            put(c, "] tensor ");
            put(c, pre);
            put(c, ".weight.scale");
            return LW_BAD_MODEL;
        }
        out->scale = (const float *)(const void *)s.data;
    }
    out->w = w.data;
    out->bias = (const float *)(const void *)b.data;
    out->n = (uint32_t)n;
    out->k = (uint32_t)k;
    out->kind = w.dtype;
    out->row_bytes = (uint32_t)(w.nbytes / n);
    return LW_OK;
}

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        lw_status st_ = (x);                                                                                           \
        if (st_ != LW_OK) return st_;                                                                                  \
    } while (0)

/* Every linear layer of layout.linear_shapes, in its order. */
static lw_status linears(layout *l) {
    lw_lq40 *q = l->q;
    const lw_config *cfg = &q->cfg;
    uint64_t de = cfg->encoder_dim, d = cfg->predictor_dim, p = cfg->projector_hidden, lat = cfg->latent_dim;
    char pre[96];
    if (cfg->encoder == LW_ENC_CNN) {
        uint32_t c_in = 3, side = cfg->image_size;
        for (uint32_t i = 0; i < LW_CONV_LAYERS; i++) {
            static const uint32_t MULT[LW_CONV_LAYERS] = {1, 2, 4, 4};
            lw_conv_layer *cl = &q->conv[i];
            cl->c_in = c_in;
            cl->c_out = cfg->conv_width * MULT[i];
            side = (side + 2 - 3) / 2 + 1; /* conv_side(side, 3, 2, 1) */
            cl->side = side;
            memcpy(pre, make_name(l, "encoder.convs.", i, ".conv"), sizeof pre);
            TRY(get_linear(l, pre, cl->c_out, (uint64_t)c_in * 9, &cl->conv));
            c_in = cl->c_out;
        }
        uint64_t s = cfg->image_size / 16;
        TRY(get_linear(l, "encoder.flat", de, (uint64_t)c_in * s * s, &q->flat));
    } else {
        TRY(get_linear(l, "encoder.patch_embed", de, 3ull * cfg->patch_size * cfg->patch_size, &q->patch_embed));
        for (uint32_t i = 0; i < cfg->encoder_depth; i++) {
            lw_vit_block *blk = &q->vit[i];
            uint64_t hid = cfg->encoder_hidden;
            memcpy(pre, make_name(l, "encoder.blocks.", i, ".attn.qkv"), sizeof pre);
            TRY(get_linear(l, pre, 3 * de, de, &blk->qkv));
            memcpy(pre, make_name(l, "encoder.blocks.", i, ".attn.proj"), sizeof pre);
            TRY(get_linear(l, pre, de, de, &blk->proj));
            memcpy(pre, make_name(l, "encoder.blocks.", i, ".mlp.0"), sizeof pre);
            TRY(get_linear(l, pre, hid, de, &blk->mlp0));
            memcpy(pre, make_name(l, "encoder.blocks.", i, ".mlp.2"), sizeof pre);
            TRY(get_linear(l, pre, de, hid, &blk->mlp2));
        }
    }
    TRY(get_linear(l, "encoder.projector.0", p, de, &q->enc_proj.l0));
    TRY(get_linear(l, "encoder.projector.3", lat, p, &q->enc_proj.l3));
    TRY(get_linear(l, "predictor.input", d, lat, &q->input));
    TRY(get_linear(l, "predictor.action_encoder.conv", cfg->action_embed_dim, cfg->action_dim, &q->act_conv));
    TRY(get_linear(l, "predictor.action_encoder.mlp.0", 4 * d, cfg->action_embed_dim, &q->act_mlp0));
    TRY(get_linear(l, "predictor.action_encoder.mlp.2", d, 4 * d, &q->act_mlp2));
    for (uint32_t i = 0; i < cfg->predictor_depth; i++) {
        lw_pred_block *blk = &q->pred[i];
        uint64_t hid = cfg->predictor_hidden;
        memcpy(pre, make_name(l, "predictor.blocks.", i, ".attn.qkv"), sizeof pre);
        TRY(get_linear(l, pre, 3 * d, d, &blk->qkv));
        memcpy(pre, make_name(l, "predictor.blocks.", i, ".attn.proj"), sizeof pre);
        TRY(get_linear(l, pre, d, d, &blk->proj));
        memcpy(pre, make_name(l, "predictor.blocks.", i, ".mlp.0"), sizeof pre);
        TRY(get_linear(l, pre, hid, d, &blk->mlp0));
        memcpy(pre, make_name(l, "predictor.blocks.", i, ".mlp.2"), sizeof pre);
        TRY(get_linear(l, pre, d, hid, &blk->mlp2));
        memcpy(pre, make_name(l, "predictor.blocks.", i, ".modulation.1"), sizeof pre);
        TRY(get_linear(l, pre, 6 * d, d, &blk->modulation));
    }
    TRY(get_linear(l, "predictor.projector.0", p, d, &q->pred_proj.l0));
    TRY(get_linear(l, "predictor.projector.3", lat, p, &q->pred_proj.l3));
    if (q->has_probe) {
        lw_linear probe0, probe2; /* checked; the probe runs on the host */
        TRY(get_linear(l, "probe.net.0", q->probe_hidden, lat, &probe0));
        TRY(get_linear(l, "probe.net.2", LW_PROBE_OUTPUTS, q->probe_hidden, &probe2));
    }
    return LW_OK;
}

/* One f32 tensor of layout.other_shapes. pass 0: read_model's presence check; pass 1:
 * check_tensors' shape check (then the view). */
static lw_status other(layout *l, int pass, const char *name, uint32_t ndim, const uint64_t *dims, const float **out) {
    ctx *c = l->c;
    entry e;
    int has = lookup(l, name, &e);
    if (pass == 0) {
        if (!has || e.dtype != LW_DT_F32) {
            start(c);
            put(c, "missing f32 tensor ");
            put(c, name);
            return LW_BAD_MODEL;
        }
        return LW_OK;
    }
    int same = e.ndim == ndim;
    for (uint32_t i = 0; same && i < ndim; i++) same = e.dims[i] == dims[i];
    if (!same) {
        start(c);
        put(c, name);
        put(c, " has shape ");
        put_dims(c, e.dims, e.ndim);
        put(c, ", the config needs ");
        put_dims(c, dims, ndim);
        return LW_BAD_MODEL;
    }
    if (out) *out = (const float *)(const void *)e.data;
    return LW_OK;
}

static lw_status vec(layout *l, int pass, const char *name, uint64_t n, const float **out) {
    return other(l, pass, name, 1, &n, out);
}

/* layout.other_shapes, in its order. */
static lw_status others(layout *l, int pass) {
    lw_lq40 *q = l->q;
    const lw_config *cfg = &q->cfg;
    uint64_t de = cfg->encoder_dim, d = cfg->predictor_dim, p = cfg->projector_hidden;
    char name[112];
    if (cfg->encoder == LW_ENC_CNN) {
        for (uint32_t i = 0; i < LW_CONV_LAYERS; i++) {
            uint64_t co = cfg->conv_width * (i == 0 ? 1u : i == 1 ? 2u : 4u);
            memcpy(name, make_name(l, "encoder.convs.", i, ".norm.weight"), sizeof name);
            TRY(vec(l, pass, name, co, &q->conv[i].norm_w));
            memcpy(name, make_name(l, "encoder.convs.", i, ".norm.bias"), sizeof name);
            TRY(vec(l, pass, name, co, &q->conv[i].norm_b));
        }
    } else {
        uint64_t g = cfg->image_size / cfg->patch_size;
        uint64_t cls[3] = {1, 1, de}, pos[3] = {1, g * g + 1, de};
        TRY(other(l, pass, "encoder.cls_token", 3, cls, &q->cls_token));
        TRY(other(l, pass, "encoder.pos_embed", 3, pos, &q->enc_pos_embed));
        for (uint32_t i = 0; i < cfg->encoder_depth; i++) {
            lw_vit_block *blk = &q->vit[i];
            memcpy(name, make_name(l, "encoder.blocks.", i, ".norm1.weight"), sizeof name);
            TRY(vec(l, pass, name, de, &blk->norm1_w));
            memcpy(name, make_name(l, "encoder.blocks.", i, ".norm1.bias"), sizeof name);
            TRY(vec(l, pass, name, de, &blk->norm1_b));
            memcpy(name, make_name(l, "encoder.blocks.", i, ".norm2.weight"), sizeof name);
            TRY(vec(l, pass, name, de, &blk->norm2_w));
            memcpy(name, make_name(l, "encoder.blocks.", i, ".norm2.bias"), sizeof name);
            TRY(vec(l, pass, name, de, &blk->norm2_b));
        }
    }
    TRY(vec(l, pass, "encoder.norm.weight", de, &q->enc_norm_w));
    TRY(vec(l, pass, "encoder.norm.bias", de, &q->enc_norm_b));
    uint64_t pe[3] = {1, cfg->history, d};
    TRY(other(l, pass, "predictor.pos_embed", 3, pe, &q->pred_pos_embed));
    TRY(vec(l, pass, "predictor.norm.weight", d, &q->pred_norm_w));
    TRY(vec(l, pass, "predictor.norm.bias", d, &q->pred_norm_b));
    for (int part = 0; part < 2; part++) {
        lw_projector *pj = part == 0 ? &q->enc_proj : &q->pred_proj;
        const char *pre = part == 0 ? "encoder.projector.1." : "predictor.projector.1.";
        TRY(vec(l, pass, make_name(l, pre, UINT32_MAX, "weight"), p, &pj->bn_weight));
        TRY(vec(l, pass, make_name(l, pre, UINT32_MAX, "bias"), p, &pj->bn_bias));
        TRY(vec(l, pass, make_name(l, pre, UINT32_MAX, "running_mean"), p, &pj->bn_mean));
        TRY(vec(l, pass, make_name(l, pre, UINT32_MAX, "running_var"), p, &pj->bn_var));
    }
    if (q->has_probe) {
        TRY(vec(l, pass, "probe.z_mean", cfg->latent_dim, NULL));
        TRY(vec(l, pass, "probe.z_std", cfg->latent_dim, NULL));
    }
    return LW_OK;
}

/* ------------------------------------------------------------------ the whole file */

lw_status lw_lq40_load(lw_lq40 *q, const uint8_t *file, uint32_t size, char *err) {
    lw_msg m;
    if ((uintptr_t)file % 4) {
        lw_msg_init(&m, err, LW_ERR_LEN);
        lw_msg_str(&m, "the model buffer must be 4-byte aligned (its f32 tensors are read in place)");
        return LW_INTERNAL;
    }
    q->file = file;
    q->size = size;
    q->n_tensors = 0;
    q->name_compares = 0;
    q->has_probe = 0;
    /* 1. the magic */
    if (size < 8 || memcmp(file, "LQ40", 4) != 0) {
        lw_msg_init(&m, err, LW_ERR_LEN);
        lw_msg_str(&m, "not an LQ40 file (the first 4 bytes must be b'LQ40')");
        return LW_BAD_MODEL;
    }
    /* 2. the header: its length, UTF-8 JSON, an object */
    uint32_t head_len = rd_u32(file + 4);
    uint32_t limit = size - 8 < LW_LQ40_MAX_HEADER ? size - 8 : LW_LQ40_MAX_HEADER;
    if (head_len > limit) {
        lw_msg_init(&m, err, LW_ERR_LEN);
        lw_msg_str(&m, "header length ");
        lw_msg_u64(&m, head_len);
        lw_msg_str(&m, " runs past the end of the file (");
        lw_msg_u64(&m, size);
        lw_msg_str(&m, " bytes)");
        return LW_BAD_MODEL;
    }
    if (lw_json_check(file + 8, head_len, err) != 0) return LW_BAD_MODEL;
    lw_json js = {file + 8, head_len};
    const lw_json *j = &js;
    ctx cx = {j, err, {0}};
    ctx *c = &cx;
    uint32_t root = lw_json_root(j);
    if (lw_json_type_at(j, root) != LW_JSON_OBJECT) {
        start(c);
        put(c, "the header must be a JSON object");
        return LW_BAD_MODEL;
    }
    /* 3. versions */
    uint32_t fv = lw_json_get(j, root, "format_version");
    if (too_precise(j, fv)) return refuse_precise(c, "field ", "'format_version'");
    if (!json_equals_int(j, fv, 1)) {
        start(c);
        put(c, "format_version ");
        put_token(c, fv);
        put(c, " is not supported (this reader reads 1)");
        return LW_BAD_MODEL;
    }
    uint32_t al = lw_json_get(j, root, "alignment");
    if (too_precise(j, al)) return refuse_precise(c, "field ", "'alignment'");
    if (!json_equals_int(j, al, 64)) {
        start(c);
        put(c, "alignment must be 64, got ");
        put_token(c, al);
        return LW_BAD_MODEL;
    }
    /* 4. the data's size: data_start + data_size == file size, in signed 64-bit arithmetic (a
     * data_size the file cannot hold, or a negative one, fails here or at the first tensor) */
    int64_t data_start = (int64_t)align64(8 + (uint64_t)head_len);
    lw_json_num num;
    uint32_t ds = lw_json_get(j, root, "data_size");
    if (!json_is_int(j, ds, &num)) {
        start(c);
        put(c, "field 'data_size' must be int, got ");
        put_token(c, ds);
        return LW_BAD_MODEL;
    }
    if (num.kind != LW_NUM_INT || num.i > (int64_t)1 << 40 || num.i < -((int64_t)1 << 40) ||
        data_start + num.i != (int64_t)size) {
        start(c);
        put(c, "data_size ");
        put_token(c, ds);
        put(c, " does not match the file: ");
        put_u(c, size);
        put(c, " bytes with data at ");
        put_u(c, (uint64_t)data_start);
        return LW_BAD_MODEL;
    }
    int64_t data_size = num.i;
    /* 5. CRC-32 of the data (empty when the header's padding runs past the end) */
    uint32_t crc = data_start < (int64_t)size ? lw_crc32(0, file + data_start, (size_t)(size - data_start)) : 0;
    uint32_t dc = lw_json_get(j, root, "data_crc32");
    if (too_precise(j, dc)) return refuse_precise(c, "field ", "'data_crc32'");
    if (!json_equals_int(j, dc, (int64_t)crc)) {
        start(c);
        put(c, "checksum mismatch: the tensor data is corrupted (CRC-32 ");
        put_u(c, crc);
        put(c, " != header data_crc32 ");
        put_token(c, dc);
        put(c, ")");
        return LW_BAD_MODEL;
    }
    /* 6-7. the manifest */
    uint32_t tensors = lw_json_get(j, root, "tensors");
    if (tensors == LW_JSON_NONE || lw_json_type_at(j, tensors) != LW_JSON_ARRAY) {
        start(c);
        put(c, "field 'tensors' must be a list");
        return LW_BAD_MODEL;
    }
    /* The duplicate check (Python's, between the place check and the values) is deferred: the loop
     * indexes every entry that passes the checks before it and stops at the first failure; then the
     * sorted index gives the earliest second occurrence of a name, reported when it comes no later
     * than that failure (the first problem in Python's order either way). */
    uint64_t end = 0;
    uint32_t index = 0;
    lw_status failed = LW_OK;
    lw_tensor_ref over = {0, 0, 0, 0}; /* the entry past LW_MAX_TENSORS, kept out of the index */
    int has_over = 0;
    for (uint32_t pos = lw_json_first(j, tensors); pos != LW_JSON_NONE; pos = lw_json_next(j, pos), index++) {
        entry e;
        lw_status st = manifest_entry(c, pos, index, &e);
        uint64_t off = st == LW_OK ? (uint64_t)e.offset : 0;
        if (st == LW_OK && (e.offset % (int64_t)LW_LQ40_ALIGN != 0 || e.offset < 0 || off < end || data_size < 0 ||
                            e.nbytes > (uint64_t)data_size || off > (uint64_t)data_size - e.nbytes)) {
            start(c);
            put_where(c, index, e.name_pos);
            put(c, ": offset ");
            put_token(c, lw_json_get(j, pos, "offset"));
            put(c, " (+");
            put_u(c, e.nbytes);
            put(c, " bytes) is misaligned, overlaps the previous tensor or runs past the data (");
            put_u(c, (uint64_t)data_size);
            put(c, " bytes)");
            st = LW_BAD_MODEL;
        }
        if (st == LW_OK) {
            lw_tensor_ref ref = make_ref(j, pos, e.name_pos);
            if (q->n_tensors < LW_MAX_TENSORS) {
                q->index[q->n_tensors++] = ref;
            } else {
                over = ref;
                has_over = 1;
            }
            e.data = file + data_start + off;
            st = check_values(c, &e, index);
            if (st == LW_OK && has_over) {
                start(c);
                put(c, "more than 4096 tensors (this device's limit)");
                st = LW_BAD_MODEL;
            }
        }
        if (st != LW_OK) {
            failed = st;
            break;
        }
        end = off + e.nbytes;
    }
    sort_index(q, j);
    const lw_tensor_ref *dup = NULL;
    for (uint32_t k = 1; k < q->n_tensors; k++) /* equal names sit together, in manifest order */
        if (cmp_refs(q, j, &q->index[k - 1], &q->index[k]) == 0 && (!dup || q->index[k].pos < dup->pos))
            dup = &q->index[k];
    if (!dup && has_over) {
        uint32_t at = lower_bound(q, j, &over);
        if (at < q->n_tensors && cmp_refs(q, j, &q->index[at], &over) == 0) dup = &over;
    }
    if (dup) { /* every indexed entry comes before the failure, if any, or is the failing one */
        start(c);
        put_where(c, 0, dup->name_at);
        put(c, ": appears twice");
        return LW_BAD_MODEL;
    }
    if (failed != LW_OK) return failed;
    /* 8. the model: config, layers, other tensors, their shapes */
    uint32_t model = lw_json_get(j, root, "model");
    if (model == LW_JSON_NONE || lw_json_type_at(j, model) != LW_JSON_OBJECT) {
        start(c);
        put(c, "header field 'model' (the model config) must be an object");
        return LW_BAD_MODEL;
    }
    TRY(parse_config(c, model, &q->cfg));
    layout l = {c, q, (uint64_t)data_start, {0}};
    entry probe;
    if (lookup(&l, "probe.net.0.weight", &probe)) {
        q->has_probe = 1;
        q->probe_hidden = (uint32_t)probe.dims[0];
    }
    TRY(linears(&l));
    TRY(others(&l, 0));
    TRY(others(&l, 1));
    return LW_OK;
}
