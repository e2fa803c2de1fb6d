package udp

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/flannel-go/flannel-go/internal/fdpoll"
	"golang.org/x/sys/unix"
)

// conn is the Linux Conn: a non-blocking socket driven with raw recvmmsg
// and sendmmsg on headers built once, sleeping in poll(2) on the socket
// and an eventfd that Close signals, never on the Go netpoller.
type conn struct {
	fd, evfd int
	v6       bool // an AF_INET6 socket: its names are sockaddr_in6
	gro      bool
	gso      atomic.Bool
	log      *slog.Logger
	life     sync.RWMutex // the batch calls hold it shared, Close exclusively
	closed   bool         // guarded by life
	// sendmmsg is the system call; the package's tests make it fail.
	sendmmsg func(fd int, hdrs []unix.Mmsghdr) (int, unix.Errno)

	// WriteBatch's: one header per train, one iovec per datagram.
	whdrs  []unix.Mmsghdr
	wnames []unix.RawSockaddrInet6 // a sockaddr_in in front for IPv4
	wiovs  []unix.Iovec
	wctl   []byte  // gsoCtlLen bytes per header
	wmsg   []int32 // the message each header belongs to
	wsegs  []int32 // the datagrams in each header
	wpoll  *fdpoll.Waiter

	// ReadBatch's.
	rhdrs  []unix.Mmsghdr
	rnames []unix.RawSockaddrInet6
	riovs  []unix.Iovec
	rctl   []byte // inCtlLen bytes per header
	rpoll  *fdpoll.Waiter
}

// Listen opens a Conn on cfg.Addr, IPv4 or IPv6. It probes the offloads:
// GSO needs UDP_SEGMENT (Linux 4.18), GRO UDP_GRO (Linux 5.0).
//
// An IPv6 Conn is IPv6 only (IPV6_V6ONLY), so that an IPv4 Conn and an
// IPv6 Conn may share a port, also both on wildcard addresses: each
// underlay has its own socket. Its messages carry plain IPv6 addresses,
// never IPv4-mapped ones. A zone in cfg.Addr (a link-local address) names
// the interface to bind on; peers' addresses are used without a zone.
//
// Neither family's socket sets a path-MTU option: both keep the kernel's
// default (IP_PMTUDISC_WANT, IPV6_PMTUDISC_WANT), which sends with DF
// (IPv6 routers never fragment) and fragments locally only a datagram
// larger than the route's known path MTU.
func Listen(cfg Config) (Conn, error) {
	ip := cfg.Addr.Addr()
	if !ip.IsValid() || ip.Is4In6() {
		return nil, fmt.Errorf("listen udp %s: want an IPv4 or IPv6 address (not IPv4-mapped; use the IPv4 address for an IPv4 socket)", cfg.Addr)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := newConn(max(1, cmp0(cfg.ReadBatch)), max(1, cmp0(cfg.WriteBatch)), ip.Is6())
	c.log = cfg.Logger
	var err error
	if c.fd, err = socket(cfg); err != nil {
		return nil, err
	}
	if !cfg.DisableOffloads {
		_, err := unix.GetsockoptInt(c.fd, unix.SOL_UDP, unix.UDP_SEGMENT)
		c.gso.Store(err == nil)
		c.gro = unix.SetsockoptInt(c.fd, unix.SOL_UDP, unix.UDP_GRO, 1) == nil
	}
	if c.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("udp: eventfd: %w", err)
	}
	// A full send buffer drains at the kernel's pace: only receive spins.
	c.wpoll = fdpoll.New(c.fd, unix.POLLOUT, c.evfd, 0)
	c.rpoll = fdpoll.New(c.fd, unix.POLLIN, c.evfd, cfg.BusyPoll)
	return c, nil
}

func cmp0(n int) int {
	if n == 0 {
		return DefaultBatch
	}
	return n
}

func newConn(rb, wb int, v6 bool) *conn {
	c := &conn{
		fd: -1, evfd: -1, v6: v6,
		sendmmsg: sendmmsg,
		whdrs:    make([]unix.Mmsghdr, wb),
		wnames:   make([]unix.RawSockaddrInet6, wb),
		wiovs:    make([]unix.Iovec, wb),
		wctl:     make([]byte, wb*gsoCtlLen),
		wmsg:     make([]int32, wb),
		wsegs:    make([]int32, wb),
		rhdrs:    make([]unix.Mmsghdr, rb),
		rnames:   make([]unix.RawSockaddrInet6, rb),
		riovs:    make([]unix.Iovec, rb),
		rctl:     make([]byte, rb*inCtlLen),
	}
	for i := range c.whdrs {
		h := &c.whdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&c.wnames[i]))
		h.Namelen = c.namelen()
		initGSOCtl(c.wctl[i*gsoCtlLen:])
	}
	for i := range c.rhdrs {
		h := &c.rhdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&c.rnames[i]))
		h.Iov = &c.riovs[i]
		h.SetIovlen(1)
		h.Control = &c.rctl[i*inCtlLen]
	}
	return c
}

// namelen is the size of the socket's sockaddr.
func (c *conn) namelen() uint32 {
	if c.v6 {
		return unix.SizeofSockaddrInet6
	}
	return unix.SizeofSockaddrInet4
}

// socket opens the non-blocking socket of cfg.Addr's family, joins the
// port's SO_REUSEPORT group, sizes its buffers and binds it.
func socket(cfg Config) (int, error) {
	ip := cfg.Addr.Addr()
	family, network := unix.AF_INET, "udp4"
	var sa unix.Sockaddr
	if ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(cfg.Addr.Port()), Addr: ip.As4()}
	} else {
		family, network = unix.AF_INET6, "udp6"
		sa6 := &unix.SockaddrInet6{Port: int(cfg.Addr.Port()), Addr: ip.As16()}
		if z := ip.Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return -1, fmt.Errorf("listen %s %s: zone: %w", network, cfg.Addr, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("listen %s %s: socket: %w", network, cfg.Addr, err)
	}
	if family == unix.AF_INET6 {
		// Before bind: the IPv4 underlay has a socket of its own on the
		// same port, and mapped addresses would mix the families.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("listen %s %s: set IPV6_V6ONLY: %w", network, cfg.Addr, err)
		}
	}
	if err := setSockopts(fd, cfg); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s %s: %w", network, cfg.Addr, err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s %s: %w", network, cfg.Addr, err)
	}
	return fd, nil
}

// setSockopts sets SO_REUSEPORT, the buffer sizes, forcing past the sysctl
// limits when we may (CAP_NET_ADMIN), and SO_TIMESTAMPNS if asked.
func setSockopts(fd int, cfg Config) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", err)
	}
	for _, o := range [...]struct {
		force, plain int
		what         string
	}{
		{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, "receive"},
		{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, "send"},
	} {
		if cfg.Buffer == 0 || unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.force, cfg.Buffer) == nil {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.plain, cfg.Buffer); err != nil {
			return fmt.Errorf("set %s buffer to %d bytes: %w", o.what, cfg.Buffer, err)
		}
	}
	if cfg.Timestamps {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("set SO_TIMESTAMPNS: %w", err)
		}
	}
	return nil
}

func (c *conn) Offloads() Offloads { return Offloads{GSO: c.gso.Load(), GRO: c.gro} }

func (c *conn) Close() error {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	c.life.RLock()
	closed := c.closed
	if !closed {
		unix.Write(c.evfd, one[:])
	}
	c.life.RUnlock()
	if closed {
		return nil
	}
	// Only once no batch call can still use the descriptors may they go.
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	unix.Close(c.evfd)
	if err := unix.Close(c.fd); err != nil {
		return fmt.Errorf("close UDP socket: %w", err)
	}
	return nil
}

func (c *conn) ReadBatch(msgs []Message) (int, error) {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed {
		return 0, ErrClosed
	}
	n := min(len(msgs), len(c.rhdrs))
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		b := msgs[i].Buffers[0]
		c.riovs[i].Base = unsafe.SliceData(b)
		c.riovs[i].SetLen(len(b))
		h := &c.rhdrs[i].Hdr
		h.Namelen = c.namelen()
		h.Flags = 0
		h.SetControllen(inCtlLen)
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd), uintptr(unsafe.Pointer(&c.rhdrs[0])), uintptr(n), 0, 0, 0)
		switch e {
		case 0:
			c.rpoll.Active()
			for i := range int(r) {
				c.received(&msgs[i], i)
			}
			return int(r), nil
		case unix.EINTR:
		case unix.EAGAIN:
			if c.rpoll.Wait() != nil {
				return 0, ErrClosed
			}
		case unix.EBADF:
			return 0, ErrClosed
		default:
			return 0, e
		}
	}
}

// received fills m from receive header i.
func (c *conn) received(m *Message, i int) {
	h := &c.rhdrs[i]
	m.N = int(h.Len)
	m.Truncated = h.Hdr.Flags&unix.MSG_TRUNC != 0
	m.Addr = c.rnameAddr(i)
	ctl := c.rctl[i*inCtlLen : i*inCtlLen+min(int(h.Hdr.Controllen), inCtlLen)]
	seg, stamp := parseCtl(ctl)
	m.Segment, m.Stamp = m.N, stamp
	if seg > 0 {
		m.Segment = seg
	}
}

// rnameAddr is the source address in receive header i: an IPv6 socket
// (V6ONLY) never hears from an IPv4-mapped one, and the zone of a
// link-local source is left out, as it costs an allocation.
func (c *conn) rnameAddr(i int) netip.AddrPort {
	sa := &c.rnames[i]
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]) // network byte order
	if c.v6 {
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	}
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
}

func (c *conn) WriteBatch(msgs []Message) (int, error) {
	c.life.RLock()
	defer c.life.RUnlock()
	if c.closed {
		return 0, ErrClosed
	}
	for i := range msgs {
		msgs[i].N = 0
	}
	m, at := 0, 0
	gso := c.gso.Load()
	for {
		nh, nm, nat := c.trains(msgs, m, at, gso)
		if nh == 0 {
			return len(msgs), nil
		}
		sent, err := c.send(nh)
		for h := range sent {
			msgs[c.wmsg[h]].N += int(c.wsegs[h])
		}
		if err == nil {
			m, at = nm, nat
			continue
		}
		fm := int(c.wmsg[sent])
		e, _ := err.(unix.Errno)
		if c.wsegs[sent] > 1 && (e == unix.EIO || e == unix.EINVAL || e == unix.EMSGSIZE) {
			// EIO: the egress device cannot segment UDP at all.
			// EINVAL, EMSGSIZE: a segment larger than the path
			// allows. Either way the rest of this batch goes one
			// datagram per message, from the refused train on.
			if e == unix.EIO && c.gso.CompareAndSwap(true, false) {
				c.log.Warn("The egress device refused UDP GSO (EIO); sending one datagram per packet from now on")
			}
			gso = false
			m, at = fm, msgs[fm].N
			continue
		}
		return fm, err
	}
}

// send sends whdrs[:nh], sleeping while the send buffer is full, and
// returns how many went out before an error.
func (c *conn) send(nh int) (int, error) {
	done := 0
	for done < nh {
		r, e := c.sendmmsg(c.fd, c.whdrs[done:nh])
		switch e {
		case 0:
			done += r
		case unix.EINTR:
		case unix.EAGAIN:
			if c.wpoll.Wait() != nil {
				return done, ErrClosed
			}
		case unix.EBADF:
			return done, ErrClosed
		default:
			return done, e
		}
	}
	return done, nil
}

func sendmmsg(fd int, hdrs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), 0, 0, 0)
	return int(r), e
}
