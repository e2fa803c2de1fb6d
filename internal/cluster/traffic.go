package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Endpoint is anything that can run code inside its network namespace: a
// testbed host or container.
type Endpoint interface {
	Do(fn func() error) error
}

// TransferResult describes one TCP transfer.
type TransferResult struct {
	Bytes    int64
	Duration time.Duration
	SentSum  [32]byte
	RecvSum  [32]byte
}

// Mbps is the transfer's goodput in Mbit/s.
func (r TransferResult) Mbps() float64 {
	return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e6
}

// Match reports whether both ends saw the same bytes.
func (r TransferResult) Match() bool { return r.SentSum == r.RecvSum }

// Transfer moves n pseudo-random bytes over one TCP connection from src to
// dst (listening on dstAddr:port, IPv4 or IPv6), hashing them with SHA-256
// at both ends.
func Transfer(ctx context.Context, src, dst Endpoint, dstAddr netip.Addr, port int, n int64) (TransferResult, error) {
	var ln net.Listener
	addr := net.JoinHostPort(dstAddr.String(), strconv.Itoa(port))
	if err := dst.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return TransferResult{}, fmt.Errorf("listen on %s: %w", addr, err)
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	type recvResult struct {
		sum [32]byte
		n   int64
		err error
	}
	recvc := make(chan recvResult, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			recvc <- recvResult{err: err}
			return
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		h := sha256.New()
		got, err := io.Copy(h, conn)
		var r recvResult
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = got, err
		recvc <- r
	}()

	var conn net.Conn
	if err := src.Do(func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	}); err != nil {
		return TransferResult{}, fmt.Errorf("connect to %s: %w", addr, err)
	}
	stopConn := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopConn()

	start := time.Now()
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 128<<10)
	var sent int64
	for sent < n {
		chunk := buf[:min(int64(len(buf)), n-sent)]
		rng.Read(chunk)
		h.Write(chunk)
		if _, err := conn.Write(chunk); err != nil {
			conn.Close()
			return TransferResult{}, fmt.Errorf("send to %s after %d bytes: %w", addr, sent, err)
		}
		sent += int64(len(chunk))
	}
	conn.(*net.TCPConn).CloseWrite()
	r := <-recvc
	conn.Close()
	res := TransferResult{Bytes: r.n, Duration: time.Since(start)}
	copy(res.SentSum[:], h.Sum(nil))
	res.RecvSum = r.sum
	if r.err != nil {
		return res, fmt.Errorf("receive on %s: %w", addr, r.err)
	}
	if r.n != n {
		return res, fmt.Errorf("received %d of %d bytes", r.n, n)
	}
	return res, nil
}

// ErrNoReply is returned by UDPReach when nothing arrived in time.
var ErrNoReply = errors.New("no reply")

// UDPReach sends a datagram from src to dst (dstAddr:port), repeating until
// dst receives it or timeout passes; it returns the sender address as dst
// saw it.
func UDPReach(ctx context.Context, src, dst Endpoint, dstAddr netip.Addr, port int, payload []byte, timeout time.Duration) (netip.AddrPort, error) {
	var pc net.PacketConn
	addr := net.JoinHostPort(dstAddr.String(), strconv.Itoa(port))
	if err := dst.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		return netip.AddrPort{}, err
	}
	defer pc.Close()
	var sc net.Conn
	if err := src.Do(func() (err error) {
		sc, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		return netip.AddrPort{}, err
	}
	defer sc.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65535)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		sc.Write(payload)
		pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			continue
		}
		if bytes.Equal(buf[:n], payload) {
			return from.(*net.UDPAddr).AddrPort(), nil
		}
	}
	return netip.AddrPort{}, ErrNoReply
}
