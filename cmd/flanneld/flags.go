//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/flannel-go/flannel-go/internal/extiface"
)

// options holds every command-line setting of the daemon. Flag names and
// defaults are upstream flanneld's (etcd and Kubernetes modes), plus this
// project's own data-plane knobs.
type options struct {
	etcdEndpoints string
	etcdPrefix    string
	etcdKeyfile   string
	etcdCertfile  string
	etcdCAFile    string
	etcdUsername  string
	etcdPassword  string
	etcdEmbedded  string

	ifaces        stringList
	ifaceRegexes  stringList
	ifaceCanReach string
	publicIP      string
	publicIPv6    string
	publicIPClaim bool

	subnetFile        string
	subnetRenewMargin int

	ipMasq                   bool
	ipMasqFullyRandomDisable bool
	iptablesResync           int
	iptablesForwardRules     bool
	ipBlackholeRoute         bool

	healthzIP   string
	healthzPort int
	metricsAddr string
	debugPcap   bool

	queues             int
	socketBuffer       int
	tunTxQueueLen      int
	acceptUnknownPeers bool
	strictSource       bool
	offloads           bool
	fastPath           string
	verifyChecksums    bool
	busyPoll           time.Duration
	aqmTarget          time.Duration
	aqmInterval        time.Duration

	kube kubeOptions

	verbosity int
	version   bool
}

// stringList is a repeatable string flag, like upstream's --iface.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// startGOMAXPROCS is the runtime's own choice before the daemon changes it:
// the CPUs the process may use, the affinity mask and a cgroup CPU limit
// included (Go 1.25 and later).
var startGOMAXPROCS = runtime.GOMAXPROCS(0)

// defaultQueues is one queue per CPU the process may use.
func defaultQueues() int { return max(startGOMAXPROCS, 1) }

// newFlagSet builds the flag set bound to o.
func newFlagSet(name string, o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.etcdEndpoints, "etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "a comma-delimited list of etcd endpoints")
	fs.StringVar(&o.etcdPrefix, "etcd-prefix", "/coreos.com/network", "etcd prefix")
	fs.StringVar(&o.etcdKeyfile, "etcd-keyfile", "", "SSL key file used to secure etcd communication")
	fs.StringVar(&o.etcdCertfile, "etcd-certfile", "", "SSL certification file used to secure etcd communication")
	fs.StringVar(&o.etcdCAFile, "etcd-cafile", "", "SSL Certificate Authority file used to secure etcd communication")
	fs.StringVar(&o.etcdUsername, "etcd-username", "", "username for BasicAuth to etcd")
	fs.StringVar(&o.etcdPassword, "etcd-password", "", "password for BasicAuth to etcd")
	fs.StringVar(&o.etcdEmbedded, "etcd-embedded", "", "run a single-member etcd inside flanneld with its data in this directory, listening on --etcd-endpoints")

	fs.Var(&o.ifaces, "iface", "interface to use (IP or name) for inter-host communication; can be given more than once")
	fs.Var(&o.ifaceRegexes, "iface-regex", "regex expression to match the first interface to use (IP or name) for inter-host communication; can be given more than once")
	fs.StringVar(&o.ifaceCanReach, "iface-can-reach", "", "detect the interface to use by the route to this IP")
	fs.StringVar(&o.publicIP, "public-ip", "", "IP accessible by other nodes for inter-host communication")
	fs.StringVar(&o.publicIPv6, "public-ipv6", "", "IPv6 accessible by other nodes for inter-host communication")
	fs.BoolVar(&o.publicIPClaim, "public-ip-claim", true, "claim the PublicIP in etcd under <etcd-prefix>/flannel-go/public-ips/, so that a second node with the same PublicIP waits instead of sharing this node's lease")

	fs.StringVar(&o.subnetFile, "subnet-file", "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ... ) will be written to")
	fs.IntVar(&o.subnetRenewMargin, "subnet-lease-renew-margin", 60, "subnet lease renewal margin, in minutes, ranging from 1 to 1439")

	fs.BoolVar(&o.ipMasq, "ip-masq", false, "setup IP masquerade rule for traffic destined outside of overlay network")
	fs.BoolVar(&o.ipMasqFullyRandomDisable, "ip-masq-fully-random-disable", false, "do not add --random-fully to the masquerade rules")
	fs.IntVar(&o.iptablesResync, "iptables-resync", 5, "resync period for iptables rules, in seconds")
	fs.BoolVar(&o.iptablesForwardRules, "iptables-forward-rules", true, "add default accept rules to FORWARD chain in iptables")
	fs.BoolVar(&o.ipBlackholeRoute, "ip-blackhole-route", false, "add a blackhole route for the own subnet, so traffic to its unused addresses is not sent out the default route")

	fs.StringVar(&o.healthzIP, "healthz-ip", "0.0.0.0", "the IP address for healthz server to listen")
	fs.IntVar(&o.healthzPort, "healthz-port", 0, "the port for healthz server to listen (0 to disable)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "also serve /metrics on this host:port")
	fs.BoolVar(&o.debugPcap, "debug-pcap", false, "serve /debug/pcap (a capture of the overlay's packets) on the healthz port; off by default because that port listens on 0.0.0.0")

	fs.IntVar(&o.queues, "queues", defaultQueues(), "TUN queues and forwarding workers, one per CPU the process may use (affinity and cgroup CPU limit) by default")
	fs.IntVar(&o.socketBuffer, "socket-buffer", 4<<20, "UDP socket send and receive buffer size in bytes")
	fs.IntVar(&o.tunTxQueueLen, "tun-txqueuelen", 4096, "TUN device transmit queue length")
	fs.BoolVar(&o.acceptUnknownPeers, "accept-unknown-peers", false, "accept overlay datagrams from senders that hold no lease")
	fs.BoolVar(&o.strictSource, "strict-source", false, "drop overlay packets whose inner source is outside the sending node's subnet (breaks NodePort-style forwarding that keeps the client's address)")
	fs.BoolVar(&o.offloads, "offloads", true, "use TSO/GRO on the TUN device and UDP GSO/GRO on the sockets where the kernel has them")
	fs.StringVar(&o.fastPath, "fast-path", "auto", "carry packets to peers that also run it in a kernel TC eBPF fast path: auto (where the kernel and privileges allow), on (fail at start otherwise) or off (userspace router alone)")
	fs.DurationVar(&o.busyPoll, "busy-poll", 0, "after forwarding a packet, data-plane threads check for the next one this long without sleeping, e.g. 200us (0: sleep at once); costs CPU under light traffic, an idle daemon still sleeps")
	fs.DurationVar(&o.aqmTarget, "aqm-target", 250*time.Microsecond, "queueing delay in front of the data plane (TUN queue, socket receive queue) above which, once it stood for --aqm-interval, a bulk flow's packet is ECN-marked or dropped (CoDel); 0 disables")
	fs.DurationVar(&o.aqmInterval, "aqm-interval", 2500*time.Microsecond, "how long the queueing delay must stand above --aqm-target before CoDel acts, and its base spacing between signals")
	fs.BoolVar(&o.verifyChecksums, "verify-checksums", false, "re-verify inner TCP/UDP checksums of received packets instead of trusting the outer UDP checksum")

	fs.IntVar(&o.verbosity, "v", 0, "log verbosity: 0 logs Info and above, 1 or more also Debug")
	fs.BoolVar(&o.version, "version", false, "print the version, commit, Go version and whether the fast path is built in, and exit")
	o.kube.addFlags(fs)
	addForeignFlags(fs)
	fs.Usage = func() { printUsage(fs.Output(), name, fs) }
	return fs
}

// envName is the FLANNELD_* variable that fills flag name.
func envName(name string) string {
	return "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// setFlagsFromEnv fills every flag not given on the command line from its
// FLANNELD_* variable, as upstream does after parsing, and returns the
// names it set. A bad value is logged and ignored, also as upstream.
func setFlagsFromEnv(fs *flag.FlagSet, getenv func(string) string, log *slog.Logger) map[string]bool {
	set := map[string]bool{}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || f.Name == "version" {
			return
		}
		v := getenv(envName(f.Name))
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			log.Error("Failed to set flag FLANNELD from env", "flag", f.Name, "variable", envName(f.Name), "error", err)
			return
		}
		set[f.Name] = true
	})
	return set
}

// parseOptions parses args and the environment into options and checks
// every range, naming the flag at fault.
func parseOptions(name string, args []string, getenv func(string) string, out io.Writer, log *slog.Logger) (*options, error) {
	o := &options{}
	fs := newFlagSet(name, o, out)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		// Upstream ignores them silently; a unit that starts there must
		// start here, but the flags after them are not parsed by either.
		log.Warn(fmt.Sprintf("Ignoring %d command-line argument(s) from %q on: they are not flags (flags start with - or --), and nothing after the first of them is parsed, as in upstream", fs.NArg(), fs.Arg(0)))
	}
	if o.version {
		return o, nil
	}
	fromEnv := setFlagsFromEnv(fs, getenv, log)
	warnForeignFlags(fs, fromEnv, log)
	return o, o.validate()
}

func (o *options) validate() error {
	var errs []error
	if o.subnetRenewMargin < 1 || o.subnetRenewMargin > 1439 {
		//lint:ignore ST1005 upstream's exact text
		errs = append(errs, errors.New("Invalid subnet-lease-renew-margin option, out of acceptable range"))
	}
	if o.queues < 1 || o.queues > 256 {
		errs = append(errs, fmt.Errorf("--queues must be between 1 and 256, got %d", o.queues))
	}
	if o.socketBuffer < 64<<10 || o.socketBuffer > 1<<30 {
		errs = append(errs, fmt.Errorf("--socket-buffer must be between 65536 and 1073741824 bytes, got %d", o.socketBuffer))
	}
	if o.tunTxQueueLen < 1 || o.tunTxQueueLen > 1<<20 {
		errs = append(errs, fmt.Errorf("--tun-txqueuelen must be between 1 and 1048576, got %d", o.tunTxQueueLen))
	}
	if o.busyPoll < 0 || o.busyPoll > 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--busy-poll must be between 0 and 10ms, got %s", o.busyPoll))
	}
	if o.aqmTarget < 0 || o.aqmInterval <= 0 || o.aqmInterval > time.Second || o.aqmTarget > o.aqmInterval {
		errs = append(errs, fmt.Errorf("--aqm-target (%s) must be between 0 and --aqm-interval (%s), which must be above 0 and at most 1s", o.aqmTarget, o.aqmInterval))
	}
	if o.iptablesResync < 1 {
		errs = append(errs, fmt.Errorf("--iptables-resync must be at least 1 second, got %d", o.iptablesResync))
	}
	if o.healthzPort < 0 || o.healthzPort > 65535 {
		errs = append(errs, fmt.Errorf("--healthz-port must be between 0 and 65535, got %d", o.healthzPort))
	}
	switch o.fastPath {
	case "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("--fast-path must be auto, on or off, got %q", o.fastPath))
	}
	if o.etcdEndpoints == "" {
		errs = append(errs, errors.New("--etcd-endpoints must name at least one endpoint"))
	}
	errs = append(errs, o.kube.validate(o))
	return errors.Join(errs...)
}

func (o *options) renewMargin() time.Duration {
	return time.Duration(o.subnetRenewMargin) * time.Minute
}

func (o *options) endpoints() []string {
	var eps []string
	for _, e := range strings.Split(o.etcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// ifaceSelection is what the flags ask of the external interface.
func (o *options) ifaceSelection() extiface.Selection {
	return extiface.Selection{
		Ifaces: o.ifaces, IfaceRegexes: o.ifaceRegexes, IfaceCanReach: o.ifaceCanReach,
		PublicIP: o.publicIP, PublicIPv6: o.publicIPv6,
	}
}
