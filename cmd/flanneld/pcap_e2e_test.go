//go:build linux

package main

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/flannel-go/flannel-go/internal/cluster"
)

// TestPcapCapture pings from host 1's container to host 2's while fetching
// /debug/pcap from host 1, and looks for the echo request (out) and the
// reply (in) in the pcap.
func TestPcapCapture(t *testing.T) {
	checkPcapPing(t, startCluster(t, 2, "--debug-pcap", "--fast-path=off"))
}

// checkPcapPing pings from host 1's container to host 2's while fetching
// /debug/pcap from host 1 and looks for both echo packets in the pcap.
func checkPcapPing(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := t.Context()
	src, dst := c.Nodes[0].Container, c.Nodes[1].Container
	if out, err := ping(ctx, src, dst.Addr, "-W", "5"); err != nil {
		t.Fatalf("overlay not up: %v\n%s", err, out)
	}

	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()
	go func() {
		for pingCtx.Err() == nil {
			ping(pingCtx, src, dst.Addr)
		}
	}()
	code, body, err := c.Nodes[0].HTTPGet(ctx, "/debug/pcap?seconds=2&dir=both")
	stopPing()
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /debug/pcap: %d %v: %s", code, err, body)
	}
	r, err := pcapgo.NewReader(bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("response is not a pcap: %v", err)
	}
	if r.LinkType() != layers.LinkTypeRaw {
		t.Errorf("link type %v, want raw", r.LinkType())
	}
	var request, reply bool
	start := time.Now().Add(-time.Minute)
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		if ci.Timestamp.Before(start) {
			t.Errorf("packet timestamp %v is not the capture time", ci.Timestamp)
		}
		p := gopacket.NewPacket(data, layers.LayerTypeIPv4, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ip == nil || icmp == nil {
			continue
		}
		switch {
		case icmp.TypeCode.Type() == layers.ICMPv4TypeEchoRequest && ip.SrcIP.Equal(src.Addr.AsSlice()) && ip.DstIP.Equal(dst.Addr.AsSlice()):
			request = true
		case icmp.TypeCode.Type() == layers.ICMPv4TypeEchoReply && ip.SrcIP.Equal(dst.Addr.AsSlice()) && ip.DstIP.Equal(src.Addr.AsSlice()):
			reply = true
		}
	}
	if !request || !reply {
		t.Errorf("pcap of %d bytes: echo request seen %v, reply seen %v", len(body), request, reply)
	}
}
