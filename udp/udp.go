// Package udp is the data plane's UDP socket: batches of datagrams in and
// out with one system call each, and trains of datagrams to one peer with
// UDP GSO on send and UDP GRO on receive. The caller owns every buffer and
// the package builds its message headers once, so a batch costs no copy
// and no allocation; what to send where is the caller's business.
package udp

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"
)

// Message is one entry of a batch.
type Message struct {
	// Buffers are, on send, the datagrams for Addr in order, each one
	// whole datagram; the Conn sends runs of them as GSO trains. On
	// receive, Buffers[0] receives one datagram or a GRO train of them.
	Buffers [][]byte
	// Addr is the destination on send and the source on receive, of the
	// Conn's family: a plain IPv6 address (never IPv4-mapped, without a
	// zone) on an IPv6 Conn. A send to the other family fails for this
	// message alone (EAFNOSUPPORT on IPv4, ENETUNREACH on IPv6).
	Addr netip.AddrPort
	// N is, on receive, the bytes received into Buffers[0]; on send, how
	// many of Buffers the kernel took.
	N int
	// Segment is, on receive, the size of each datagram in
	// Buffers[0][:N], the last of which may be shorter: N itself for a
	// single datagram. Send ignores it and sizes its trains itself.
	Segment int
	// Stamp is, on receive, when the message reached the socket in
	// wall-clock nanoseconds (0: unknown; see Config.Timestamps).
	Stamp int64
	// Truncated says the received message did not fit into Buffers[0].
	Truncated bool
}

// Conn is a UDP socket that moves batches of messages. ReadBatch is meant
// for one goroutine and WriteBatch for one other; Close may be called from
// any.
type Conn interface {
	// ReadBatch receives up to len(msgs) messages (at most
	// Config.ReadBatch), sleeping until one is there, and returns how
	// many it received. It returns ErrClosed once Close was called; any
	// other error is the errno of one failed call, and the socket may be
	// read again.
	ReadBatch(msgs []Message) (int, error)
	// WriteBatch sends msgs in order, sleeping while the send buffer is
	// full, and returns how many messages it sent in full. A non-nil
	// error is about msgs[n], of which msgs[n].N datagrams went out:
	// ErrClosed, or the errno the kernel refused a datagram with; the
	// caller may go on with msgs[n+1:]. A GSO train the path cannot take
	// is resent one datagram at a time, and a device that cannot segment
	// at all turns GSO off for good (see Offloads).
	WriteBatch(msgs []Message) (int, error)
	// Offloads reports the offloads in use now.
	Offloads() Offloads
	// Close wakes a sleeping ReadBatch or WriteBatch, waits for them to
	// return and closes the socket.
	Close() error
}

// Offloads says which UDP offloads a Conn uses.
type Offloads struct {
	GSO bool // trains leave with one message (UDP_SEGMENT)
	GRO bool // trains arrive in one message (UDP_GRO)
}

// Config configures a Conn.
type Config struct {
	// Addr is the local address and port to bind, IPv4 or IPv6, with
	// SO_REUSEPORT so that several Conns share one port. An IPv6 Conn
	// is IPv6-only, so an IPv4 Conn may bind the same port beside it.
	Addr netip.AddrPort
	// Buffer is the socket's receive and send buffer size in bytes
	// (the kernel's default if 0).
	Buffer int
	// DisableOffloads leaves GSO and GRO off.
	DisableOffloads bool
	// Timestamps asks for the kernel's receive time of every message.
	Timestamps bool
	// BusyPoll is how long ReadBatch keeps checking an empty socket
	// without sleeping after recent traffic (0: sleep at once).
	BusyPoll time.Duration
	// ReadBatch is the most messages one ReadBatch receives, and
	// WriteBatch the most datagrams one send call carries
	// (DefaultBatch if 0).
	ReadBatch, WriteBatch int
	// Logger receives the Conn's logs (slog.Default() if nil).
	Logger *slog.Logger
}

// DefaultBatch is the batch size of a zero Config.ReadBatch or WriteBatch.
const DefaultBatch = 64

// ErrClosed is returned by a Conn's batch calls once Close was called.
var ErrClosed = errors.New("udp: use of closed connection")
