// Package tun opens and configures the multi-queue TUN device that carries
// the overlay's inner IPv4 and IPv6 packets between the kernel and the
// router. Its
// Queue interface is batch-shaped, with caller-owned buffers and headroom:
// with offloads, one Read turns a 64 KB TCP or UDP super-packet into MTU-sized
// packets, and one Write coalesces a flow's packets into a super-packet.
package tun

import (
	"log/slog"
	"time"
)

// Headroom is the number of bytes callers should reserve in front of each
// packet (the offset argument of Queue.Read and Queue.Write). Read puts the
// 10-byte virtio-net header there, so that a packet is read in place.
const Headroom = 16

// Queue is one queue of a TUN device. Read is meant to be called by one
// goroutine; Write is safe for concurrent use, also with Read.
type Queue interface {
	// Read reads packets into bufs[i][offset:], setting sizes[i] to each
	// packet's length, and returns their number. It blocks until at least
	// one packet is available, then takes what else is already queued
	// while buffers are left. With offloads, the packets of one call may
	// be the segments of super-packets, so bufs should hold BatchSize
	// buffers: the first of 65535+offset bytes (a super-packet is read
	// into it), the others big enough for one packet of the device's MTU
	// plus offset. A packet or super-packet that does not fit into the
	// buffers left is returned by the next call. An error
	// wrapping ErrDropped means one malformed packet was dropped and the
	// queue is still usable.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes the packets bufs[i][offset:]. With offloads it may
	// merge packets of one flow into one super-packet and then rewrites
	// the first packet's headers in place; it never touches the bytes
	// before offset, so packets may lie back to back in one buffer. It
	// returns how many packets the device accepted and, if some were
	// refused, the first error; the others are still written.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the number of buffers Read is able to fill in one call.
	BatchSize() int
	// Offloads reports the offloads the queue's device uses.
	Offloads() Offloads
	// Close closes the queue and unblocks a pending Read.
	Close() error
}

// Offloads says which offloads a device negotiated with the kernel.
type Offloads struct {
	// VnetHdr: packets carry a virtio-net header (IFF_VNET_HDR), so the
	// kernel may hand over packets with a partial checksum, and written
	// packets may be TCP super-packets.
	VnetHdr bool
	// TSO: reads may be TCP super-packets (TUN_F_TSO4/6), which Read
	// splits, IPv6 ones with extension headers excepted (dropped).
	TSO bool
	// USO: reads may be UDP super-packets and writes may coalesce UDP,
	// over either family (TUN_F_USO4/6, Linux 6.2 and later).
	USO bool
}

// Option changes how Open sets up the device.
type Option func(*options)

type options struct {
	offloads       bool
	verifyChecksum bool
	busyPoll       time.Duration
	log            *slog.Logger
}

// WithLogger gives Open a logger for set-up steps whose failure changes
// behaviour without failing Open (slog.Default() if not given).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithBusyPoll makes a read or write that finds the queue not ready check
// it again without sleeping for d after the queue's last activity, before
// it sleeps in poll(2): a packet arriving within d costs no wake-up. 0 (the
// default) sleeps at once.
func WithBusyPoll(d time.Duration) Option { return func(o *options) { o.busyPoll = d } }

// WithOffloads turns the offloads (IFF_VNET_HDR, TSO, USO and coalesced
// writes) on or off; they are on by default and used as far as the
// kernel supports them.
func WithOffloads(on bool) Option { return func(o *options) { o.offloads = on } }

// WithChecksumVerification makes Write re-verify the TCP/UDP checksum of
// every packet it coalesces and leave the other packets' checksums to the
// kernel. By default Write trusts the checksums of the packets it is
// given: the router only writes packets that arrived in UDP datagrams
// whose checksum the kernel verified, so it marks single packets
// DATA_VALID and coalesces without looking at the inner checksums.
func WithChecksumVerification(on bool) Option {
	return func(o *options) { o.verifyChecksum = on }
}

// OffloadBatchSize is the BatchSize of a queue with TSO: the most segments
// one super-packet is split into. Open caps the device's gso_max_segs at it,
// so the kernel segments anything larger itself.
const OffloadBatchSize = 128
