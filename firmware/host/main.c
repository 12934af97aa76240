/* The host platform: the firmware's device core served on a pseudo-terminal, for tests and for
 * `leworld device emulate --impl c`.
 *
 *   leworld-fw [--kind esp32|fpga] [--model FILE.lq40] [--max-frame N] [--max-model N] [--scratch N]
 *              [--cache N] [--max-rows N] [--row-us N] [--exit-with-stdin]
 *
 * The first line printed is "<kind> emulator on /dev/pts/N", as `leworld device emulate` prints it;
 * hosts open that path. SIGTERM or SIGINT (and, with --exit-with-stdin, the end of stdin) stop it,
 * printing "stopped after N commands". Every buffer is allocated here, once, before serving.
 */
#define _XOPEN_SOURCE 700 /* posix_openpt, grantpt, unlockpt, ptsname */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "lw_device.h"
#include "lw_platform.h"

#define WRITE_TIMEOUT_MS 5000 /* a host that reads nothing for this long loses the frame, as on a wire */
#define READ_SIZE 65536u

typedef struct {
    uint8_t kind;
    const char *model;
    uint32_t max_frame;
    uint32_t max_model;
    size_t scratch;
    size_t cache; /* 0: a full cache (16 responses x 4 sessions) */
    uint32_t max_rows;
    uint32_t row_us;
    int exit_with_stdin;
} options;

static int link_fd = -1; /* the pty's master side */
static struct timespec started;
static volatile sig_atomic_t stopping = 0;

/* ------------------------------------------------------------------ lw_platform.h */
void lw_platform_write(const uint8_t *bytes, size_t n) {
    int waited = 0;
    while (n > 0 && waited < WRITE_TIMEOUT_MS) {
        ssize_t m = write(link_fd, bytes, n);
        if (m > 0) {
            bytes += m;
            n -= (size_t)m;
            continue;
        }
        if (m < 0 && errno != EAGAIN && errno != EINTR) return; /* the link is gone: the frame is lost */
        struct pollfd p = {link_fd, POLLOUT, 0};
        poll(&p, 1, 50);
        waited += 50;
    }
}

uint64_t lw_platform_millis(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ms = (int64_t)(now.tv_sec - started.tv_sec) * 1000 + (now.tv_nsec - started.tv_nsec) / 1000000;
    return ms > 0 ? (uint64_t)ms : 0u;
}

uint64_t lw_platform_instret(void) { return 0; }

/* ------------------------------------------------------------------ arguments */
static int usage(const char *problem) {
    fprintf(stderr,
            "leworld-fw: %s\nusage: leworld-fw [--kind esp32|fpga] [--model FILE.lq40] [--max-frame N] "
            "[--max-model N] [--scratch N] [--cache N] [--max-rows N] [--row-us N] [--exit-with-stdin]\n",
            problem);
    return 2;
}

static int parse_size(const char *text, unsigned long long limit, unsigned long long *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end != 0 || text[0] == '-' || v > limit) return 0;
    *out = v;
    return 1;
}

static int parse_args(int argc, char **argv, options *o) {
    *o = (options){LW_KIND_ESP32, NULL, 65536u, 16u << 20, 64u << 20, 0, 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        unsigned long long v = 0;
        if (strcmp(arg, "--exit-with-stdin") == 0) {
            o->exit_with_stdin = 1;
            continue;
        }
        if (i + 1 >= argc) return usage("every option but --exit-with-stdin takes a value");
        const char *value = argv[++i];
        if (strcmp(arg, "--kind") == 0) {
            if (strcmp(value, "esp32") == 0) o->kind = LW_KIND_ESP32;
            else if (strcmp(value, "fpga") == 0) o->kind = LW_KIND_FPGA;
            else return usage("--kind takes esp32 or fpga");
        } else if (strcmp(arg, "--model") == 0) {
            o->model = value;
        } else if (strcmp(arg, "--max-frame") == 0 && parse_size(value, 16u << 20, &v)) {
            o->max_frame = (uint32_t)v;
        } else if (strcmp(arg, "--max-model") == 0 && parse_size(value, 0xFFFFFFFFu, &v) && v > 0) {
            o->max_model = (uint32_t)v;
        } else if (strcmp(arg, "--scratch") == 0 && parse_size(value, (size_t)-1 / 2, &v)) {
            o->scratch = (size_t)v;
        } else if (strcmp(arg, "--cache") == 0 && parse_size(value, (size_t)-1 / 2, &v)) {
            o->cache = (size_t)v;
        } else if (strcmp(arg, "--max-rows") == 0 && parse_size(value, 0xFFFFFFFFu, &v)) {
            o->max_rows = (uint32_t)v;
        } else if (strcmp(arg, "--row-us") == 0 && parse_size(value, 0xFFFFFFFFu, &v)) {
            o->row_us = (uint32_t)v;
        } else {
            char problem[256];
            snprintf(problem, sizeof problem, "bad option or value: %s %s", arg, value);
            return usage(problem);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ the pty */
/* Open a pty; the master stays non-blocking for the device, the slave is raw and kept open here so
 * that a host closing and reopening the port (a reconnect) does not hang the terminal up. */
static int open_pty(int *slave_fd, char *path, size_t cap) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
        fprintf(stderr, "leworld-fw: cannot open a pseudo-terminal (%s)\n", strerror(errno));
        return -1;
    }
    const char *name = ptsname(master);
    int slave = name ? open(name, O_RDWR | O_NOCTTY) : -1;
    struct termios raw;
    if (slave < 0 || tcgetattr(slave, &raw) != 0) {
        fprintf(stderr, "leworld-fw: cannot open the pseudo-terminal's other side (%s)\n", strerror(errno));
        return -1;
    }
    cfmakeraw(&raw);
    if (tcsetattr(slave, TCSANOW, &raw) != 0 || fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK) != 0) {
        fprintf(stderr, "leworld-fw: cannot set up the pseudo-terminal (%s)\n", strerror(errno));
        return -1;
    }
    snprintf(path, cap, "%s", name);
    *slave_fd = slave;
    return master;
}

/* ------------------------------------------------------------------ set-up */
static void *allocate(size_t bytes, const char *what) {
    size_t rounded = (bytes + 63u) & ~(size_t)63u;
    void *p = aligned_alloc(64, rounded ? rounded : 64u);
    if (p == NULL) fprintf(stderr, "leworld-fw: cannot allocate %zu bytes for %s\n", bytes, what);
    return p;
}

/* Read the .lq40 into the buffer the device installs from (its spare model buffer). */
static int read_model(const char *path, uint8_t *buffer, uint32_t cap, uint32_t *size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "leworld-fw: cannot open model %s (%s)\n", path, strerror(errno));
        return 0;
    }
    size_t n = fread(buffer, 1, cap, f);
    int more = fgetc(f) != EOF, failed = ferror(f);
    fclose(f);
    if (failed || more) {
        fprintf(stderr, "leworld-fw: model %s is %s\n", path, failed ? "unreadable" : "larger than --max-model");
        return 0;
    }
    *size = (uint32_t)n;
    return 1;
}

static int setup(const options *o, lw_device_config *cfg, char *name, size_t name_cap) {
    size_t frame_buffer = (size_t)o->max_frame + o->max_frame / 254u + 2u;
    size_t cache = o->cache ? o->cache : lw_device_cache_bytes(o->max_frame);
    snprintf(name, name_cap, "leworld-fw %s (host)", o->kind == LW_KIND_FPGA ? "fpga" : "esp32");
    *cfg = (lw_device_config){
        .kind = o->kind,
        .name = name,
        .max_frame = o->max_frame,
        .max_model = o->max_model,
        .frame_in = allocate(frame_buffer, "the receive buffer"),
        .frame_out = allocate(frame_buffer, "the send buffer"),
        .model_active = allocate(o->max_model, "the model"),
        .model_transfer = allocate(o->max_model, "the model transfer"),
        .scratch = allocate(o->scratch, "the scratch"),
        .scratch_size = o->scratch,
        .cache = allocate(cache, "the response cache"),
        .cache_size = cache,
        .max_rows = o->max_rows,
        .predict_row_us = o->row_us,
        .encode_row_us = o->row_us,
    };
    if (!cfg->frame_in || !cfg->frame_out || !cfg->model_active || !cfg->model_transfer || !cfg->scratch ||
        !cfg->cache) {
        return 0;
    }
    char err[LW_ERR_LEN];
    if (lw_device_init(cfg, err) != LW_OK) {
        fprintf(stderr, "leworld-fw: %s\n", err);
        return 0;
    }
    if (o->model == NULL) return 1;
    uint32_t size = 0;
    if (!read_model(o->model, cfg->model_transfer, o->max_model, &size)) return 0;
    if (lw_device_install(cfg->model_transfer, size, err) != LW_OK) {
        fprintf(stderr, "leworld-fw: cannot hold model %s: %s\n", o->model, err);
        return 0;
    }
    return 1;
}

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

static void catch_signals(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal; /* no SA_RESTART: poll returns EINTR and the loop ends */
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
}

/* ------------------------------------------------------------------ serving */
static void serve(int exit_with_stdin) {
    static uint8_t chunk[READ_SIZE];
    while (!stopping) {
        struct pollfd fds[2] = {{link_fd, POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
        int ready = poll(fds, exit_with_stdin ? 2 : 1, 1000);
        if (ready < 0 && errno != EINTR) {
            fprintf(stderr, "leworld-fw: poll failed (%s)\n", strerror(errno));
            return;
        }
        if (ready <= 0) continue;
        if (exit_with_stdin && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t m = read(STDIN_FILENO, chunk, sizeof chunk);
            if (m <= 0) return; /* whoever started us has gone */
        }
        if (fds[0].revents & POLLIN) {
            ssize_t m = read(link_fd, chunk, sizeof chunk);
            if (m > 0) lw_device_feed(chunk, (size_t)m);
        }
    }
}

int main(int argc, char **argv) {
    options o;
    int problem = parse_args(argc, argv, &o);
    if (problem) return problem;
    clock_gettime(CLOCK_MONOTONIC, &started);
    catch_signals();
    int slave = -1;
    char path[256], name[64];
    link_fd = open_pty(&slave, path, sizeof path);
    if (link_fd < 0) return 1;
    lw_device_config cfg;
    if (!setup(&o, &cfg, name, sizeof name)) return 1;
    const char *kind = o.kind == LW_KIND_FPGA ? "fpga" : "esp32";
    printf("%s emulator on %s\n", kind, path);
    printf("  %s: C firmware, %s; max frame %lu bytes. Connect with gym.make('LeWorld-PushT-v0', backend='%s', "
           "port='%s'). Ctrl-C stops.\n",
           name, o.model ? "holding the model given" : "no model yet (the host sends it)", (unsigned long)o.max_frame,
           kind, path);
    fflush(stdout);
    serve(o.exit_with_stdin);
    printf("stopped after %llu commands\n", (unsigned long long)lw_device_counter("executed"));
    fflush(stdout);
    close(slave);
    close(link_fd);
    return 0;
}
