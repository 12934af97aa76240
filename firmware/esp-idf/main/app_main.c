/* The ESP-IDF platform layer (ESP32-P4): the portable core (lw_device.h) behind a UART.
 *
 * NOT BUILT OR TESTED IN THIS REPOSITORY: ESP-IDF cannot be installed where the project's CI runs. The
 * same core runs, tested, on the host (firmware/host) and on rv32imafc under QEMU (firmware/qemu).
 *
 * At start: every buffer from PSRAM (heap_caps_aligned_alloc), the .lq40 in the "model" flash
 * partition installed when there is one (partitions.csv), then one loop hands every received byte to
 * lw_device_feed. Responses leave through uart_write_bytes. Logs go to the USB Serial/JTAG console
 * (sdkconfig.defaults), never to the protocol's UART. */
#include <stdint.h>
#include <string.h>

#include "driver/uart.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "esp_partition.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "lw_device.h"
#include "lw_platform.h"

#define MAX_FRAME 65536u
#define FRAME_BUFFER (MAX_FRAME + MAX_FRAME / 254u + 2u)
#define MAX_MODEL ((uint32_t)CONFIG_LEWORLD_MAX_MODEL_KB * 1024u)
#define SCRATCH_BYTES ((size_t)CONFIG_LEWORLD_SCRATCH_KB * 1024u)
#define UART_PORT ((uart_port_t)CONFIG_LEWORLD_UART_NUM)
#define UART_RING 16384
#define READ_CHUNK 1024u
#define MODEL_SUBTYPE 0x40 /* partitions.csv */

#if CONFIG_LEWORLD_KIND_FPGA
#define KIND LW_KIND_FPGA
#define NAME "leworld-fw fpga (esp32-p4)"
#else
#define KIND LW_KIND_ESP32
#define NAME "leworld-fw esp32 (esp32-p4)"
#endif

static const char *TAG = "leworld";

/* ------------------------------------------------------------------ lw_platform.h */
void lw_platform_write(const uint8_t *bytes, size_t n) {
    while (n > 0) { /* uart_write_bytes blocks until the bytes are in the TX ring buffer */
        int sent = uart_write_bytes(UART_PORT, bytes, n);
        if (sent <= 0) return;
        bytes += sent;
        n -= (size_t)sent;
    }
}

uint64_t lw_platform_millis(void) { return (uint64_t)esp_timer_get_time() / 1000u; }

/* The ESP32-P4's cores count instructions in vendor performance counters, not minstret; 0 here ("no
 * counter", as lw_platform.h allows). Instruction counts come from the QEMU build (firmware/qemu). */
uint64_t lw_platform_instret(void) { return 0; }

/* ------------------------------------------------------------------ set-up */
static void *psram(size_t bytes, const char *what) {
    void *p = heap_caps_aligned_alloc(64, bytes, MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    if (p == NULL) ESP_LOGE(TAG, "cannot allocate %u bytes of PSRAM for %s", (unsigned)bytes, what);
    return p;
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* An .lq40's size from its own header ("LQ40", u32 header length, JSON with "data_size"; the data
 * starts at the next multiple of 64 after 8 + header length); 0 when `p` holds none that fits `cap`. */
static uint32_t lq40_size(const uint8_t *p, uint32_t cap) {
    if (cap < 8u || memcmp(p, "LQ40", 4) != 0) return 0;
    uint32_t header = get_u32(p + 4);
    if (header == 0u || header > cap - 8u) return 0;
    static const char key[] = "\"data_size\"";
    const uint8_t *json = p + 8;
    for (uint32_t i = 0; i + sizeof key - 1u <= header; i++) {
        if (memcmp(json + i, key, sizeof key - 1u) != 0) continue;
        uint32_t j = i + (uint32_t)sizeof key - 1u;
        while (j < header && (json[j] == ' ' || json[j] == ':')) j++;
        uint64_t data = 0;
        while (j < header && json[j] >= '0' && json[j] <= '9' && data <= cap) data = data * 10u + (json[j++] - '0');
        uint64_t size = ((uint64_t)8u + header + 63u) / 64u * 64u + data;
        return data && size <= cap ? (uint32_t)size : 0u;
    }
    return 0;
}

/* Install the .lq40 in the "model" partition, if any (memory-mapped flash, copied into PSRAM). */
static void install_flash_model(void) {
    const esp_partition_t *part = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, MODEL_SUBTYPE, "model");
    if (part == NULL) {
        ESP_LOGW(TAG, "no \"model\" partition: starting without a model (the host sends it)");
        return;
    }
    const void *mapped = NULL;
    esp_partition_mmap_handle_t handle;
    if (esp_partition_mmap(part, 0, part->size, ESP_PARTITION_MMAP_DATA, &mapped, &handle) != ESP_OK) {
        ESP_LOGE(TAG, "cannot map the model partition");
        return;
    }
    uint32_t cap = part->size < MAX_MODEL ? part->size : MAX_MODEL;
    uint32_t size = lq40_size(mapped, cap);
    char err[LW_ERR_LEN];
    if (size == 0u) {
        ESP_LOGW(TAG, "the model partition holds no .lq40: starting without a model");
    } else if (lw_device_install(mapped, size, err) != LW_OK) {
        ESP_LOGE(TAG, "the model in flash was refused: %s", err);
    } else {
        ESP_LOGI(TAG, "holding the %u-byte model from flash", (unsigned)size);
    }
    esp_partition_munmap(handle);
}

static void start_uart(void) {
    const uart_config_t config = {
        .baud_rate = CONFIG_LEWORLD_UART_BAUD,
        .data_bits = UART_DATA_8_BITS,
        .parity = UART_PARITY_DISABLE,
        .stop_bits = UART_STOP_BITS_1,
        .flow_ctrl = UART_HW_FLOWCTRL_DISABLE,
        .source_clk = UART_SCLK_DEFAULT,
    };
    ESP_ERROR_CHECK(uart_driver_install(UART_PORT, UART_RING, UART_RING, 0, NULL, 0));
    ESP_ERROR_CHECK(uart_param_config(UART_PORT, &config));
    ESP_ERROR_CHECK(uart_set_pin(UART_PORT, CONFIG_LEWORLD_UART_TX_PIN, CONFIG_LEWORLD_UART_RX_PIN,
                                 UART_PIN_NO_CHANGE, UART_PIN_NO_CHANGE));
}

void app_main(void) {
    static lw_device_config cfg;
    size_t cache = lw_device_cache_bytes(MAX_FRAME);
    cfg = (lw_device_config){
        .kind = KIND,
        .name = NAME,
        .max_frame = MAX_FRAME,
        .max_model = MAX_MODEL,
        .frame_in = psram(FRAME_BUFFER, "the receive buffer"),
        .frame_out = psram(FRAME_BUFFER, "the send buffer"),
        .model_active = psram(MAX_MODEL, "the model"),
        .model_transfer = psram(MAX_MODEL, "the model transfer"),
        .scratch = psram(SCRATCH_BYTES, "the scratch"),
        .scratch_size = SCRATCH_BYTES,
        .cache = psram(cache, "the response cache"),
        .cache_size = cache,
    };
    char err[LW_ERR_LEN] = "a PSRAM allocation failed";
    if (!cfg.frame_in || !cfg.frame_out || !cfg.model_active || !cfg.model_transfer || !cfg.scratch || !cfg.cache ||
        lw_device_init(&cfg, err) != LW_OK) {
        ESP_LOGE(TAG, "cannot start the device: %s", err);
        return;
    }
    install_flash_model();
    start_uart();
    static uint8_t chunk[READ_CHUNK];
    for (;;) {
        /* Block for one byte, then take whatever else has arrived, so a short frame is answered at once. */
        int n = uart_read_bytes(UART_PORT, chunk, 1, portMAX_DELAY);
        if (n <= 0) continue;
        size_t more = 0;
        if (uart_get_buffered_data_len(UART_PORT, &more) == ESP_OK && more > 0) {
            size_t want = more < READ_CHUNK - 1u ? more : READ_CHUNK - 1u;
            int extra = uart_read_bytes(UART_PORT, chunk + 1, want, 0);
            if (extra > 0) n += extra;
        }
        lw_device_feed(chunk, (size_t)n);
    }
}
