package router

import (
	"net/netip"

	"github.com/flannel-go/flannel-go/udp"
	"golang.org/x/sys/unix"
)

// memConn is an in-memory udp.Conn: ReadBatch hands out the datagrams
// queued with push, WriteBatch records what it sent and fails every
// message of more than one datagram with failTrains if set.
type memConn struct {
	rx         []memDatagram
	failTrains unix.Errno
	sent       []int // datagrams per message sent
	gso        bool
}

// memDatagram is one received message: parts, back to back, from from,
// a GRO train of seg-byte datagrams if seg is set.
type memDatagram struct {
	parts [][]byte
	from  netip.Addr
	seg   int
	stamp int64
	trunc bool
}

func (c *memConn) push(d memDatagram) { c.rx = append(c.rx, d) }

func (c *memConn) ReadBatch(msgs []udp.Message) (int, error) {
	if len(c.rx) == 0 {
		return 0, udp.ErrClosed
	}
	n := min(len(msgs), len(c.rx))
	for i, d := range c.rx[:n] {
		m := &msgs[i]
		m.N = 0
		for _, p := range d.parts {
			m.N += copy(m.Buffers[0][m.N:], p)
		}
		m.Addr = netip.AddrPortFrom(d.from, DefaultPort)
		m.Segment, m.Stamp, m.Truncated = m.N, d.stamp, d.trunc
		if d.seg > 0 {
			m.Segment = d.seg
		}
	}
	c.rx = c.rx[:copy(c.rx, c.rx[n:])]
	return n, nil
}

func (c *memConn) WriteBatch(msgs []udp.Message) (int, error) {
	for i := range msgs {
		if c.failTrains != 0 && len(msgs[i].Buffers) > 1 {
			msgs[i].N = 0
			return i, c.failTrains
		}
		msgs[i].N = len(msgs[i].Buffers)
		c.sent = append(c.sent, msgs[i].N)
	}
	return len(msgs), nil
}

func (c *memConn) Offloads() udp.Offloads { return udp.Offloads{GSO: c.gso, GRO: true} }
func (c *memConn) Close() error           { return nil }
