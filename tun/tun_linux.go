package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/flannel-go/flannel-go/internal/fdpoll"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultBatchSize is the number of packets a queue without offloads reads
// per Read call at most. Each packet still costs one read(2); the batch lets
// the router send many datagrams with one sendmmsg.
const DefaultBatchSize = 32

// Device is an open multi-queue TUN device.
type Device struct {
	// Name is the interface name, e.g. "flannel0".
	Name string
	// Queues holds one queue per worker.
	Queues []Queue
	// Offloads is what the kernel agreed to; all queues share it.
	Offloads Offloads

	closeOnce sync.Once
	closeErr  error
}

// Open creates the TUN device name (IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE,
// not persistent) with the given number of queues. The device disappears
// when all its queues are closed.
//
// Unless WithOffloads(false) is given, the device is opened with
// IFF_VNET_HDR and TUNSETOFFLOAD (checksum, TSO4/6, and USO4/6 where the
// kernel has them), falling back step by step to what the kernel accepts.
// The device is opened with x/sys/unix ioctls rather than a TUN library:
// IFF_VNET_HDR can only be chosen at TUNSETIFF time, and songgao/water,
// which we used before, cannot pass it (nor set offloads, and it leaks a
// file descriptor when attaching fails).
//
// A name with "%d" (upstream's "flannel%d") lets the kernel pick the lowest
// free number; Device.Name is the name it picked. An existing interface of
// a fixed name is refused: attaching queues to a TUN another process owns
// would silently share its traffic.
func Open(name string, queues int, opts ...Option) (*Device, error) {
	o := options{offloads: true}
	for _, opt := range opts {
		opt(&o)
	}
	if name == "" {
		return nil, errors.New("open TUN device: empty interface name")
	}
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open TUN device %q: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	if queues < 1 {
		return nil, fmt.Errorf("open TUN device %s: %d queues, need at least 1", name, queues)
	}
	if l, err := netlink.LinkByName(name); err == nil && !strings.Contains(name, "%d") {
		return nil, fmt.Errorf("open TUN device %s: an interface of that name (type %s) already exists; delete it (ip link del %s) or choose another name",
			name, l.Type(), name)
	}
	d := &Device{Name: name}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
	if o.offloads {
		flags |= unix.IFF_VNET_HDR
	}
	for i := range queues {
		fd, got, err := openQueue(name, flags)
		if err != nil && i == 0 && flags&unix.IFF_VNET_HDR != 0 {
			// A kernel without IFF_VNET_HDR: run without offloads.
			flags &^= unix.IFF_VNET_HDR
			fd, got, err = openQueue(name, flags)
		}
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("open TUN device %s queue %d: %w", name, i, err)
		}
		// The other queues attach to the device the first one created.
		name, d.Name = got, got
		if i == 0 && flags&unix.IFF_VNET_HDR != 0 {
			d.Offloads = setOffloads(fd)
			if d.Offloads.TSO {
				// Splitting needs a buffer per segment.
				capGSOSegs(name, o)
			}
		}
		q, err := newQueue(fd, d.Offloads, o)
		if err != nil {
			unix.Close(fd)
			d.Close()
			return nil, fmt.Errorf("open TUN device %s queue %d: %w", name, i, err)
		}
		d.Queues = append(d.Queues, q)
	}
	return d, nil
}

// capGSOSegs limits the device's super-packets to OffloadBatchSize
// segments. Should that fail, a larger one is refused by Read and counted
// as a drop: say so once, at start.
func capGSOSegs(name string, o options) {
	log := o.log
	if log == nil {
		log = slog.Default()
	}
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetGSOMaxSegs(l, OffloadBatchSize)
	}
	if err != nil {
		log.Warn("Could not cap the TUN's GSO segments; larger super-packets will be dropped",
			"device", name, "gso_max_segs", OffloadBatchSize, "error", err)
	}
}

// openQueue attaches one non-blocking queue to the TUN name, creating it,
// and returns the device's name as the kernel set it.
func openQueue(name string, flags uint16) (int, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, "", fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, "", err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("TUNSETIFF: %w", err)
	}
	return fd, ifr.Name(), nil
}

// setOffloads asks for the most the kernel grants: USO needs Linux 6.2,
// TSO and checksum offload are older. Each refusal (EINVAL) drops a step.
func setOffloads(fd int) Offloads {
	for _, s := range [...]struct {
		flags    int
		tso, uso bool
	}{
		{unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6, true, true},
		{unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6, true, false},
		{unix.TUN_F_CSUM, false, false},
	} {
		if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, s.flags) == nil {
			return Offloads{VnetHdr: true, TSO: s.tso, USO: s.uso}
		}
	}
	return Offloads{VnetHdr: true}
}

// Configure gives the device its address (addr/32, the network address of
// the node's own subnet), MTU and transmit queue length, brings it up and
// routes the whole overlay network through it. An existing identical route
// is not an error. Configure may be called again after a re-acquired lease;
// the previous address then stays until RemoveAddr.
func (d *Device) Configure(addr netip.Addr, mtu, txQueueLen int, network netip.Prefix) error {
	if !addr.Is4() {
		return fmt.Errorf("configure %s: address %s is not IPv4", d.Name, addr)
	}
	if !network.Addr().Is4() {
		return fmt.Errorf("configure %s: network %s is not IPv4", d.Name, network)
	}
	link, err := netlink.LinkByName(d.Name)
	if err != nil {
		return fmt.Errorf("configure %s: %w", d.Name, err)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 32))}); err != nil {
		return fmt.Errorf("failed to set interface %s to %s/32: %w", d.Name, addr, err)
	}
	if err := d.setMTU(link, mtu, txQueueLen); err != nil {
		return err
	}
	return d.upWithRoute(link, network)
}

// setMTU sets the device's MTU and, when txQueueLen is positive, its
// transmit queue length.
func (d *Device) setMTU(link netlink.Link, mtu, txQueueLen int) error {
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("failed to set MTU %d on %s: %w", mtu, d.Name, err)
	}
	if txQueueLen > 0 {
		if err := netlink.LinkSetTxQLen(link, txQueueLen); err != nil {
			return fmt.Errorf("failed to set txqueuelen %d on %s: %w", txQueueLen, d.Name, err)
		}
	}
	return nil
}

// upWithRoute brings the device up and routes network through it; an
// existing identical route is not an error.
func (d *Device) upWithRoute(link netlink.Link, network netip.Prefix) error {
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("failed to set interface %s to UP state: %w", d.Name, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(network.Masked()),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if err := netlink.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("failed to add route (%s -> %s): %w", network.Masked(), d.Name, err)
	}
	return nil
}

// RemoveAddr removes addr/32 from the device, e.g. the address of a lease
// that was replaced by another subnet.
func (d *Device) RemoveAddr(addr netip.Addr) error {
	return d.removeAddr(addr, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 32))})
}

func (d *Device) removeAddr(addr netip.Addr, a *netlink.Addr) error {
	link, err := netlink.LinkByName(d.Name)
	if err != nil {
		return fmt.Errorf("remove address %s from %s: %w", addr, d.Name, err)
	}
	if err := netlink.AddrDel(link, a); err != nil {
		return fmt.Errorf("remove address %s from %s: %w", addr, d.Name, err)
	}
	return nil
}

// Close closes every queue; the device and its route then disappear. Queues
// that were already closed (the router closes them when it stops) are not
// an error. Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		for _, q := range d.Queues {
			if err := q.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			d.closeErr = fmt.Errorf("close TUN device %s: %w", d.Name, err)
		}
	})
	return d.closeErr
}

// ipNet converts p (IPv4 or IPv6) for netlink.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// queue is one TUN queue fd, non-blocking but never on the Go netpoller:
// the calling thread sleeps in poll(2) on the fd and an eventfd, so a read
// costs one syscall under load and no goroutine hand-off when idle
// (performance-notes §4: blocking syscalls on the worker's own thread beat
// the netpoller by about 30 %). Close signals the eventfd, waits for calls in
// flight and only then closes the fd, so its number is never reused under a
// running syscall.
type queue struct {
	fd, evfd int
	off      Offloads
	life     sync.RWMutex // Read and Write hold it shared, Close exclusively
	closed   atomic.Bool

	// Read's, owned by the reading goroutine. With offloads, the reads
	// after a call's first go to spare, because a super-packet's segment
	// count is known only once it was read; one that does not fit into
	// the buffers left stays there (pending) for the next call.
	rpoll   *fdpoll.Waiter
	spare   []byte
	pending int // bytes in spare waiting for the next Read, -1 for none

	wmu   sync.Mutex // serialises writers; guards the fields below
	wpoll *fdpoll.Waiter
	gro   groTable
	trust bool
	hdr   [vnetHdrLen]byte
	iovs  []unix.Iovec
}

func newQueue(fd int, off Offloads, o options) (*queue, error) {
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	q := &queue{
		fd: fd, evfd: evfd, off: off,
		gro:     groTable{tcp: off.VnetHdr, udp: off.USO, verify: o.verifyChecksum},
		trust:   !o.verifyChecksum,
		iovs:    make([]unix.Iovec, maxCoalesce+2),
		pending: -1,
	}
	if off.VnetHdr {
		q.spare = make([]byte, vnetHdrLen+maxPacket)
	}
	q.rpoll = fdpoll.New(fd, unix.POLLIN, evfd, o.busyPoll)
	// A full TUN write queue drains at the kernel's pace: no spin.
	q.wpoll = fdpoll.New(fd, unix.POLLOUT, evfd, 0)
	return q, nil
}

func (q *queue) BatchSize() int {
	if q.off.TSO {
		return OffloadBatchSize
	}
	return DefaultBatchSize
}

func (q *queue) Offloads() Offloads { return q.off }

func (q *queue) Close() error {
	if !q.closed.CompareAndSwap(false, true) {
		return os.ErrClosed
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, werr := unix.Write(q.evfd, one[:])
	q.life.Lock()
	defer q.life.Unlock()
	err := unix.Close(q.fd)
	unix.Close(q.evfd)
	if werr != nil {
		return fmt.Errorf("wake TUN queue: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("close TUN queue: %w", err)
	}
	return nil
}

// wait sleeps until w's fd is ready or the queue is closed.
func (q *queue) wait(w *fdpoll.Waiter) error {
	err := w.Wait()
	if errors.Is(err, fdpoll.ErrStopped) || q.closed.Load() {
		return os.ErrClosed
	}
	if err != nil {
		return os.NewSyscallError("poll", err)
	}
	return nil
}

// read reads one packet into b, sleeping while there is none.
func (q *queue) read(b []byte) (int, error) {
	for {
		n, err := unix.Read(q.fd, b)
		switch err {
		case nil:
			q.rpoll.Active()
			return n, nil
		case unix.EINTR:
		case unix.EAGAIN:
			if err := q.wait(q.rpoll); err != nil {
				return 0, err
			}
		default:
			return 0, os.NewSyscallError("read", err)
		}
	}
}

// Read, with offloads, reads super-packets and packets until the batch is
// full or the fd runs dry; it sleeps only while nothing was read yet. Small
// packets thus share one call (and one sendmmsg) as they do without
// offloads.
func (q *queue) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 || len(sizes) == 0 {
		return 0, nil
	}
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed.Load() {
		return 0, os.ErrClosed
	}
	if !q.off.VnetHdr {
		return q.readPlain(bufs, sizes, offset)
	}
	if offset < vnetHdrLen {
		return 0, fmt.Errorf("TUN read: offset %d leaves no room for the %d-byte virtio-net header", offset, vnetHdrLen)
	}
	var k int
	if q.pending >= 0 {
		n := q.pending
		q.pending = -1
		var err error
		if k, err = splitRead(q.spare[:n], bufs, sizes, offset); err != nil {
			return 0, dropped(q.spare[:n], err)
		}
	} else {
		b := bufs[0][offset-vnetHdrLen:]
		n, err := q.read(b)
		if err != nil {
			return 0, err
		}
		if k, err = splitRead(b[:n], bufs, sizes, offset); err != nil {
			return 0, dropped(b[:n], err)
		}
	}
	for k < min(len(bufs), len(sizes)) {
		if len(bufs[k]) <= offset {
			break
		}
		// Whole packets only: a super-packet is read in full even when
		// the buffers left are MTU-sized, and one that does not fit them
		// waits in spare for the next call, which starts at bufs[0].
		n, err := unix.Read(q.fd, q.spare)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break // EAGAIN; a real error shows again on the next Read
		}
		m, err := splitRead(q.spare[:n], bufs[k:], sizes[k:], offset)
		if err != nil {
			// Too many segments for the buffers left, or malformed:
			// the next call splits it into all its buffers or reports
			// the drop. splitGSO changed nothing.
			q.pending = n
			break
		}
		k += m
	}
	return k, nil
}

// splitRead splits the virtio-net header and packet b, as read from the
// TUN, into bufs[i][offset:]. Its errors are bare, so that a packet kept
// for the next call costs no allocation; dropped wraps them.
func splitRead(b []byte, bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(b) < vnetHdrLen {
		return 0, errShortVnet
	}
	var h vnetHdr
	h.decode(b)
	return splitGSO(&h, b[vnetHdrLen:], bufs, sizes, offset)
}

// dropped is the error of Read for the packet b that splitRead refused.
func dropped(b []byte, err error) error {
	if len(b) < vnetHdrLen {
		return fmt.Errorf("TUN read: %w: %w", ErrDropped, err)
	}
	var h vnetHdr
	h.decode(b)
	return fmt.Errorf("TUN read (gso type %d, size %d, %d bytes): %w: %w", h.gsoType, h.gsoSize, len(b)-vnetHdrLen, ErrDropped, err)
}

// readPlain reads packets until the batch is full or the fd runs dry; it
// sleeps only while nothing was read yet.
func (q *queue) readPlain(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := q.read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	k := 1
	for k < min(len(bufs), len(sizes)) {
		n, err := unix.Read(q.fd, bufs[k][offset:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			break // EAGAIN; a real error shows again on the next Read
		}
		sizes[k] = n
		k++
	}
	return k, nil
}

func (q *queue) Write(bufs [][]byte, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed.Load() {
		return 0, os.ErrClosed
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	var first error
	written := 0
	if !q.off.VnetHdr {
		for _, b := range bufs {
			if len(b) <= offset {
				first = firstErr(first, errEmpty)
				continue
			}
			q.iovs[0].Base = &b[offset]
			q.iovs[0].SetLen(len(b) - offset)
			if err := q.writev(1); err != nil {
				first = firstErr(first, err)
				continue
			}
			written++
		}
		return written, first
	}
	q.gro.group(bufs, offset)
	for i := range q.gro.items {
		it := &q.gro.items[i]
		var h vnetHdr
		finish(it, bufs, offset, q.trust, &h)
		h.encode(q.hdr[:])
		q.iovs[0].Base = &q.hdr[0]
		q.iovs[0].SetLen(vnetHdrLen)
		head := bufs[it.head][offset:]
		if len(head) == 0 {
			first = firstErr(first, errEmpty)
			continue
		}
		q.iovs[1].Base = &head[0]
		niov := 2
		if it.count == 1 {
			q.iovs[1].SetLen(len(head))
		} else {
			q.iovs[1].SetLen(int(it.hl + it.gsoSize))
			for m := q.gro.next[it.head]; ; m = q.gro.next[m] {
				p := bufs[m][offset+int(it.hl):]
				q.iovs[niov].Base = &p[0]
				q.iovs[niov].SetLen(len(p))
				niov++
				if m == it.tail {
					break
				}
			}
		}
		if err := q.writev(niov); err != nil {
			first = firstErr(first, err)
			continue
		}
		written += int(it.count)
	}
	return written, first
}

var errEmpty = errors.New("TUN write: empty packet")

// firstErr keeps the first error of a batch.
func firstErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// writev writes q.iovs[:n] as one packet.
func (q *queue) writev(n int) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(q.fd), uintptr(unsafe.Pointer(&q.iovs[0])), uintptr(n))
		switch e {
		case 0:
			return nil
		case unix.EINTR:
		case unix.EAGAIN:
			if err := q.wait(q.wpoll); err != nil {
				return err
			}
		default:
			return os.NewSyscallError("write", e)
		}
	}
}
