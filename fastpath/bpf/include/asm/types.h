/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* The uapi headers' architecture-specific asm/ part, for the BPF target:
 * 64-bit little endian whatever the machine that builds the objects, so
 * that no per-architecture include directory is needed. */
#include <asm-generic/types.h>
