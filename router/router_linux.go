package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/flannel-go/flannel-go/tun"
	"github.com/flannel-go/flannel-go/udp"
)

// New creates a router with one worker per TUN queue, each with its own
// UDP connection bound to LocalAddr:Port with SO_REUSEPORT, so that the
// kernel spreads peers over the workers. The router takes over the queues:
// Run closes them when it returns.
//
// New probes the offloads: the TUN's come from the queues, UDP GSO and GRO
// from the connections.
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
		c, err := udp.Listen(udp.Config{
			Addr:            netip.AddrPortFrom(r.cfg.LocalAddr, uint16(r.cfg.Port)),
			Buffer:          r.cfg.SocketBuffer,
			DisableOffloads: r.cfg.DisableOffloads,
			// Receive timestamps give the socket queue's delay to the AQM.
			Timestamps: r.cfg.AQMTarget > 0,
			BusyPoll:   r.cfg.BusyPoll,
			ReadBatch:  len(w.inMsgs),
			WriteBatch: len(w.tunBufs),
			Logger:     r.log.With("worker", i),
		})
		if err != nil {
			r.closeConns()
			return nil, fmt.Errorf("failed to start listening on UDP socket: %w", err)
		}
		w.conn = c
		r.workers = append(r.workers, w)
		o := c.Offloads()
		r.offloads.UDPGSO = r.offloads.UDPGSO && o.GSO
		r.offloads.UDPGRO = r.offloads.UDPGRO && o.GRO
	}
	if r.probe != nil {
		if err := r.openProbeSocket(); err != nil {
			r.closeConns()
			return nil, err
		}
	}
	return r, nil
}

// openProbeSocket opens the socket the IPv6 probes and their answers leave
// from: an ephemeral port on LocalAddr, so that a peer's sender check
// knows the source. Probes and answers go to the peers' cluster port,
// which the workers' sockets receive.
func (r *Router) openProbeSocket() error {
	network := "udp4"
	if r.cfg.LocalAddr.Is6() {
		network = "udp6"
	}
	sock, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.cfg.LocalAddr, 0)))
	if err != nil {
		return fmt.Errorf("IPv6 probe socket on %s: %w", r.cfg.LocalAddr, err)
	}
	r.probeSock = sock
	r.sendProbe = func(b []byte, to netip.AddrPort) error {
		_, err := sock.WriteToUDPAddrPort(b, to)
		return err
	}
	return nil
}

// gsoInUse reports whether every worker's connection still uses UDP GSO:
// one may have turned it off at run time.
func (r *Router) gsoInUse() bool {
	for _, w := range r.workers {
		if !w.conn.Offloads().GSO {
			return false
		}
	}
	return true
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
		"ipv4", r.cfg.Network.IsValid(), "ipv6", r.cfg.IPv6Network.IsValid(),
		"port", r.cfg.Port, "mtu", r.cfg.MTU, "accept_unknown_peers", r.cfg.AcceptUnknownPeers,
		"tun_vnet_hdr", o.TUNVnetHdr, "tun_tso", o.TUNTSO, "tun_uso", o.TUNUSO,
		"udp_gso", o.UDPGSO, "udp_gro", o.UDPGRO, "gomaxprocs", runtime.GOMAXPROCS(0))

	if r.probe != nil {
		r.loops.Go(func() { r.probe.Run(ctx.Done(), r.probeWake, r.ipv6Targets) })
	}
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

// Close stops the workers, waits for them and closes the connections and
// the TUN queues. Run calls it on the way out; call it directly only for a
// router that is never run.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		var errs []error
		for _, w := range r.workers {
			if err := w.conn.Close(); err != nil {
				errs = append(errs, fmt.Errorf("worker %d: %w", w.id, err))
			}
			if err := w.q.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
				errs = append(errs, err)
			}
		}
		r.loops.Wait()
		if r.probeSock != nil {
			if err := r.probeSock.Close(); err != nil {
				errs = append(errs, fmt.Errorf("IPv6 probe socket: %w", err))
			}
		}
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// closeConns closes the connections of a router New gives up on.
func (r *Router) closeConns() {
	for _, w := range r.workers {
		w.conn.Close()
	}
	if r.probeSock != nil {
		r.probeSock.Close()
	}
}
