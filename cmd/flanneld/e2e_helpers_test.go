//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
)

func clientv3WithPrefix() []clientv3.OpOption { return []clientv3.OpOption{clientv3.WithPrefix()} }

// metricValue scrapes a node's /metrics and returns the sample named by
// series (name with labels, exactly as exposed), or 0 when absent.
func metricValue(t *testing.T, n *cluster.Node, series string) float64 {
	t.Helper()
	code, body, err := n.HTTPGet(context.Background(), "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics on %s: %d %v", n.Host.Name, code, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == series {
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return v
		}
	}
	return 0
}

// fastPathOn tells whether the node's kernel fast path runs
// (flannel_fast_path_enabled, whatever its attach and variant labels).
func fastPathOn(t *testing.T, n *cluster.Node) bool {
	t.Helper()
	attach, _ := fastPathInfo(t, n)
	return attach != ""
}

// fastPathInfo is the attach and variant labels of the node's running
// fast path, empty when none runs.
func fastPathInfo(t *testing.T, n *cluster.Node) (attach, variant string) {
	t.Helper()
	code, body, err := n.HTTPGet(context.Background(), "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics on %s: %d %v", n.Host.Name, code, err)
	}
	for line := range strings.Lines(body) {
		var a, v string
		if _, err := fmt.Sscanf(line, "flannel_fast_path_enabled{attach=%q,variant=%q} 1", &a, &v); err == nil {
			return a, v
		}
	}
	return "", ""
}

// udpPacket builds an inner IPv4/UDP packet with valid checksums.
func udpPacket(t *testing.T, src, dst netip.Addr, port int, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(port), DstPort: layers.UDPPort(port)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
