package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultBatchSize is the number of packets a plain queue reads per Read
// call at most. Each packet still costs one read(2); the batch amortises the
// netpoller and lets the router send many datagrams with one sendmmsg.
const DefaultBatchSize = 32

// Device is an open multi-queue TUN device.
type Device struct {
	// Name is the interface name, e.g. "flannel0".
	Name string
	// Queues holds one queue per worker.
	Queues []Queue

	closeOnce sync.Once
	closeErr  error
}

// Open creates the TUN device name (IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE,
// not persistent) with the given number of queues. The device disappears
// when all its queues are closed.
//
// An existing interface of that name is refused: attaching queues to a TUN
// another process owns would silently share its traffic, and water leaks a
// file descriptor and clears the persist flag of a device it fails to attach
// to.
func Open(name string, queues int) (*Device, error) {
	if name == "" {
		return nil, errors.New("open TUN device: empty interface name")
	}
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open TUN device %q: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	if queues < 1 {
		return nil, fmt.Errorf("open TUN device %s: %d queues, need at least 1", name, queues)
	}
	if l, err := netlink.LinkByName(name); err == nil {
		return nil, fmt.Errorf("open TUN device %s: an interface of that name (type %s) already exists; delete it (ip link del %s) or choose another name",
			name, l.Type(), name)
	}
	d := &Device{Name: name}
	for i := range queues {
		ifce, err := water.New(water.Config{
			DeviceType: water.TUN,
			PlatformSpecificParams: water.PlatformSpecificParams{
				Name:       name,
				MultiQueue: true,
			},
		})
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("open TUN device %s queue %d: %w", name, i, err)
		}
		q, err := newFileQueue(ifce)
		if err != nil {
			ifce.Close()
			d.Close()
			return nil, fmt.Errorf("open TUN device %s queue %d: %w", name, i, err)
		}
		d.Queues = append(d.Queues, q)
	}
	return d, nil
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
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("failed to set MTU %d on %s: %w", mtu, d.Name, err)
	}
	if txQueueLen > 0 {
		if err := netlink.LinkSetTxQLen(link, txQueueLen); err != nil {
			return fmt.Errorf("failed to set txqueuelen %d on %s: %w", txQueueLen, d.Name, err)
		}
	}
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
	link, err := netlink.LinkByName(d.Name)
	if err != nil {
		return fmt.Errorf("remove address %s from %s: %w", addr, d.Name, err)
	}
	if err := netlink.AddrDel(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 32))}); err != nil {
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

func ipNet(p netip.Prefix) *net.IPNet {
	a := p.Addr().As4()
	return &net.IPNet{IP: net.IP(a[:]), Mask: net.CIDRMask(p.Bits(), 32)}
}

// fileQueue is a plain TUN queue: one read(2) or write(2) per packet on the
// non-blocking fd, parked on the netpoller when the fd has nothing to give,
// so that Close unblocks a waiting Read. File.Fd is never called because it
// would switch the fd to blocking mode.
type fileQueue struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool

	// Read state, used by the single reading goroutine. readFn is the bound
	// method value, made once so that Read does not allocate a closure.
	readFn func(fd uintptr) bool
	rBufs  [][]byte
	rSizes []int
	rOff   int
	rN     int
	rErr   error

	wMu     sync.Mutex
	writeFn func(fd uintptr) bool
	wBufs   [][]byte
	wOff    int
	wN      int
	wErr    error
}

func newFileQueue(ifce *water.Interface) (*fileQueue, error) {
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		return nil, fmt.Errorf("water returned %T, want *os.File", ifce.ReadWriteCloser)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	q := &fileQueue{f: f, rc: rc}
	q.readFn = q.readLoop
	q.writeFn = q.writeLoop
	return q, nil
}

func (q *fileQueue) BatchSize() int { return DefaultBatchSize }

func (q *fileQueue) Close() error {
	q.closed.Store(true)
	return q.f.Close()
}

// pollErr reports a failure of the raw connection, which after Close is the
// poller's "use of closed file", as os.ErrClosed so callers can tell a
// shutdown from a fault.
func (q *fileQueue) pollErr(err error) error {
	if q.closed.Load() {
		return os.ErrClosed
	}
	return err
}

func (q *fileQueue) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	q.rBufs, q.rSizes, q.rOff, q.rN, q.rErr = bufs, sizes, offset, 0, nil
	err := q.rc.Read(q.readFn)
	n, rerr := q.rN, q.rErr
	q.rBufs, q.rSizes = nil, nil
	if n > 0 {
		return n, nil
	}
	if err != nil {
		return 0, q.pollErr(err)
	}
	return 0, rerr
}

// readLoop reads packets until the batch is full or the fd runs dry. It
// returns false (park on the netpoller) only when nothing was read yet.
func (q *fileQueue) readLoop(fd uintptr) bool {
	limit := min(len(q.rBufs), len(q.rSizes))
	for q.rN < limit {
		n, err := unix.Read(int(fd), q.rBufs[q.rN][q.rOff:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return q.rN > 0
		case err != nil:
			if q.rN == 0 {
				q.rErr = os.NewSyscallError("read", err)
			}
			return true
		}
		q.rSizes[q.rN] = n
		q.rN++
	}
	return true
}

func (q *fileQueue) Write(bufs [][]byte, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	q.wMu.Lock()
	defer q.wMu.Unlock()
	q.wBufs, q.wOff, q.wN, q.wErr = bufs, offset, 0, nil
	err := q.rc.Write(q.writeFn)
	n, werr := q.wN, q.wErr
	q.wBufs = nil
	if werr != nil {
		return n, werr
	}
	if err != nil {
		return n, q.pollErr(err)
	}
	return n, nil
}

// writeLoop writes one packet per write(2); EAGAIN parks until the queue
// has room again, any other error ends the call at the failing packet.
func (q *fileQueue) writeLoop(fd uintptr) bool {
	for q.wN < len(q.wBufs) {
		_, err := unix.Write(int(fd), q.wBufs[q.wN][q.wOff:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			q.wErr = os.NewSyscallError("write", err)
			return true
		}
		q.wN++
	}
	return true
}
