// Package tun opens and configures the multi-queue TUN device that carries
// the overlay's inner IPv4 packets between the kernel and the router. Its
// Queue interface is batch-shaped, with caller-owned buffers and headroom,
// so that an offload-capable implementation can replace the plain one
// without changing its users.
package tun

// Headroom is the number of bytes callers should reserve in front of each
// packet (the offset argument of Queue.Read and Queue.Write). The plain queue
// does not use it; an IFF_VNET_HDR queue puts its 10-byte virtio-net header
// there so that no packet has to be copied.
const Headroom = 16

// Queue is one queue of a TUN device. Read is meant to be called by one
// goroutine; Write is safe for concurrent use, also with Read.
type Queue interface {
	// Read reads up to len(bufs) packets into bufs[i][offset:], setting
	// sizes[i] to each packet's length. It blocks until at least one packet
	// is available and returns the number of packets read.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes the packets bufs[i][offset:], one per buffer. It returns
	// how many were written; on an error, bufs[n] is the packet that failed
	// and the packets after it were not attempted.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the number of buffers Read is able to fill in one call.
	BatchSize() int
	// Close closes the queue and unblocks a pending Read.
	Close() error
}
