package kubetest

import (
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// ServeIn makes the server reachable inside host's network namespace at
// the same address, 127.0.0.1:Port (the serving certificate's), so that
// the API server itself listens on this namespace's loopback only: a
// listener in the host's namespace copies each connection to and from the
// server. While the server is down (Restart) a connection is accepted and
// closed at once, as a client sees a restarting API server behind a load
// balancer. It stops when the test ends.
func (s *Server) ServeIn(t testing.TB, h *testbed.Host) {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(s.Port)
	var l net.Listener
	if err := h.Do(func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("kubetest: listen on %s in %s: %v", addr, h.Name, err)
	}
	p := &proxy{conns: map[net.Conn]bool{}}
	go p.serve(l, addr)
	t.Cleanup(func() {
		l.Close()
		p.closeAll()
	})
}

// proxy tracks its connections so that the test's end closes them.
type proxy struct {
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func (p *proxy) serve(l net.Listener, upstream string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go p.pipe(c, upstream)
	}
}

// pipe copies c to a new connection to upstream and back until either
// side closes.
func (p *proxy) pipe(c net.Conn, upstream string) {
	// The dial runs on a thread in this process's own namespace: testbed's
	// Do locks the threads it moves.
	u, err := net.DialTimeout("tcp", upstream, 5*time.Second)
	if err != nil || !p.track(c, u) {
		c.Close()
		if u != nil {
			u.Close()
		}
		return
	}
	defer p.untrack(c, u)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
}

func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

func (p *proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
}
