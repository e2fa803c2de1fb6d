package pcap

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

var (
	hostA  = net.IP{192, 0, 2, 1}
	hostB  = net.IP{192, 0, 2, 2}
	innerA = net.IP{198, 18, 32, 2}
	innerB = net.IP{198, 18, 75, 2}
	macA   = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macB   = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// icmpEcho is an inner IPv4 ICMP echo request.
func icmpEcho(t testing.TB, seq uint16) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 63, Protocol: layers.IPProtocolICMPv4, SrcIP: innerA, DstIP: innerB}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: seq}
	return serialize(t, ip, icmp, gopacket.Payload("flannel-go pcap test"))
}

// outerIPUDP is the outer IPv4/UDP of a datagram carrying payload.
func outerIPUDP(t testing.TB, srcPort, dstPort int, payload []byte) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: hostA, DstIP: hostB}
	udp := &layers.UDP{SrcPort: layers.UDPPort(srcPort), DstPort: layers.UDPPort(dstPort)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, udp, gopacket.Payload(payload))
}

func ether(t testing.TB, typ layers.EthernetType, payload []byte) []byte {
	return serialize(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: typ}, gopacket.Payload(payload))
}

type frame struct {
	ts   time.Time
	data []byte
	orig int // 0: len(data)
}

// writePcap writes a classic pcap with the given link type.
func writePcap(t testing.TB, lt layers.LinkType, nanos bool, frames []frame) []byte {
	t.Helper()
	var b bytes.Buffer
	w := pcapgo.NewWriter(&b)
	if nanos {
		w = pcapgo.NewWriterNanos(&b)
	}
	if err := w.WriteFileHeader(65535, lt); err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		orig := f.orig
		if orig == 0 {
			orig = len(f.data)
		}
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: f.ts, CaptureLength: len(f.data), Length: orig}, f.data); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// setLinkType patches the file header's link type, for values that do not
// fit gopacket's uint8 LinkType.
func setLinkType(file []byte, lt uint32) []byte {
	binary.LittleEndian.PutUint32(file[20:24], lt)
	return file
}

type packet struct {
	ci   gopacket.CaptureInfo
	data []byte
}

func readPcap(t testing.TB, b []byte) (*pcapgo.Reader, []packet) {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("output is not a pcap file: %v", err)
	}
	var ps []packet
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		ps = append(ps, packet{ci, data})
	}
	return r, ps
}

func TestUnwrapEthernet(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 123456000, time.UTC)
	echo1, echo2 := icmpEcho(t, 1), icmpEcho(t, 2)
	tagged := serialize(t,
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: 42, Type: layers.EthernetTypeIPv4},
		gopacket.Payload(outerIPUDP(t, 8285, 8285, echo2)))
	frag := outerIPUDP(t, 8285, 8285, echo1)
	binary.BigEndian.PutUint16(frag[6:8], 0x2000) // more fragments
	frames := []frame{
		{t0, ether(t, layers.EthernetTypeIPv4, outerIPUDP(t, 8285, 8285, echo1)), 0},
		{t0.Add(time.Millisecond), ether(t, layers.EthernetTypeIPv4, outerIPUDP(t, 40000, 53, []byte("dns"))), 0},
		{t0.Add(2 * time.Millisecond), ether(t, layers.EthernetTypeARP, make([]byte, 28)), 0},
		{t0.Add(3 * time.Millisecond), ether(t, layers.EthernetTypeIPv4, frag), 0},
		{t0.Add(4 * time.Millisecond), tagged, 0},
	}
	var out bytes.Buffer
	st, err := Unwrap(bytes.NewReader(writePcap(t, layers.LinkTypeEthernet, false, frames)), &out, 8285)
	if err != nil {
		t.Fatal(err)
	}
	want := UnwrapStats{Frames: 5, Packets: 2, Skipped: 2, Fragments: 1}
	if st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	r, ps := readPcap(t, out.Bytes())
	if r.LinkType() != layers.LinkTypeRaw {
		t.Errorf("link type %v, want raw (101)", r.LinkType())
	}
	if len(ps) != 2 {
		t.Fatalf("got %d packets, want 2", len(ps))
	}
	for i, w := range []struct {
		ts   time.Time
		data []byte
	}{{t0, echo1}, {t0.Add(4 * time.Millisecond), echo2}} {
		if !bytes.Equal(ps[i].data, w.data) {
			t.Errorf("packet %d = %x, want %x", i, ps[i].data, w.data)
		}
		if !ps[i].ci.Timestamp.Equal(w.ts) {
			t.Errorf("packet %d at %v, want %v", i, ps[i].ci.Timestamp, w.ts)
		}
		if ps[i].ci.Length != len(w.data) {
			t.Errorf("packet %d original length %d, want %d", i, ps[i].ci.Length, len(w.data))
		}
	}
	// The inner packet decodes as IPv4/ICMP echo.
	p := gopacket.NewPacket(ps[0].data, layers.LayerTypeIPv4, gopacket.Default)
	icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if !ok || icmp.TypeCode.Type() != layers.ICMPv4TypeEchoRequest || icmp.Seq != 1 {
		t.Errorf("inner packet does not decode as ICMP echo seq 1: %v", p)
	}
}

func TestUnwrapLinkTypes(t *testing.T) {
	echo := icmpEcho(t, 9)
	outer := outerIPUDP(t, 8285, 8285, echo)
	sll := make([]byte, 16)
	binary.BigEndian.PutUint16(sll[14:16], uint16(layers.EthernetTypeIPv4))
	sll2 := make([]byte, 20)
	binary.BigEndian.PutUint16(sll2[0:2], uint16(layers.EthernetTypeIPv4))
	ts := time.Date(2024, 5, 1, 12, 0, 0, 987654321, time.UTC)
	for _, tc := range []struct {
		name  string
		lt    uint32
		frame []byte
	}{
		{"linux-sll", 113, append(sll, outer...)},
		{"linux-sll2", 276, append(sll2, outer...)},
		{"raw", 101, outer},
		{"ipv4", 228, outer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := setLinkType(writePcap(t, layers.LinkTypeEthernet, true, []frame{{ts, tc.frame, 0}}), tc.lt)
			var out bytes.Buffer
			st, err := Unwrap(bytes.NewReader(in), &out, 8285)
			if err != nil {
				t.Fatal(err)
			}
			if st.Packets != 1 {
				t.Fatalf("stats %+v, want one packet", st)
			}
			_, ps := readPcap(t, out.Bytes())
			if len(ps) != 1 || !bytes.Equal(ps[0].data, echo) || !ps[0].ci.Timestamp.Equal(ts) {
				t.Errorf("got %+v, want the echo at %v (nanosecond resolution kept)", ps, ts)
			}
		})
	}
}

func TestUnwrapTruncatedCapture(t *testing.T) {
	echo := icmpEcho(t, 3)
	full := ether(t, layers.EthernetTypeIPv4, outerIPUDP(t, 8285, 8285, echo))
	cut := 14 + 20 + 8 + 20 // inner IPv4 header only
	in := writePcap(t, layers.LinkTypeEthernet, false, []frame{{time.Unix(1, 0), full[:cut], len(full)}})
	var out bytes.Buffer
	if _, err := Unwrap(bytes.NewReader(in), &out, 8285); err != nil {
		t.Fatal(err)
	}
	_, ps := readPcap(t, out.Bytes())
	if len(ps) != 1 {
		t.Fatalf("got %d packets, want 1", len(ps))
	}
	if ps[0].ci.CaptureLength != 20 || ps[0].ci.Length != len(echo) || !bytes.Equal(ps[0].data, echo[:20]) {
		t.Errorf("got caplen %d len %d, want 20 and %d", ps[0].ci.CaptureLength, ps[0].ci.Length, len(echo))
	}
}

func TestUnwrapPort(t *testing.T) {
	echo := icmpEcho(t, 4)
	in := writePcap(t, layers.LinkTypeEthernet, false, []frame{
		{time.Unix(1, 0), ether(t, layers.EthernetTypeIPv4, outerIPUDP(t, 9000, 9000, echo)), 0},
		{time.Unix(2, 0), ether(t, layers.EthernetTypeIPv4, outerIPUDP(t, 8285, 8285, echo)), 0},
	})
	var out bytes.Buffer
	st, err := Unwrap(bytes.NewReader(in), &out, 9000)
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != 1 || st.Skipped != 1 {
		t.Errorf("stats %+v, want 1 packet and 1 skipped", st)
	}
}

func TestUnwrapErrors(t *testing.T) {
	valid := writePcap(t, layers.LinkTypeEthernet, false, nil)
	for _, tc := range []struct {
		name, want string
		in         []byte
		port       int
	}{
		{"empty", "read pcap header", nil, 8285},
		{"pcapng", "pcapng", append([]byte{0x0a, 0x0d, 0x0d, 0x0a}, make([]byte, 28)...), 8285},
		{"text", "not a pcap file", []byte("this is not a capture, just some text"), 8285},
		{"link type", "link type 105 is not supported", setLinkType(bytes.Clone(valid), 105), 8285},
		{"port", "port 0", valid, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Unwrap(bytes.NewReader(tc.in), &bytes.Buffer{}, tc.port)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// A record larger than any snap length fails cleanly instead of
	// allocating what the file claims.
	huge := bytes.Clone(valid)
	binary.LittleEndian.PutUint32(huge[16:20], 0xffffffff)
	rec := make([]byte, 16)
	binary.LittleEndian.PutUint32(rec[8:12], 0xfffffff0)
	binary.LittleEndian.PutUint32(rec[12:16], 0xfffffff0)
	if _, err := Unwrap(bytes.NewReader(append(huge, rec...)), &bytes.Buffer{}, 8285); err == nil || !strings.Contains(err.Error(), "read frame 1") {
		t.Errorf("error %v, want a read error for frame 1", err)
	}
}

// TestUnwrapReadByTcpdump checks that tcpdump itself decodes the output as
// the inner IPv4 packets.
func TestUnwrapReadByTcpdump(t *testing.T) {
	testbed.RequireTool(t, "tcpdump")
	in := writePcap(t, layers.LinkTypeEthernet, false, []frame{
		{time.Unix(1700000000, 0), ether(t, layers.EthernetTypeIPv4, outerIPUDP(t, 8285, 8285, icmpEcho(t, 5))), 0},
	})
	var out bytes.Buffer
	if _, err := Unwrap(bytes.NewReader(in), &out, 8285); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "inner.pcap")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := tcpdumpRead(t, path)
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, got)
	}
	if !strings.Contains(got, "198.18.32.2 > 198.18.75.2: ICMP echo request") || !strings.Contains(got, "seq 5") {
		t.Errorf("tcpdump output %q does not show the inner echo request", got)
	}
}
