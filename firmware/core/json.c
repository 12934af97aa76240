/* The strict JSON reader (json.h): one validating pass, then position-based navigation.
 *
 * The validating pass is a loop over a stack of open containers kept as bits (1 = object), so a
 * hostile header can neither recurse nor allocate. Navigation after it never re-checks grammar: it
 * only finds where tokens end. */
#include "json.h"

#include <math.h>   /* NAN and INFINITY (macros only: nothing here calls libm) */
#include <string.h>

#include "lw_status.h"

/* ------------------------------------------------------------------ messages */

void lw_msg_init(lw_msg *m, char *buf, size_t cap) {
    m->buf = buf;
    m->cap = cap;
    m->len = 0;
    if (cap > 0) buf[0] = '\0';
}

void lw_msg_str(lw_msg *m, const char *s) {
    if (m->cap == 0) return;
    while (*s && m->len + 1 < m->cap) m->buf[m->len++] = *s++;
    m->buf[m->len] = '\0';
}

void lw_msg_u64(lw_msg *m, uint64_t v) {
    char tmp[21];
    size_t k = sizeof tmp - 1;
    tmp[k] = '\0';
    do {
        tmp[--k] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    lw_msg_str(m, tmp + k);
}

void lw_msg_i64(lw_msg *m, int64_t v) {
    if (v < 0) {
        lw_msg_str(m, "-");
        lw_msg_u64(m, 0 - (uint64_t)v);
    } else {
        lw_msg_u64(m, (uint64_t)v);
    }
}

/* ------------------------------------------------------------------ shared scanning helpers */

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static uint32_t skip_ws(const uint8_t *s, uint32_t n, uint32_t i) {
    while (i < n && is_ws(s[i])) i++;
    return i;
}

static int hex_value(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int match_word(const uint8_t *s, uint32_t n, uint32_t i, const char *w) {
    size_t len = strlen(w);
    return (size_t)(n - i) >= len && memcmp(s + i, w, len) == 0;
}

/* ------------------------------------------------------------------ UTF-8 (Python's strict decoder) */

/* 0 when s[0..n) is well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF),
 * else -1 with the offending offset in *at. */
static int check_utf8(const uint8_t *s, uint32_t n, uint32_t *at) {
    uint32_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t need;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the first continuation byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0; /* overlong */
            if (c == 0xED) hi = 0x9F; /* UTF-16 surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90; /* overlong */
            if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else {
            *at = i;
            return -1;
        }
        if (n - i <= need) {
            *at = i;
            return -1;
        }
        for (uint32_t k = 1; k <= need; k++) {
            uint8_t b = s[i + k];
            uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (b < l || b > h) {
                *at = i;
                return -1;
            }
        }
        i += need + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ validation */

typedef struct {
    const uint8_t *s;
    uint32_t n;
    char *err;
} checker;

static int fail(checker *c, const char *what, uint32_t at) {
    lw_msg m;
    lw_msg_init(&m, c->err, LW_ERR_LEN);
    lw_msg_str(&m, "the header is not UTF-8 JSON (");
    lw_msg_str(&m, what);
    lw_msg_str(&m, " at byte ");
    lw_msg_u64(&m, at);
    lw_msg_str(&m, ")");
    return -1;
}

/* A string token starting at the quote s[*i]; leaves *i after the closing quote. */
static int check_string(checker *c, uint32_t *i) {
    const uint8_t *s = c->s;
    uint32_t p = *i + 1;
    while (p < c->n) {
        uint8_t b = s[p];
        if (b == '"') {
            *i = p + 1;
            return 0;
        }
        if (b < 0x20) return fail(c, "a control character in a string", p);
        if (b == '\\') {
            if (p + 1 >= c->n) break;
            uint8_t e = s[p + 1];
            if (e == 'u') {
                if (c->n - p < 6) return fail(c, "a truncated \\u escape", p);
                for (uint32_t k = 2; k < 6; k++)
                    if (hex_value(s[p + k]) < 0) return fail(c, "a bad \\u escape", p);
                p += 6;
                continue;
            }
            if (!(e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't'))
                return fail(c, "a bad escape", p);
            p += 2;
            continue;
        }
        p++; /* any other byte: UTF-8 was checked before */
    }
    return fail(c, "an unterminated string", *i);
}

/* A number token (or NaN / Infinity / -Infinity) at s[*i]; leaves *i after it. */
static int check_number(checker *c, uint32_t *i) {
    const uint8_t *s = c->s;
    uint32_t n = c->n, p = *i, digits = 0;
    if (match_word(s, n, p, "NaN")) {
        *i = p + 3;
        return 0;
    }
    if (match_word(s, n, p, "Infinity")) {
        *i = p + 8;
        return 0;
    }
    if (match_word(s, n, p, "-Infinity")) {
        *i = p + 9;
        return 0;
    }
    if (p < n && s[p] == '-') p++;
    if (p >= n || !is_digit(s[p])) return fail(c, "an unexpected character", *i);
    if (s[p] == '0') {
        p++;
        digits = 1;
    } else {
        while (p < n && is_digit(s[p])) {
            p++;
            digits++;
        }
    }
    int integer = 1;
    if (p < n && s[p] == '.' && p + 1 < n && is_digit(s[p + 1])) {
        integer = 0;
        p++;
        while (p < n && is_digit(s[p])) p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        uint32_t q = p + 1;
        if (q < n && (s[q] == '+' || s[q] == '-')) q++;
        if (q < n && is_digit(s[q])) {
            integer = 0;
            p = q;
            while (p < n && is_digit(s[p])) p++;
        }
    }
    /* Python's json turns an integer token into int(), which refuses more than 4300 digits. */
    if (integer && digits > LW_JSON_MAX_INT_DIGITS) return fail(c, "an integer of more than 4300 digits", *i);
    *i = p;
    return 0;
}

int lw_json_check(const uint8_t *s, uint32_t n, char *err) {
    checker c = {s, n, err};
    uint32_t bad = 0;
    if (check_utf8(s, n, &bad) != 0) {
        lw_msg m;
        lw_msg_init(&m, err, LW_ERR_LEN);
        lw_msg_str(&m, "the header is not UTF-8 JSON (invalid UTF-8 at byte ");
        lw_msg_u64(&m, bad);
        lw_msg_str(&m, ")");
        return -1;
    }
    uint8_t stack[LW_JSON_MAX_DEPTH / 8] = {0}; /* bit d: 1 when container d is an object */
    uint32_t depth = 0;
    uint32_t i = skip_ws(s, n, 0);
    /* The loop reads one value, then whatever closes or continues the containers around it. */
    for (;;) {
        if (i >= n) return fail(&c, "the end of the text where a value was expected", i);
        uint8_t b = s[i];
        if (b == '{' || b == '[') {
            if (depth >= LW_JSON_MAX_DEPTH) return fail(&c, "nesting deeper than 512", i);
            uint8_t bit = (uint8_t)(1u << (depth % 8));
            if (b == '{')
                stack[depth / 8] |= bit;
            else
                stack[depth / 8] &= (uint8_t)~bit;
            depth++;
            i = skip_ws(s, n, i + 1);
            if (i < n && s[i] == (b == '{' ? '}' : ']')) {
                depth--;
                i++;
            } else if (b == '{') {
                if (i >= n || s[i] != '"') return fail(&c, "a missing object key", i);
                if (check_string(&c, &i) != 0) return -1;
                i = skip_ws(s, n, i);
                if (i >= n || s[i] != ':') return fail(&c, "a missing ':'", i);
                i = skip_ws(s, n, i + 1);
                continue;
            } else {
                continue;
            }
        } else if (b == '"') {
            if (check_string(&c, &i) != 0) return -1;
        } else if (match_word(s, n, i, "true")) {
            i += 4;
        } else if (match_word(s, n, i, "false")) {
            i += 5;
        } else if (match_word(s, n, i, "null")) {
            i += 4;
        } else {
            if (check_number(&c, &i) != 0) return -1;
        }
        /* After a value: close containers, or move to the next element. */
        for (;;) {
            i = skip_ws(s, n, i);
            if (depth == 0) {
                if (i != n) return fail(&c, "extra data after the value", i);
                return 0;
            }
            int in_object = (stack[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1;
            if (i >= n) return fail(&c, "an unterminated container", i);
            if (s[i] == (in_object ? '}' : ']')) {
                depth--;
                i++;
                continue;
            }
            if (s[i] != ',') return fail(&c, in_object ? "a missing ',' or '}'" : "a missing ',' or ']'", i);
            i = skip_ws(s, n, i + 1);
            if (in_object) {
                if (i >= n || s[i] != '"') return fail(&c, "a missing object key", i);
                if (check_string(&c, &i) != 0) return -1;
                i = skip_ws(s, n, i);
                if (i >= n || s[i] != ':') return fail(&c, "a missing ':'", i);
                i = skip_ws(s, n, i + 1);
            }
            break;
        }
    }
}

/* ------------------------------------------------------------------ navigation */

uint32_t lw_json_root(const lw_json *j) { return skip_ws(j->s, j->n, 0); }

lw_json_type lw_json_type_at(const lw_json *j, uint32_t pos) {
    if (pos >= j->n) return LW_JSON_INVALID;
    switch (j->s[pos]) {
    case '{': return LW_JSON_OBJECT;
    case '[': return LW_JSON_ARRAY;
    case '"': return LW_JSON_STRING;
    case 't': return LW_JSON_TRUE;
    case 'f': return LW_JSON_FALSE;
    case 'n': return LW_JSON_NULL;
    default: return LW_JSON_NUMBER;
    }
}

static uint32_t skip_string(const uint8_t *s, uint32_t i) {
    i++;
    while (s[i] != '"') i += s[i] == '\\' ? 2 : 1; /* a \u escape's hex digits are never quotes */
    return i + 1;
}

static uint32_t skip_scalar(const lw_json *j, uint32_t i) {
    const uint8_t *s = j->s;
    uint8_t b = s[i];
    if (b == '"') return skip_string(s, i);
    if (b == 't' || b == 'n') return i + 4;
    if (b == 'f') return i + 5;
    if (b == 'N') return i + 3;
    if (b == 'I') return i + 8;
    if (b == '-' && i + 1 < j->n && s[i + 1] == 'I') return i + 9;
    /* a number: the checked grammar ends at the first byte that cannot continue it */
    i++;
    while (i < j->n && (is_digit(s[i]) || s[i] == '.' || s[i] == 'e' || s[i] == 'E' || s[i] == '+' || s[i] == '-'))
        i++;
    return i;
}

uint32_t lw_json_skip(const lw_json *j, uint32_t pos) {
    const uint8_t *s = j->s;
    if (s[pos] != '{' && s[pos] != '[') return skip_scalar(j, pos);
    uint32_t depth = 0, i = pos;
    /* Brackets inside strings do not count; strings are skipped whole. */
    while (i < j->n) {
        uint8_t b = s[i];
        if (b == '"') {
            i = skip_string(s, i);
            continue;
        }
        if (b == '{' || b == '[') depth++;
        if (b == '}' || b == ']') {
            depth--;
            if (depth == 0) return i + 1;
        }
        i++;
    }
    return j->n;
}

uint32_t lw_json_first(const lw_json *j, uint32_t container) {
    uint8_t b = j->s[container];
    if (b != '{' && b != '[') return LW_JSON_NONE;
    uint32_t i = skip_ws(j->s, j->n, container + 1);
    return (j->s[i] == '}' || j->s[i] == ']') ? LW_JSON_NONE : i;
}

uint32_t lw_json_member_value(const lw_json *j, uint32_t key) {
    uint32_t i = skip_ws(j->s, j->n, skip_string(j->s, key));
    return skip_ws(j->s, j->n, i + 1); /* past the ':' */
}

uint32_t lw_json_next(const lw_json *j, uint32_t element) {
    /* An object member is walked from its key: skip the key, the ':' and the value. */
    uint32_t i = element;
    uint32_t after = lw_json_skip(j, i);
    i = skip_ws(j->s, j->n, after);
    if (j->s[i] == ':') i = lw_json_skip(j, skip_ws(j->s, j->n, i + 1));
    i = skip_ws(j->s, j->n, i);
    if (j->s[i] != ',') return LW_JSON_NONE;
    return skip_ws(j->s, j->n, i + 1);
}

uint32_t lw_json_count(const lw_json *j, uint32_t container) {
    uint32_t count = 0;
    for (uint32_t e = lw_json_first(j, container); e != LW_JSON_NONE; e = lw_json_next(j, e)) count++;
    return count;
}

uint32_t lw_json_get(const lw_json *j, uint32_t obj, const char *key) {
    if (lw_json_type_at(j, obj) != LW_JSON_OBJECT) return LW_JSON_NONE;
    uint32_t found = LW_JSON_NONE;
    for (uint32_t k = lw_json_first(j, obj); k != LW_JSON_NONE; k = lw_json_next(j, k))
        if (lw_json_str_eq(j, k, key)) found = lw_json_member_value(j, k); /* the last one wins */
    return found;
}

/* ------------------------------------------------------------------ strings */

/* Decoded code points of a string token, as Python's scanstring yields them: a \u escape of a high
 * surrogate directly followed by a \u escape of a low one is one code point; lone ones stay. */
typedef struct {
    const uint8_t *s;
    uint32_t i;
} str_iter;

static uint32_t hex4(const uint8_t *p) {
    return (uint32_t)(hex_value(p[0]) << 12 | hex_value(p[1]) << 8 | hex_value(p[2]) << 4 | hex_value(p[3]));
}

/* The next code point, or -1 at the closing quote. */
static int32_t str_next(str_iter *it) {
    const uint8_t *s = it->s;
    uint8_t b = s[it->i];
    if (b == '"') return -1;
    if (b == '\\') {
        uint8_t e = s[it->i + 1];
        it->i += 2;
        switch (e) {
        case 'b': return '\b';
        case 'f': return '\f';
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        case 'u': {
            uint32_t cp = hex4(s + it->i);
            it->i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && s[it->i] == '\\' && s[it->i + 1] == 'u') {
                uint32_t low = hex4(s + it->i + 2);
                if (low >= 0xDC00 && low <= 0xDFFF) {
                    it->i += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                }
            }
            return (int32_t)cp;
        }
        default: return e; /* " \ / */
        }
    }
    /* raw UTF-8 (already validated) */
    if (b < 0x80) {
        it->i++;
        return b;
    }
    uint32_t need = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
    uint32_t cp = b & (0x3Fu >> need);
    for (uint32_t k = 1; k <= need; k++) cp = (cp << 6) | (s[it->i + k] & 0x3Fu);
    it->i += need + 1;
    return (int32_t)cp;
}

int lw_json_str_eq(const lw_json *j, uint32_t pos, const char *ascii) {
    if (lw_json_type_at(j, pos) != LW_JSON_STRING) return 0;
    str_iter it = {j->s, pos + 1};
    for (size_t k = 0;; k++) {
        int32_t cp = str_next(&it);
        if (cp < 0) return ascii[k] == '\0';
        if (ascii[k] == '\0' || cp != (uint8_t)ascii[k]) return 0;
    }
}

int lw_json_str_eq_str(const lw_json *j, uint32_t a, uint32_t b) {
    str_iter x = {j->s, a + 1}, y = {j->s, b + 1};
    for (;;) {
        int32_t p = str_next(&x), q = str_next(&y);
        if (p != q) return 0;
        if (p < 0) return 1;
    }
}

int lw_json_str_cmp(const lw_json *j, uint32_t a, uint32_t b) {
    str_iter x = {j->s, a + 1}, y = {j->s, b + 1};
    for (;;) {
        int32_t p = str_next(&x), q = str_next(&y); /* -1 at the end: a prefix sorts first */
        if (p != q) return p < q ? -1 : 1;
        if (p < 0) return 0;
    }
}

int lw_json_str_cmp_ascii(const lw_json *j, uint32_t pos, const char *ascii) {
    str_iter it = {j->s, pos + 1};
    for (size_t k = 0;; k++) {
        int32_t p = str_next(&it), q = ascii[k] ? (int32_t)(uint8_t)ascii[k] : -1;
        if (p != q) return p < q ? -1 : 1;
        if (p < 0) return 0;
    }
}

uint32_t lw_json_str_hash(const lw_json *j, uint32_t pos) {
    str_iter it = {j->s, pos + 1};
    uint32_t h = 2166136261u;
    for (int32_t cp; (cp = str_next(&it)) >= 0;) {
        h = (h ^ (uint32_t)cp) * 16777619u;
    }
    return h;
}

size_t lw_json_str_copy(const lw_json *j, uint32_t pos, char *buf, size_t cap) {
    size_t len = 0;
    if (cap == 0) return 0;
    if (lw_json_type_at(j, pos) == LW_JSON_STRING) {
        str_iter it = {j->s, pos + 1};
        for (int32_t cp; len + 1 < cap && (cp = str_next(&it)) >= 0;)
            buf[len++] = (cp >= 0x20 && cp < 0x7F) ? (char)cp : '?';
    }
    buf[len] = '\0';
    return len;
}

size_t lw_json_token_copy(const lw_json *j, uint32_t pos, char *buf, size_t cap) {
    if (cap == 0) return 0;
    uint32_t end = lw_json_skip(j, pos);
    size_t len = 0;
    for (uint32_t i = pos; i < end && len + 1 < cap; i++) {
        uint8_t b = j->s[i];
        buf[len++] = (b >= 0x20 && b < 0x7F) ? (char)b : '?';
    }
    buf[len] = '\0';
    return len;
}

/* ------------------------------------------------------------------ numbers */

/* Powers of ten exact in a double (10^22 is the largest). */
static const double exact_pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Unsigned big integers for the exact rounding of w * 10^e (|w| < 10^19): little-endian 32-bit
 * words, on the stack. The largest operand is 10^342 shifted left by one bit (below 2^1139). */
enum { BIG_WORDS = 40 };
typedef struct {
    uint32_t w[BIG_WORDS];
    uint32_t n; /* words in use; w[n - 1] != 0 unless n == 0 */
} big;

static void big_trim(big *b) {
    while (b->n && b->w[b->n - 1] == 0) b->n--;
}

static void big_set(big *b, uint64_t v) {
    b->w[0] = (uint32_t)v;
    b->w[1] = (uint32_t)(v >> 32);
    b->n = 2;
    big_trim(b);
}

static void big_mul(big *b, uint32_t m) {
    uint64_t carry = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        uint64_t t = (uint64_t)b->w[i] * m + carry;
        b->w[i] = (uint32_t)t;
        carry = t >> 32;
    }
    if (carry) b->w[b->n++] = (uint32_t)carry; /* the bounds above keep n within BIG_WORDS */
}

static void big_mul_pow10(big *b, uint32_t k) {
    for (; k >= 9; k -= 9) big_mul(b, 1000000000u);
    static const uint32_t small[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};
    if (k) big_mul(b, small[k]);
}

static uint32_t big_bits(const big *b) {
    if (b->n == 0) return 0;
    uint32_t top = b->w[b->n - 1], bits = 32 * (b->n - 1);
    while (top) {
        bits++;
        top >>= 1;
    }
    return bits;
}

static void big_shl(big *b, uint32_t s) {
    if (b->n == 0) return;
    uint32_t words = s / 32, bits = s % 32, n = b->n + words + 1;
    for (uint32_t i = n; i-- > 0;) {
        uint64_t hi = i >= words && i - words < b->n ? b->w[i - words] : 0;
        uint64_t lo = bits && i >= words + 1 && i - words - 1 < b->n ? b->w[i - words - 1] : 0;
        b->w[i] = (uint32_t)((hi << bits) | (bits ? lo >> (32 - bits) : 0));
    }
    b->n = n;
    big_trim(b);
}

static int big_cmp(const big *a, const big *b) {
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    for (uint32_t i = a->n; i-- > 0;)
        if (a->w[i] != b->w[i]) return a->w[i] < b->w[i] ? -1 : 1;
    return 0;
}

static void big_sub(big *a, const big *b) { /* a -= b, a >= b */
    uint64_t borrow = 0;
    for (uint32_t i = 0; i < a->n; i++) {
        uint64_t t = (uint64_t)a->w[i] - (i < b->n ? b->w[i] : 0) - borrow;
        a->w[i] = (uint32_t)t;
        borrow = (t >> 63) & 1u;
    }
    big_trim(a);
}

static double from_bits(uint64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* w * 10^e (w > 0, below 10^19, and 10^-343 < w * 10^e < 10^309), correctly rounded (half to even)
 * with no floating point: the quotient num / den of two big integers, long-divided bit by bit to the
 * precision of the result (53 bits, fewer for a subnormal), its remainder deciding the last one. */
static double exact_decimal(uint64_t w, int32_t e) {
    big num, den;
    big_set(&num, w);
    big_set(&den, 1);
    if (e >= 0)
        big_mul_pow10(&num, (uint32_t)e);
    else
        big_mul_pow10(&den, (uint32_t)-e);
    /* Align: num / den in [1, 2), value = num / den * 2^exp2. */
    int32_t exp2 = 0;
    uint32_t bn = big_bits(&num), bd = big_bits(&den);
    if (bn < bd) {
        big_shl(&num, bd - bn);
        exp2 -= (int32_t)(bd - bn);
    } else if (bn > bd) {
        big_shl(&den, bn - bd);
        exp2 += (int32_t)(bn - bd);
    }
    if (big_cmp(&num, &den) < 0) {
        big_shl(&num, 1);
        exp2--;
    }
    if (exp2 > 1023) return from_bits(0x7FF0000000000000ull); /* inf */
    /* Bits of precision: 53 for a normal result, fewer below 2^-1022 (the last is worth 2^-1074). */
    int32_t p = exp2 >= -1022 ? 53 : exp2 + 1075;
    if (p <= 0) /* below 2^-1074: 2^-1075 < value rounds up to 2^-1074, 2^-1075 itself to 0 (even) */
        return from_bits(p == 0 && big_cmp(&num, &den) > 0 ? 1u : 0u);
    uint64_t m = 0;
    for (int32_t i = 0; i < p; i++) {
        m <<= 1;
        if (big_cmp(&num, &den) >= 0) {
            big_sub(&num, &den);
            m |= 1;
        }
        big_shl(&num, 1); /* num = 2 * remainder */
    }
    int c = big_cmp(&num, &den); /* 2 * remainder against den: above, at or below half a unit */
    if (c > 0 || (c == 0 && (m & 1))) m++;
    if (p < 53) return from_bits(m); /* subnormal (m == 2^52 after a carry: the smallest normal) */
    if (m >> 53) { /* the carry made it 2^53 */
        m >>= 1;
        exp2++;
        if (exp2 > 1023) return from_bits(0x7FF0000000000000ull);
    }
    return from_bits((uint64_t)(exp2 + 1023) << 52 | (m & 0xFFFFFFFFFFFFFull));
}

/* A float token's value, correctly rounded as Python's float() rounds it, with no strtod (newlib's
 * may allocate; picolibc's is not correctly rounded past about 19 digits): the significant digits
 * (leading and trailing zeros do not count) as an exact uint64 w, value = w * 10^e. Up to 15 digits
 * and |e| <= 22 that is Clinger's fast path (both exact doubles, one rounding); anything else is
 * exact_decimal. A token of more than LW_JSON_MAX_FLOAT_DIGITS significant digits sets *too_precise
 * and gives NaN: Python's writer (repr) never writes more than 17, and the reader refuses it. */
static double parse_float(const uint8_t *s, uint32_t begin, uint32_t end, int *too_precise) {
    uint32_t i = begin;
    int neg = 0;
    if (s[i] == '-') {
        neg = 1;
        i++;
    }
    uint64_t w = 0;
    uint32_t kept = 0, zeros = 0; /* digits in w; zeros seen since its last nonzero digit */
    int64_t point_shift = 0;      /* value = 0.<digits> * 10^(exp10 + point_shift) */
    int seen_nonzero = 0, in_fraction = 0;
    *too_precise = 0;
    for (; i < end && s[i] != 'e' && s[i] != 'E'; i++) {
        if (s[i] == '.') {
            in_fraction = 1;
            continue;
        }
        int d = s[i] - '0';
        if (!seen_nonzero && d == 0) {
            if (in_fraction) point_shift--; /* a leading zero after the point lowers the exponent */
            continue;
        }
        seen_nonzero = 1;
        if (!in_fraction) point_shift++;
        if (d == 0) {
            zeros++; /* a trailing zero unless a nonzero digit follows */
            continue;
        }
        if (kept + zeros + 1 > LW_JSON_MAX_FLOAT_DIGITS) {
            *too_precise = 1;
            return (double)NAN;
        }
        for (; zeros; zeros--, kept++) w *= 10;
        w = w * 10 + (uint64_t)d;
        kept++;
    }
    int64_t exp10 = 0;
    if (i < end) { /* the exponent, clamped: beyond +-10^9 the result is 0 or inf either way */
        i++;
        int eneg = 0;
        if (s[i] == '+' || s[i] == '-') eneg = s[i++] == '-';
        int64_t e = 0;
        for (; i < end; i++)
            if (e < 1000000000) e = e * 10 + (s[i] - '0');
        exp10 = eneg ? -e : e;
    }
    if (!seen_nonzero) return neg ? -0.0 : 0.0;
    /* value = w * 10^e, and 10^(e + kept - 1) <= value < 10^(e + kept) */
    int64_t e = exp10 + point_shift - (int64_t)kept;
    double v;
    if (e + (int64_t)kept - 1 >= 309) {
        v = (double)INFINITY; /* at least 10^309 */
    } else if (e + (int64_t)kept <= -324) {
        v = 0.0; /* below 10^-324, under half the smallest subnormal (2^-1075, about 2.47e-324) */
    } else if (w <= ((uint64_t)1 << 53) && e >= -22 && e <= 22) {
        v = e >= 0 ? (double)w * exact_pow10[e] : (double)w / exact_pow10[-e];
    } else {
        v = exact_decimal(w, (int32_t)e);
    }
    return neg ? -v : v;
}

void lw_json_number(const lw_json *j, uint32_t pos, lw_json_num *out) {
    const uint8_t *s = j->s;
    uint32_t end = skip_scalar(j, pos);
    out->kind = LW_NUM_FLOAT;
    out->i = 0;
    out->too_precise = 0;
    if (s[pos] == 'N') {
        out->f = (double)NAN;
        return;
    }
    if (s[pos] == 'I' || (s[pos] == '-' && s[pos + 1] == 'I')) {
        out->f = s[pos] == '-' ? -(double)INFINITY : (double)INFINITY;
        return;
    }
    int integer = 1;
    for (uint32_t i = pos; i < end; i++)
        if (s[i] == '.' || s[i] == 'e' || s[i] == 'E') integer = 0;
    if (!integer) {
        out->f = parse_float(s, pos, end, &out->too_precise);
        return;
    }
    int neg = s[pos] == '-';
    /* Accumulate the magnitude as uint64; past 2^63 (or 2^63 - 1 for positives) the value is huge. */
    uint64_t v = 0, limit = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
    int huge = 0;
    for (uint32_t i = pos + (uint32_t)neg; i < end; i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (huge || v > (limit - d) / 10) {
            huge = 1;
            continue;
        }
        v = v * 10 + d;
    }
    if (huge) {
        out->kind = LW_NUM_HUGE;
        out->i = neg ? -1 : 1;
        out->f = neg ? -(double)INFINITY : (double)INFINITY;
        return;
    }
    out->kind = LW_NUM_INT;
    out->i = neg ? (int64_t)(0 - v) : (int64_t)v; /* 0 - 2^63 wraps to INT64_MIN, as intended */
    out->f = (double)out->i;
}
