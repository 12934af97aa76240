/* A small, strict JSON reader for the LQ40 header (docs/lq40.md, "What a device reads").
 *
 * No allocation and no recursion: lw_json_check validates the whole document once (UTF-8, grammar,
 * limits); after that the document is trusted and every other function walks it by byte positions
 * (uint32_t offsets into the header), skipping values it does not need. A position of
 * LW_JSON_NONE means "absent".
 *
 * What it accepts is what Python's json.loads(bytes.decode("utf-8")) accepts, so a device and the
 * Python reader agree on every header: RFC 8259 JSON plus Python's NaN / Infinity / -Infinity, with
 * duplicate object keys resolved to the last one (a dict keeps the last). Two limits are stricter,
 * and only refuse documents no writer produces: nesting deeper than LW_JSON_MAX_DEPTH (Python's
 * recursion limit refuses about 1000), and, as Python does, integers of more than 4300 digits.
 */
#ifndef LW_JSON_H
#define LW_JSON_H

#include <stddef.h>
#include <stdint.h>

#define LW_JSON_NONE UINT32_MAX
#define LW_JSON_MAX_DEPTH 512u       /* containers open at once */
#define LW_JSON_MAX_INT_DIGITS 4300u /* Python's int() limit (sys.int_info.default_max_str_digits) */

typedef enum {
    LW_JSON_INVALID = 0,
    LW_JSON_OBJECT,
    LW_JSON_ARRAY,
    LW_JSON_STRING,
    LW_JSON_NUMBER, /* numbers, NaN, Infinity, -Infinity */
    LW_JSON_TRUE,
    LW_JSON_FALSE,
    LW_JSON_NULL
} lw_json_type;

/* The document: `n` bytes at `s` (not NUL-terminated). */
typedef struct {
    const uint8_t *s;
    uint32_t n;
} lw_json;

/* A number token's value. Integer tokens (no fraction, no exponent) are exact when they fit an
 * int64 (LW_NUM_INT) and otherwise only their sign is kept (LW_NUM_HUGE); other tokens are floats
 * (LW_NUM_FLOAT, the double Python's float() gives, inf for overflow, NaN for NaN), read exactly
 * (correctly rounded, no strtod, no allocation) up to LW_JSON_MAX_FLOAT_DIGITS significant digits
 * (leading and trailing zeros do not count). A longer float token is not read: too_precise is set
 * and f is NaN, and a reader refuses it where it uses the value. Python's json writer (repr) never
 * writes more than 17 significant digits. */
#define LW_JSON_MAX_FLOAT_DIGITS 19u
typedef enum { LW_NUM_INT, LW_NUM_HUGE, LW_NUM_FLOAT } lw_num_kind;
typedef struct {
    lw_num_kind kind;
    int64_t i;  /* LW_NUM_INT: the value; LW_NUM_HUGE: +1 or -1 */
    double f;   /* every kind: the value as a double (for LW_NUM_HUGE: +-inf, enough for comparisons) */
    int too_precise; /* LW_NUM_FLOAT of more than LW_JSON_MAX_FLOAT_DIGITS significant digits */
} lw_json_num;

/* Validate `n` bytes as one UTF-8 JSON value with optional surrounding whitespace. Returns 0, or -1
 * with a one-line reason (and byte offset) in err (LW_ERR_LEN bytes). */
int lw_json_check(const uint8_t *s, uint32_t n, char *err);

/* Everything below assumes a document lw_json_check accepted. */
uint32_t lw_json_root(const lw_json *j);
lw_json_type lw_json_type_at(const lw_json *j, uint32_t pos);
uint32_t lw_json_skip(const lw_json *j, uint32_t pos); /* the position just after the value at pos */

/* Containers: the first element (an array's value, or an object member's key) and the next one. */
uint32_t lw_json_first(const lw_json *j, uint32_t container);
uint32_t lw_json_next(const lw_json *j, uint32_t element);
uint32_t lw_json_member_value(const lw_json *j, uint32_t key); /* the value after an object key */
uint32_t lw_json_count(const lw_json *j, uint32_t container);  /* elements or members */

/* The value of `key` (ASCII) in the object at obj, the last one where the key repeats; LW_JSON_NONE
 * when absent or when obj is not an object. */
uint32_t lw_json_get(const lw_json *j, uint32_t obj, const char *key);

/* The number at pos (a LW_JSON_NUMBER). */
void lw_json_number(const lw_json *j, uint32_t pos, lw_json_num *out);

/* Strings compared by their decoded contents (escapes resolved), as Python compares str. */
int lw_json_str_eq(const lw_json *j, uint32_t pos, const char *ascii);
int lw_json_str_eq_str(const lw_json *j, uint32_t a, uint32_t b);
/* Three-way comparisons (-1, 0, 1) of decoded contents, by code point, a prefix first: the order
 * of the UTF-8 bytes of the decoded strings. */
int lw_json_str_cmp(const lw_json *j, uint32_t a, uint32_t b);
int lw_json_str_cmp_ascii(const lw_json *j, uint32_t pos, const char *ascii);
uint32_t lw_json_str_hash(const lw_json *j, uint32_t pos); /* FNV-1a of the decoded UTF-8 */

/* The decoded string at pos, as UTF-8, truncated to cap - 1 bytes and NUL-terminated (for messages;
 * control characters and non-ASCII are written as '?'). Returns its length. */
size_t lw_json_str_copy(const lw_json *j, uint32_t pos, char *buf, size_t cap);

/* The raw bytes of the token at pos, NUL-terminated and truncated to cap - 1 (for messages). */
size_t lw_json_token_copy(const lw_json *j, uint32_t pos, char *buf, size_t cap);

/* A bounded message builder (no printf: the error messages of the readers are built from pieces,
 * the same on every libc). Output is always NUL-terminated and silently truncated at cap - 1. */
typedef struct {
    char *buf;
    size_t cap;
    size_t len;
} lw_msg;
void lw_msg_init(lw_msg *m, char *buf, size_t cap);
void lw_msg_str(lw_msg *m, const char *s);
void lw_msg_u64(lw_msg *m, uint64_t v);
void lw_msg_i64(lw_msg *m, int64_t v);

#endif
