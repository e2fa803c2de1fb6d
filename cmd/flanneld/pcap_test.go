//go:build linux

package main

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/flannel-go/flannel-go/internal/doccmd"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// underlayCapture is a pcap file of one Ethernet frame from 192.0.2.1 to
// 192.0.2.2 on UDP port carrying an inner UDP packet from 198.18.32.2 to
// 198.18.75.2 (port 7000), as tcpdump -w writes it on an underlay.
func underlayCapture(t *testing.T, port int) (file, inner []byte, ts time.Time) {
	t.Helper()
	inner = udpPacket(t, netip.MustParseAddr("198.18.32.2"), netip.MustParseAddr("198.18.75.2"), 7000, []byte("hello"))
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: []byte{192, 0, 2, 1}, DstIP: []byte{192, 0, 2, 2}}
	udp := &layers.UDP{SrcPort: layers.UDPPort(port), DstPort: layers.UDPPort(port)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	eth := &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(inner)); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w := pcapgo.NewWriter(&b)
	w.WriteFileHeader(65535, layers.LinkTypeEthernet)
	ts = time.Unix(1700000000, 250000000)
	w.WritePacket(gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes())
	return b.Bytes(), inner, ts
}

func TestPcapUnwrapCommand(t *testing.T) {
	file, inner, ts := underlayCapture(t, 9000)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "underlay.pcap"), filepath.Join(dir, "inner.pcap")
	if err := os.WriteFile(in, file, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"flanneld", "pcap", "unwrap", "--port=9000", in, out}, noEnv, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "1 inner packets written") {
		t.Errorf("summary %q", stderr.String())
	}
	if info, err := os.Stat(out); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("capture file mode %v %v, want 0600 (it holds container traffic)", info.Mode(), err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, ci, err := r.ReadPacketData()
	if err != nil || !bytes.Equal(data, inner) || !ci.Timestamp.Equal(ts) {
		t.Errorf("got %x at %v (%v), want the inner packet at %v", data, ci.Timestamp, err, ts)
	}

	// Usage errors name what is wrong; a failed run leaves no output file.
	stderr.Reset()
	if code := run([]string{"flanneld", "pcap"}, noEnv, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "Usage: flanneld pcap unwrap") {
		t.Errorf("no subcommand: exit %d, %q", code, stderr.String())
	}
	stderr.Reset()
	bad := filepath.Join(dir, "bad.pcap")
	if code := run([]string{"flanneld", "pcap", "unwrap", out + ".missing", bad}, noEnv, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no such file") {
		t.Errorf("missing input: exit %d, %q", code, stderr.String())
	}
	if code := run([]string{"flanneld", "pcap", "unwrap", filepath.Join(dir, "underlay.pcap"), dir + "/no/such/dir/x.pcap"}, noEnv, &stdout, &stderr); code != 1 {
		t.Errorf("unwritable output: exit %d", code)
	}
	textIn := filepath.Join(dir, "text")
	os.WriteFile(textIn, []byte("not a capture at all, just text"), 0o644)
	if code := run([]string{"flanneld", "pcap", "unwrap", textIn, bad}, noEnv, &stdout, &stderr); code != 1 {
		t.Errorf("text input: exit %d", code)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a failed unwrap left %s behind", bad)
	}
}

// TestDebugPcapNeedsFlag serves the health endpoints on a real loopback
// listener: /debug/pcap is 404 without --debug-pcap, and answers with it
// (400 for a bad query proves the handler is mounted without capturing).
func TestDebugPcapNeedsFlag(t *testing.T) {
	for _, tc := range []struct {
		flag bool
		want int
	}{{false, http.StatusNotFound}, {true, http.StatusBadRequest}} {
		d := &daemon{o: &options{debugPcap: tc.flag}, log: slog.New(slog.DiscardHandler)}
		srv := httptest.NewServer(d.httpMux(true))
		resp, err := http.Get(srv.URL + "/debug/pcap?seconds=bogus")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("--debug-pcap=%v: GET /debug/pcap answered %d, want %d", tc.flag, resp.StatusCode, tc.want)
		}
		if tc.flag {
			rec := httptest.NewRecorder()
			d.httpMux(false).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pcap", nil))
			if rec.Code != http.StatusNotFound {
				t.Errorf("/debug/pcap is served on the --metrics-addr listener: %d", rec.Code)
			}
		}
	}
}

// TestDocsPcapUnwrap runs docs/pcap.md's unwrap commands, in the
// directory of an underlay capture on the default port: flanneld's lines
// in this process, the others (tcpdump) with sh.
func TestDocsPcapUnwrap(t *testing.T) {
	testbed.RequireTool(t, "tcpdump")
	script := doccmd.Script(t, "docs/pcap.md", "pcap-unwrap") // before Chdir: it finds go.mod from there
	file, _, _ := underlayCapture(t, 8285)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "underlay.pcap"), file, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	summary := regexp.MustCompile(`^1 frames read: 1 inner packets written, 0 other traffic skipped, 0 fragments, 0 malformed\n$`)
	var ran []string
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		words := strings.Fields(line)
		if words[0] == "flanneld" {
			var stdout, stderr bytes.Buffer
			if code := run(words, noEnv, &stdout, &stderr); code != 0 || !summary.MatchString(stderr.String()) {
				t.Fatalf("%s: exit %d, %q", line, code, stderr.String())
			}
			ran = append(ran, words[1])
			continue
		}
		out, err := exec.Command("sh", "-c", line).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		if words[0] == "tcpdump" && !strings.Contains(string(out), "IP 198.18.32.2.7000 > 198.18.75.2.7000:") {
			t.Errorf("%s does not show the inner packet:\n%s", line, out)
		}
		ran = append(ran, words[0])
	}
	if strings.Join(ran, " ") != "pcap tcpdump" {
		t.Errorf("ran %v, want flanneld pcap unwrap, then tcpdump", ran)
	}
}
