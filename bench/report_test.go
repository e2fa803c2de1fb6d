package bench

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in          []float64
		n           int
		med, lo, hi float64
	}{
		{[]float64{3, 1, 2}, 3, 2, 1, 3},
		{[]float64{4, 1, 3, 2}, 4, 2.5, 1, 4},
		{[]float64{5}, 1, 5, 5, 5},
		{[]float64{math.NaN(), 7, 1}, 2, 4, 1, 7},
	} {
		s := Summarize(tc.in)
		if s.N != tc.n || s.Median != tc.med || s.Min != tc.lo || s.Max != tc.hi {
			t.Errorf("Summarize(%v) = %+v, want n=%d median=%v min=%v max=%v", tc.in, s, tc.n, tc.med, tc.lo, tc.hi)
		}
	}
	if s := Summarize([]float64{math.NaN()}); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("Summarize(NaN) = %+v, want no values", s)
	}
}

func TestPercentile(t *testing.T) {
	v := make([]float64, 50)
	for i := range v {
		v[i] = float64(50 - i) // 50..1, unsorted
	}
	if got := Percentile(v, 99); got != 50 {
		t.Errorf("p99 of 1..50 = %v, want 50", got)
	}
	if got := Percentile(v, 50); got != 25 {
		t.Errorf("p50 of 1..50 = %v, want 25", got)
	}
	if got := Percentile(v, 0); got != 1 {
		t.Errorf("p0 of 1..50 = %v, want 1", got)
	}
	if got := Percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("p50 of nothing = %v, want NaN", got)
	}
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseIperfTCP(t *testing.T) {
	r, err := ParseIperfTCP(readTestdata(t, "iperf3-tcp.json"))
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r.BitsPerSecond-10504659090.20388) > 1 || r.Bytes != 1481113600 || r.Retransmits != 2 {
		t.Errorf("got %+v", r)
	}
}

func TestParseIperfUDP(t *testing.T) {
	r, err := ParseIperfUDP(readTestdata(t, "iperf3-udp.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 25000 || r.Delivered != 24990 {
		t.Errorf("got %+v, want 25000 sent, 24990 delivered", r)
	}
	if got := r.LossPercent(); math.Abs(got-0.04) > 1e-9 {
		t.Errorf("loss = %v%%, want 0.04%%", got)
	}
	if got := r.PPS(); math.Abs(got-24990/1.002885) > 1e-6 {
		t.Errorf("pps = %v", got)
	}

	lossy := `{"end":{"sum_sent":{"seconds":2,"packets":1000},
		"sum_received":{"seconds":2,"packets":900,"lost_packets":300}}}`
	r, err = ParseIperfUDP([]byte(lossy))
	if err != nil {
		t.Fatal(err)
	}
	if r.Delivered != 600 || r.PPS() != 300 || r.SentPPS() != 500 || r.LossPercent() != 40 {
		t.Errorf("lossy run: %+v pps=%v sent=%v loss=%v", r, r.PPS(), r.SentPPS(), r.LossPercent())
	}
}

func TestParseIperfErrors(t *testing.T) {
	for _, in := range []string{
		`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`,
		`{"end":{}}`,
		`not json`,
	} {
		if _, err := ParseIperfTCP([]byte(in)); err == nil {
			t.Errorf("ParseIperfTCP(%q) succeeded", in)
		}
	}
	_, err := ParseIperfUDP([]byte(`{"error":"the server is busy"}`))
	if err == nil || !strings.Contains(err.Error(), "server is busy") {
		t.Errorf("error does not carry iperf3's message: %v", err)
	}
}

func TestParsePing(t *testing.T) {
	p, err := ParsePing(string(readTestdata(t, "ping.txt")))
	if err != nil {
		t.Fatal(err)
	}
	if p.Sent != 5 || len(p.RTTs) != 5 {
		t.Fatalf("got %+v", p)
	}
	lo, avg, p99 := p.Stats()
	if lo != 31 || p99 != 42 || math.Abs(avg-39.6) > 1e-9 {
		t.Errorf("min/avg/p99 = %v/%v/%v µs, want 31/39.6/42", lo, avg, p99)
	}
	us, err := ParsePing("64 bytes from 198.18.2.2: icmp_seq=1 ttl=62 time=250 us\n")
	if err != nil || us.RTTs[0] != 250 {
		t.Errorf("µs reply: %+v, %v", us, err)
	}
	if _, err := ParsePing("2 packets transmitted, 0 received, 100% packet loss\n"); err == nil {
		t.Error("no replies parsed without error")
	}
}

func TestParseProcStat(t *testing.T) {
	c, err := ParseProcStat("cpu  100 5 30 1000 7 2 3 4 9 0\ncpu0 1 2 3 4 5 6 7 8\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Busy != 100+5+30+2+3+4 || c.Total != 100+5+30+1000+7+2+3+4 {
		t.Errorf("got %+v", c)
	}
	if _, err := ParseProcStat("intr 1 2 3\n"); err == nil {
		t.Error("accepted a file without a cpu line")
	}
}

func sampleResults() *Results {
	r := NewResults()
	gbps := Metric{"tcp1_gbps", "TCP 1 stream", "Gbit/s", true}
	retr := Metric{"tcp1_retrans", "TCP 1 stream retransmits", "count", false}
	rtt := Metric{"rtt_avg_us", "idle RTT avg", "us", true}
	for _, v := range []float64{8, 10, 9} {
		r.Add("raw veth", gbps, 2*v)
		r.Add(BaselinePath, gbps, v)
		r.Add("flannel-go", gbps, v/4)
		r.Add(BaselinePath, retr, 100)
		r.Add("flannel-go", retr, 0)
		r.Add(BaselinePath, rtt, 60)
		r.Add("flannel-go", rtt, 300)
	}
	r.Add("raw veth", retr, math.NaN())
	return r
}

func TestMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := sampleResults().WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	want := `| workload | raw veth | kernel VXLAN | flannel-go |
|---|---|---|---|
| TCP 1 stream [Gbit/s] | 18.0 (16.0-20.0) **2.00x** | 9.00 (8.00-10.0) | 2.25 (2.00-2.50) **0.25x** |
| TCP 1 stream retransmits [count] | n/a | 100 (100-100) | 0 (0-0) |
| idle RTT avg [us] | n/a | 60.0 (60.0-60.0) | 300 (300-300) **5.00x** |
`
	if b.String() != want {
		t.Errorf("markdown:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestCell(t *testing.T) {
	base := Summary{N: 1, Median: 8.66, Min: 8.66, Max: 8.66}
	if got := Cell(Summary{N: 1, Median: 3.2, Min: 3.2, Max: 3.2}, &base); got != "3.20 **0.37x**" {
		t.Errorf("single run: %q", got)
	}
	if got := Cell(Summary{}, &base); got != "n/a" {
		t.Errorf("no runs: %q", got)
	}
}

func TestWriteJSONAndPNG(t *testing.T) {
	r := sampleResults()
	dir := t.TempDir()
	if err := r.WriteJSON(filepath.Join(dir, "sub", "r.json")); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Paths  []string
		Values map[string]map[string][]*float64
	}
	if err := json.Unmarshal(readFile(t, filepath.Join(dir, "sub", "r.json")), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Paths) != 3 || len(got.Values["tcp1_gbps"][BaselinePath]) != 3 {
		t.Errorf("JSON lost values: %+v", got)
	}
	if v := got.Values["tcp1_retrans"]["raw veth"]; len(v) != 1 || v[0] != nil {
		t.Errorf("failed run should be null, got %v", v)
	}

	pngPath := filepath.Join(dir, "r.png")
	if err := r.WritePNG(pngPath); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(readFile(t, pngPath)))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != chartWidth || b.Dy() < 100 {
		t.Errorf("chart is %v", b)
	}
	// The kernel VXLAN bar of the first panel starts at labelWidth.
	barY := 10 + 7*fontScale + 12 + (barHeight + barGap) + 2
	if c := img.At(labelWidth+1, barY); c != palette[1] {
		t.Errorf("pixel in the VXLAN bar is %v, want %v", c, palette[1])
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseProcPidStat(t *testing.T) {
	line := "4242 (flan ne)ld) S 1 4242 4242 0 -1 4194560 1000 0 0 0 17 25 0 0 20 0 9 0 100 0 0\n"
	got, err := ParseProcPidStat(line)
	if err != nil || got != 42 {
		t.Fatalf("ParseProcPidStat = %d, %v; want 42", got, err)
	}
	if _, err := ParseProcPidStat("4242 (x) S 1"); err == nil {
		t.Fatal("a short line parsed")
	}
}
