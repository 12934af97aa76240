#include "window.h"

#include <string.h>

void lw_gather_last(const void *x, uint32_t T, uint32_t width, uint32_t b0, uint32_t r, uint32_t h, void *dst,
                    size_t elem) {
    const unsigned char *src = x;
    unsigned char *out = dst;
    size_t row = (size_t)h * width * elem;
    for (uint32_t i = 0; i < r; i++)
        memcpy(out + i * row, src + ((size_t)(b0 + i) * T + (T - h)) * width * elem, row);
}

uint32_t lw_window_push(void *win_in, void *win_cond, const void *x, const void *cond, uint32_t r, uint32_t hist,
                        uint32_t d, uint32_t t, size_t elem) {
    unsigned char *wi = win_in, *wc = win_cond;
    const unsigned char *xi = x, *ci = cond;
    size_t token = (size_t)d * elem, slots = (size_t)hist * token;
    if (t == hist) { /* slide: drop the oldest token */
        for (uint32_t i = 0; i < r; i++) {
            memmove(wi + i * slots, wi + i * slots + token, (size_t)(hist - 1) * token);
            memmove(wc + i * slots, wc + i * slots + token, (size_t)(hist - 1) * token);
        }
        t--;
    }
    for (uint32_t i = 0; i < r; i++) {
        memcpy(wi + i * slots + (size_t)t * token, xi + i * token, token);
        memcpy(wc + i * slots + (size_t)t * token, ci + i * token, token);
    }
    return t + 1;
}
