/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* See types.h: the BPF target is 64-bit. */
#define __BITS_PER_LONG 64
#include <asm-generic/bitsperlong.h>
