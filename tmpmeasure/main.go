// Throwaway measurement harness (deleted before the report).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

type ep interface {
	Run(ctx context.Context, name string, args ...string) (string, error)
}

type iperfOut struct {
	End struct {
		SumReceived struct {
			BPS float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		SumSent struct {
			BPS         float64 `json:"bits_per_second"`
			Retransmits int     `json:"retransmits"`
		} `json:"sum_sent"`
		Sum struct {
			BPS     float64 `json:"bits_per_second"`
			Packets int     `json:"packets"`
			Lost    int     `json:"lost_packets"`
			Secs    float64 `json:"seconds"`
		} `json:"sum"`
	} `json:"end"`
}

func iperf(ctx context.Context, srv interface {
	ep
}, srvCmd func() error, cli ep, addr string, args ...string) (iperfOut, error) {
	var o iperfOut
	if err := srvCmd(); err != nil {
		return o, err
	}
	time.Sleep(300 * time.Millisecond)
	out, err := cli.Run(ctx, "iperf3", append([]string{"-c", addr, "-J"}, args...)...)
	if err != nil {
		return o, fmt.Errorf("%v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &o); err != nil {
		return o, err
	}
	return o, nil
}

func ping(ctx context.Context, cli ep, addr string) float64 {
	var avgs []float64
	for range 3 {
		out, err := cli.Run(ctx, "ping", "-q", "-c", "50", "-i", "0.01", addr)
		if err != nil {
			log.Printf("ping: %v %s", err, out)
			return 0
		}
		i := strings.Index(out, "= ")
		var mn, av float64
		fmt.Sscanf(out[i+2:], "%f/%f", &mn, &av)
		avgs = append(avgs, av*1000)
	}
	sort.Float64s(avgs)
	return avgs[1]
}

type result struct {
	name                 string
	tcp1, tcp4, udpPPS   float64
	rtt                  float64
	retr1                int
}

func measure(ctx context.Context, name string, srvEP, cliEP ep, startSrv func(args ...string) error, addr string, secs string) result {
	r := result{name: name}
	o, err := iperf(ctx, srvEP, func() error { return startSrv() }, cliEP, addr, "-t", secs)
	if err != nil {
		log.Printf("%s tcp1: %v", name, err)
	}
	r.tcp1, r.retr1 = o.End.SumReceived.BPS/1e9, o.End.SumSent.Retransmits
	o, err = iperf(ctx, srvEP, func() error { return startSrv() }, cliEP, addr, "-t", secs, "-P", "4")
	if err != nil {
		log.Printf("%s tcp4: %v", name, err)
	}
	r.tcp4 = o.End.SumReceived.BPS / 1e9
	o, err = iperf(ctx, srvEP, func() error { return startSrv() }, cliEP, addr, "-t", secs, "-u", "-l", "64", "-b", "0")
	if err != nil {
		log.Printf("%s udp: %v", name, err)
	}
	if o.End.Sum.Secs > 0 {
		r.udpPPS = float64(o.End.Sum.Packets-o.End.Sum.Lost) / o.End.Sum.Secs
	}
	r.rtt = ping(ctx, cliEP, addr)
	return r
}

func main() {
	fl := flag.String("flanneld", "/tmp/fl", "")
	rounds := flag.Int("rounds", 1, "")
	secs := flag.String("t", "10", "")
	skipVX := flag.Bool("novxlan", false, "")
	args := flag.String("args", "", "extra flanneld args, comma separated")
	flag.Parse()
	ctx := context.Background()
	var res []result
	for i := 0; i < *rounds; i++ {
		// flannel
		var extra []string
		if *args != "" {
			extra = strings.Split(*args, ",")
		}
		c, err := cluster.Start(ctx, cluster.Options{Flanneld: *fl, Hosts: 2, Bed: testbed.Options{Direct: true}, Args: extra})
		if err != nil {
			log.Fatal(err)
		}
		stop := testbed.CleanupOnSignal(c.Bed)
		if err := c.AddContainers(ctx); err != nil {
			c.Close()
			log.Fatal(err)
		}
		srv, cli := c.Nodes[1].Container, c.Nodes[0].Container
		start := func(a ...string) error { return srv.Command(ctx, "iperf3", "-s", "-1").Start() }
		res = append(res, measure(ctx, "flannel "+*fl, srv, cli, start, srv.Addr.String(), *secs))
		st, body, _ := c.Nodes[0].HTTPGet(ctx, "/metrics")
		_ = st
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "flannel_router") && !strings.HasSuffix(l, " 0") {
				fmt.Println("  h1", l)
			}
		}
		stop()
		c.Close()
		if *skipVX {
			continue
		}
		// kernel vxlan, container to container
		b, err := testbed.New(ctx, testbed.Options{Hosts: 2, Direct: true})
		if err != nil {
			log.Fatal(err)
		}
		stop = testbed.CleanupOnSignal(b)
		var cts []*testbed.Container
		for j, h := range b.Hosts {
			n, o := j+1, 2-j
			sub := fmt.Sprintf("198.18.%d.0", 10*n)
			osub := fmt.Sprintf("198.18.%d.0", 10*o)
			for _, cmd := range [][]string{
				{"ip", "link", "add", "vxlan0", "address", fmt.Sprintf("02:00:00:00:00:0%d", n), "type", "vxlan", "id", "1", "dstport", "8472", "local", h.Addr.String(), "dev", "eth0", "nolearning"},
				{"ip", "link", "set", "vxlan0", "mtu", "1450", "up"},
				{"ip", "addr", "add", sub + "/32", "dev", "vxlan0"},
				{"ip", "neigh", "add", osub, "lladdr", fmt.Sprintf("02:00:00:00:00:0%d", o), "dev", "vxlan0", "nud", "permanent"},
				{"bridge", "fdb", "append", fmt.Sprintf("02:00:00:00:00:0%d", o), "dev", "vxlan0", "dst", b.Hosts[o-1].Addr.String()},
				{"ip", "route", "add", osub + "/24", "via", osub, "dev", "vxlan0", "onlink"},
			} {
				if out, err := h.Run(ctx, cmd[0], cmd[1:]...); err != nil {
					log.Fatalf("%v: %v %s", cmd, err, out)
				}
			}
			ct, err := h.AddContainer(ctx, "c1", netip.MustParsePrefix(fmt.Sprintf("198.18.%d.1/24", 10*n)), 1450)
			if err != nil {
				log.Fatal(err)
			}
			cts = append(cts, ct)
		}
		srv, cli = cts[1], cts[0]
		start = func(a ...string) error { return srv.Command(ctx, "iperf3", "-s", "-1").Start() }
		res = append(res, measure(ctx, "vxlan", srv, cli, start, srv.Addr.String(), *secs))
		stop()
		b.Close()
	}
	fmt.Printf("%-28s %8s %8s %6s %10s %8s\n", "path", "tcp1", "tcp4", "retr1", "udp64pps", "rtt_us")
	for _, r := range res {
		fmt.Printf("%-28s %8.2f %8.2f %6d %10.0f %8.0f\n", r.name, r.tcp1, r.tcp4, r.retr1, r.udpPPS, r.rtt)
	}
	_ = os.Stdout.Sync()
}
