package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/flannel-go/flannel-go/tun"
	"golang.org/x/sys/unix"
)

// New creates a router with one worker per TUN queue, each with its own
// UDP socket bound to LocalAddr:Port with SO_REUSEPORT, so that the kernel
// spreads peers over the workers. The router takes over the queues: Run
// closes them when it returns.
func New(cfg Config, queues []tun.Queue) (*Router, error) {
	r, err := newRouter(cfg)
	if err != nil {
		return nil, err
	}
	if len(queues) == 0 {
		return nil, errors.New("router: no TUN queues")
	}
	for i, q := range queues {
		w := newWorker(r, i, q)
		conn, err := listen(r.cfg)
		if err != nil {
			r.closeSockets()
			return nil, fmt.Errorf("failed to start listening on UDP socket: %w", err)
		}
		w.conn = conn
		if w.rc, err = conn.SyscallConn(); err != nil {
			conn.Close()
			r.closeSockets()
			return nil, fmt.Errorf("UDP socket %s: %w", conn.LocalAddr(), err)
		}
		r.workers = append(r.workers, w)
	}
	return r, nil
}

func listen(cfg Config) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = setSockopts(int(fd), cfg.SocketBuffer) }); err != nil {
			return err
		}
		return serr
	}}
	addr := netip.AddrPortFrom(cfg.LocalAddr, uint16(cfg.Port))
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// setSockopts joins the port's SO_REUSEPORT group and sizes the buffers,
// forcing past the sysctl limits when we may (CAP_NET_ADMIN).
func setSockopts(fd, size int) error {
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
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.force, size) == nil {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.plain, size); err != nil {
			return fmt.Errorf("set %s buffer to %d bytes: %w", o.what, size, err)
		}
	}
	return nil
}

// Run starts the workers and returns when ctx is done and every worker has
// exited, or after the first worker fails (its error is returned). Either
// way it closes the sockets and the TUN queues. A Router runs once.
func (r *Router) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("router: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.log.Info("Data plane running", "workers", len(r.workers), "local", r.cfg.LocalAddr,
		"port", r.cfg.Port, "mtu", r.cfg.MTU, "accept_unknown_peers", r.cfg.AcceptUnknownPeers)

	errc := make(chan error, 2*len(r.workers))
	var wg sync.WaitGroup
	for _, w := range r.workers {
		for _, loop := range [...]func() error{w.runEgress, w.runIngress} {
			wg.Go(func() {
				err := loop()
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, errStopped) {
					err = fmt.Errorf("worker %d: TUN queue or socket closed while running", w.id)
				}
				errc <- err
				cancel()
			})
		}
	}
	<-ctx.Done()
	if err := r.Close(); err != nil {
		r.log.Warn("Closing the data plane", "error", err)
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// Close closes the sockets and the TUN queues. Run calls it on the way
// out; call it directly only for a router that is never run.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		var errs []error
		errs = append(errs, r.closeSockets())
		for _, w := range r.workers {
			if err := w.q.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
				errs = append(errs, err)
			}
		}
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

func (r *Router) closeSockets() error {
	var errs []error
	for _, w := range r.workers {
		if w.conn != nil {
			if err := w.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func wrapf(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, err)...)
}
