/* Status codes shared by every firmware module: the protocol's error codes (docs/protocol.md §3). */
#ifndef LW_STATUS_H
#define LW_STATUS_H

typedef enum {
    LW_OK = 0,
    LW_UNSUPPORTED_VERSION = 1,
    LW_UNKNOWN_COMMAND = 2,
    LW_BAD_PAYLOAD = 3,
    LW_NO_MODEL = 4,
    LW_BAD_INPUT = 5,
    LW_UNSUPPORTED = 6,
    LW_TOO_LARGE = 7,
    LW_LOAD_OFFSET = 8,
    LW_LOAD_CHECKSUM = 9,
    LW_BAD_MODEL = 10,
    LW_STALE_SEQUENCE = 11,
    LW_INTERNAL = 12
} lw_status;

/* Every function that can fail returns an lw_status and, on failure, writes a one-line,
 * NUL-terminated message of at most LW_ERR_LEN - 1 bytes into the caller's buffer. */
#define LW_ERR_LEN 256

#endif
