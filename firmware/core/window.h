/* The rollout's sliding window, shared by the float predictor (model.c) and the fixed-point one
 * (fixed_point.c): both keep, per batch row, `hist` slots of token features (d words of 4 bytes: float or
 * int32) and let each prediction join as the newest token, dropping the oldest once the window is full.
 * Element sizes are explicit so the one copy serves both word types. */
#ifndef LW_WINDOW_H
#define LW_WINDOW_H

#include <stddef.h>
#include <stdint.h>

/* The last h steps of rows [b0, b0 + r) of x [B, T, width] -> dst [r * h, width]; words of `elem` bytes. */
void lw_gather_last(const void *x, uint32_t T, uint32_t width, uint32_t b0, uint32_t r, uint32_t h, void *dst,
                    size_t elem);

/* Append one token per row (x [r, d] into win_in, cond [r, d] into win_cond, both [r][hist][d]) after the
 * t tokens each row holds; a full window (t == hist) first drops its oldest token. Returns the new count. */
uint32_t lw_window_push(void *win_in, void *win_cond, const void *x, const void *cond, uint32_t r, uint32_t hist,
                        uint32_t d, uint32_t t, size_t elem);

#endif
