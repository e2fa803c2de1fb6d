package udp

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// Two hosts with both underlays on one veth link (MTU 1500): each host
// has an IPv4 and an IPv6 Conn on the same port, and GSO trains cross the
// wire both ways on both families, arriving as GRO trains from the peer's
// plain address. A train of datagrams larger than the path MTU is
// refused by the kernel and resent one datagram at a time, fragmented.
func TestDualUnderlay(t *testing.T) {
	bed := testbed.NewT(t, testbed.Options{Hosts: 2, Direct: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const port = 8285
	v6 := []netip.Addr{netip.MustParseAddr("2001:db8:5::1"), netip.MustParseAddr("2001:db8:5::2")}
	conns := make([][2]Conn, 2) // per host: IPv4, IPv6
	for i, h := range bed.Hosts {
		// nodad: the address is usable at once, no sleep needed.
		if _, err := h.Run(ctx, "ip", "-6", "addr", "add", v6[i].String()+"/64", "dev", h.Iface, "nodad"); err != nil {
			t.Fatal(err)
		}
		err := h.Do(func() error {
			for f, a := range []netip.Addr{h.Addr, v6[i]} {
				c, err := Listen(Config{Addr: netip.AddrPortFrom(a, port), Timestamps: true})
				if err != nil {
					return err
				}
				t.Cleanup(func() { c.Close() })
				closeAfter(t, c)
				conns[i][f] = c
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	addrs := [2][2]netip.Addr{{bed.Hosts[0].Addr, v6[0]}, {bed.Hosts[1].Addr, v6[1]}}
	for f, family := range []string{"ipv4", "ipv6"} {
		for from := range 2 {
			to := 1 - from
			src := netip.AddrPortFrom(addrs[from][f], port)
			dst := netip.AddrPortFrom(addrs[to][f], port)
			for _, size := range []int{1200, 2000} {
				t.Run(fmt.Sprintf("%s/%s->%s/%d", family, src, dst, size), func(t *testing.T) {
					c := conns[from][f].(*conn)
					if !c.Offloads().GSO || !conns[to][f].Offloads().GRO {
						t.Fatalf("offloads %+v, %+v", c.Offloads(), conns[to][f].Offloads())
					}
					segs := recordSends(c, 0)
					sent := datagrams(8, size)
					msgs := []Message{{Buffers: sent, Addr: dst}}
					if n, err := c.WriteBatch(msgs); n != 1 || err != nil || msgs[0].N != len(sent) {
						t.Fatalf("WriteBatch = %d, %v (N %d)", n, err, msgs[0].N)
					}
					// 1200 bytes fit the path: one train. 2000 do not:
					// the kernel refuses the train, and each datagram
					// goes alone, fragmented.
					want := []int{8}
					if size > 1500 {
						want = []int{8, 1, 1, 1, 1, 1, 1, 1, 1}
					}
					if !slices.Equal(*segs, want) {
						t.Errorf("headers %v, want %v", *segs, want)
					}
					got := readDatagrams(t, conns[to][f], len(sent), func(m *Message) {
						if m.Addr != src || m.Truncated {
							t.Errorf("message from %s (truncated %v), want from %s", m.Addr, m.Truncated, src)
						}
					})
					if !slices.EqualFunc(got, sent, bytes.Equal) {
						t.Errorf("received datagrams differ from those sent")
					}
				})
			}
		}
	}
}
