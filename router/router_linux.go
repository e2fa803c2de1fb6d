package router

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/flannel-go/flannel-go/tun"
	"golang.org/x/sys/unix"
)

// New creates a router with one worker per TUN queue, each with its own
// UDP socket bound to LocalAddr:Port with SO_REUSEPORT, so that the kernel
// spreads peers over the workers. The router takes over the queues: Run
// closes them when it returns.
//
// New probes the offloads: the TUN's come from the queues, UDP GSO
// (UDP_SEGMENT, Linux 4.18) and GRO (UDP_GRO, Linux 5.0) from the socket.
func New(cfg Config, queues []tun.Queue) (*Router, error) {
	r, err := newRouter(cfg)
	if err != nil {
		return nil, err
	}
	if len(queues) == 0 {
		return nil, errors.New("router: no TUN queues")
	}
	qo := queues[0].Offloads()
	r.offloads = Offloads{TUNVnetHdr: qo.VnetHdr, TUNTSO: qo.TSO, TUNUSO: qo.USO, UDPGSO: true, UDPGRO: true}
	for i, q := range queues {
		w := newWorker(r, i, q)
		r.workers = append(r.workers, w)
		s, err := listen(r.cfg)
		if err != nil {
			r.closeFDs()
			return nil, fmt.Errorf("failed to start listening on UDP socket: %w", err)
		}
		w.sock = s.fd
		r.offloads.UDPGSO = r.offloads.UDPGSO && s.gso
		r.offloads.UDPGRO = r.offloads.UDPGRO && s.gro
		if w.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			r.closeFDs()
			return nil, fmt.Errorf("router: eventfd: %w", err)
		}
		w.initPoll()
	}
	r.gso.Store(r.offloads.UDPGSO)
	return r, nil
}

type socket struct {
	fd       int
	gso, gro bool
}

// listen opens a non-blocking UDP socket on LocalAddr:Port. The workers
// drive it with raw syscalls and sleep in poll(2), never on the netpoller.
func listen(cfg Config) (socket, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return socket{}, fmt.Errorf("socket: %w", err)
	}
	s := socket{fd: fd}
	if err := setSockopts(fd, cfg.SocketBuffer); err != nil {
		unix.Close(fd)
		return socket{}, err
	}
	// Receive timestamps give the socket queue's delay to the AQM.
	if cfg.AQMTarget > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			unix.Close(fd)
			return socket{}, fmt.Errorf("set SO_TIMESTAMPNS: %w", err)
		}
	}
	if !cfg.DisableOffloads {
		_, err := unix.GetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT)
		s.gso = err == nil
		s.gro = unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1) == nil
	}
	sa := &unix.SockaddrInet4{Port: cfg.Port, Addr: cfg.LocalAddr.As4()}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return socket{}, fmt.Errorf("listen udp4 %s:%d: %w", cfg.LocalAddr, cfg.Port, err)
	}
	return s, nil
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
	o := r.Offloads()
	r.log.Info("Data plane running", "workers", len(r.workers), "local", r.cfg.LocalAddr,
		"port", r.cfg.Port, "mtu", r.cfg.MTU, "accept_unknown_peers", r.cfg.AcceptUnknownPeers,
		"tun_vnet_hdr", o.TUNVnetHdr, "tun_tso", o.TUNTSO, "tun_uso", o.TUNUSO,
		"udp_gso", o.UDPGSO, "udp_gro", o.UDPGRO, "gomaxprocs", runtime.GOMAXPROCS(0))

	errc := make(chan error, 2*len(r.workers))
	for _, w := range r.workers {
		for _, loop := range [...]func() error{w.runEgress, w.runIngress} {
			r.loops.Go(func() {
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
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// Close stops the workers, waits for them and closes the sockets and the
// TUN queues. Run calls it on the way out; call it directly only for a
// router that is never run.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		var errs []error
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		for _, w := range r.workers {
			if w.evfd >= 0 {
				if _, err := unix.Write(w.evfd, one[:]); err != nil {
					errs = append(errs, fmt.Errorf("wake worker %d: %w", w.id, err))
				}
			}
			if err := w.q.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
				errs = append(errs, err)
			}
		}
		// Only now may the descriptors go: no syscall can still use them.
		r.loops.Wait()
		errs = append(errs, r.closeFDs())
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

func (r *Router) closeFDs() error {
	var errs []error
	for _, w := range r.workers {
		if w.sock >= 0 {
			if err := unix.Close(w.sock); err != nil {
				errs = append(errs, fmt.Errorf("close UDP socket: %w", err))
			}
			w.sock = -1
		}
		if w.evfd >= 0 {
			unix.Close(w.evfd)
			w.evfd = -1
		}
	}
	return errors.Join(errs...)
}
