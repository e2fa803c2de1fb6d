/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* See types.h: the objects are built for bpfel. */
#include <linux/byteorder/little_endian.h>
