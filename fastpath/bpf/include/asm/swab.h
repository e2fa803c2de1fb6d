/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/* See types.h: no architecture-specific byte swaps; linux/swab.h's
 * generic ones compile to BPF's own. */
