//go:build linux

package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// flagGroup is one heading of --help and its flags, in the order shown.
type flagGroup struct {
	title string
	names []string
}

// otherTitle heads the flags that no group names; a test keeps it empty.
const otherTitle = "Other"

// flagGroups orders --help by purpose. A flag defined in newFlagSet but
// missing here is shown under otherTitle (and fails TestHelpGroupsEveryFlag);
// a name here that is not defined, or is a compatibility-only flag, is
// left out, so a group may be empty and is then not shown.
var flagGroups = []flagGroup{
	{"etcd", []string{"etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
		"etcd-username", "etcd-password", "etcd-embedded"}},
	{"Kubernetes subnet manager", []string{"kube-subnet-mgr", "kube-api-url", "kubeconfig-file",
		"kube-annotation-prefix", "net-config-path", "set-node-network-unavailable"}},
	{"Interface and addresses", []string{"iface", "iface-regex", "iface-can-reach", "public-ip", "public-ipv6", "public-ip-claim"}},
	{"Subnet lease", []string{"subnet-file", "subnet-lease-renew-margin"}},
	{"Data plane (userspace router)", []string{"queues", "socket-buffer", "tun-txqueuelen", "offloads", "busy-poll",
		"aqm-target", "aqm-interval", "accept-unknown-peers", "strict-source", "verify-checksums"}},
	{"Kernel fast path", []string{"fast-path"}},
	{"Firewall and host rules", []string{"ip-masq", "ip-masq-fully-random-disable", "iptables-forward-rules",
		"iptables-resync", "ip-blackhole-route"}},
	{"Health, metrics and debugging", []string{"healthz-ip", "healthz-port", "metrics-addr", "debug-pcap", "v", "version"}},
}

// printUsage writes --help: the flags by purpose, then the flags that
// exist only for compatibility with upstream (their foreignFlag values)
// in one paragraph per usage text.
func printUsage(w io.Writer, name string, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s [OPTION]...\n", name)
	fmt.Fprintf(w, "       %s mk-docker-opts [OPTION]...   (also installed as mk-docker-opts.sh)\n", name)
	fmt.Fprintf(w, "       %s pcap [OPTION]...\n", name)
	fmt.Fprintln(w, "Every option can also be set as FLANNELD_<NAME> in the environment (upper case,")
	fmt.Fprintln(w, "- as _, e.g. FLANNELD_ETCD_ENDPOINTS); the command line wins.")
	shown := map[string]bool{}
	var compat []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := f.Value.(*foreignFlag); ok {
			compat = append(compat, f)
			shown[f.Name] = true
		}
	})
	groups := append(append([]flagGroup(nil), flagGroups...), flagGroup{title: otherTitle})
	for _, g := range groups {
		var flags []*flag.Flag
		for _, n := range g.names {
			if f := fs.Lookup(n); f != nil && !shown[n] {
				flags, shown[n] = append(flags, f), true
			}
		}
		if g.title == otherTitle {
			fs.VisitAll(func(f *flag.Flag) {
				if !shown[f.Name] {
					flags, shown[f.Name] = append(flags, f), true
				}
			})
		}
		if len(flags) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n", g.title)
		for _, f := range flags {
			printFlag(w, f)
		}
	}
	printCompat(w, compat)
}

// printFlag formats one flag as flag.PrintDefaults does.
func printFlag(w io.Writer, f *flag.Flag) {
	typ, usage := flag.UnquoteUsage(f)
	line := "  -" + f.Name
	if typ != "" {
		line += " " + typ
	}
	fmt.Fprintf(w, "%s\n    \t%s", line, strings.ReplaceAll(usage, "\n", "\n    \t"))
	switch f.DefValue {
	case "", "0", "false", "0s":
	default:
		if typ == "string" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		} else {
			fmt.Fprintf(w, " (default %v)", f.DefValue)
		}
	}
	fmt.Fprintln(w)
}

// printCompat writes the compatibility-only flags as one paragraph per
// usage text ("accepted ..., ignored", "not supported ..."), wrapped.
func printCompat(w io.Writer, compat []*flag.Flag) {
	if len(compat) == 0 {
		return
	}
	fmt.Fprintln(w, "\nCompatibility with upstream flanneld:")
	var order []string
	byUsage := map[string][]string{}
	for _, f := range compat {
		if _, ok := byUsage[f.Usage]; !ok {
			order = append(order, f.Usage)
		}
		byUsage[f.Usage] = append(byUsage[f.Usage], "-"+f.Name)
	}
	for _, usage := range order {
		text := strings.Join(byUsage[usage], ", ") + ": " + usage + "."
		fmt.Fprintln(w, wrap(text, 78, "  "))
	}
}

// wrap breaks text into lines of at most width columns, each indented.
func wrap(text string, width int, indent string) string {
	var b strings.Builder
	line := indent
	for _, word := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += word
	}
	b.WriteString(line)
	return b.String()
}
