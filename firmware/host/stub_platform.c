/* The platform under the core's shared library (build/host/liblwcore.so), for the Python tests that
 * call the core through ctypes: no serial link, no clock. What the core writes is kept in a buffer
 * the tests may read (lw_stub_output), up to LW_STUB_CAPACITY bytes; the rest is dropped. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lw_platform.h"

#define LW_STUB_CAPACITY (1u << 20)

static uint8_t stub_buffer[LW_STUB_CAPACITY];
static size_t stub_len;

void lw_platform_write(const uint8_t *bytes, size_t n) {
    size_t room = LW_STUB_CAPACITY - stub_len;
    size_t take = n < room ? n : room;
    memcpy(stub_buffer + stub_len, bytes, take);
    stub_len += take;
}

uint64_t lw_platform_millis(void) { return 0; }
uint64_t lw_platform_instret(void) { return 0; }

/* For the tests: the bytes written so far (length in *n), and a way to forget them. */
const uint8_t *lw_stub_output(size_t *n);
void lw_stub_clear(void);

const uint8_t *lw_stub_output(size_t *n) {
    *n = stub_len;
    return stub_buffer;
}

void lw_stub_clear(void) { stub_len = 0; }
