/* The boot config word and the preloaded model's size (boot.h). Only the size is read here; the core
 * checks the whole file when it installs it. */
#include "boot.h"

#include <string.h>

#include "../core/json.h"
#include "lw_device.h"
#include "lw_status.h"
#include "memmap.h"

_Static_assert(LW_PRELOAD_ADDR == 0x86001000u, "boot.h's lw_boot_model() hard-codes the address");

uint8_t lw_boot_kind(void) {
    uint32_t word = *(volatile const uint32_t *)(uintptr_t)LW_BOOT_CONFIG_ADDR;
    if (word == 0u || word == LW_KIND_ESP32) return LW_KIND_ESP32;
    if (word == LW_KIND_FPGA) return LW_KIND_FPGA;
    return 0;
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The header's top-level "data_size" (the last one, as everywhere in the core), read with the core's
 * JSON reader: a "data_size" key nested in model.extra, or the bytes inside a string, do not count.
 * 0 when the header is not valid JSON, has no such integer, or it is above LW_PRELOAD_MAX. */
static uint32_t data_size_field(const uint8_t *json, uint32_t n) {
    char err[LW_ERR_LEN];
    if (lw_json_check(json, n, err) != 0) return 0;
    lw_json j = {json, n};
    uint32_t pos = lw_json_get(&j, lw_json_root(&j), "data_size");
    if (pos == LW_JSON_NONE || lw_json_type_at(&j, pos) != LW_JSON_NUMBER) return 0;
    lw_json_num num;
    lw_json_number(&j, pos, &num);
    return num.kind == LW_NUM_INT && num.i > 0 && num.i <= (int64_t)LW_PRELOAD_MAX ? (uint32_t)num.i : 0u;
}

uint32_t lw_boot_model_size(void) {
    const uint8_t *p = lw_boot_model();
    if (memcmp(p, "LQ40", 4) != 0) return 0;
    uint32_t header = get_u32(p + 4);
    if (header == 0u || header > LW_PRELOAD_MAX - 8u) return 0;
    uint32_t data = data_size_field(p + 8, header);
    uint64_t start = ((uint64_t)8u + header + 63u) / 64u * 64u, size = start + data;
    return data && size <= LW_PRELOAD_MAX ? (uint32_t)size : 0u;
}
