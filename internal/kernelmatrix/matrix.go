// Package kernelmatrix runs the fast path's tests on the kernels users run:
// Debian's stock kernel packages booted in QEMU (TCG) with this machine's
// root shared read-only over 9p, and the host's own kernel. Rows holds the
// kernels and what each is expected to give; cmd/kernel-matrix drives it.
package kernelmatrix

import "regexp"

// Path names the data path a cluster's bytes took.
const (
	PathKernel    = "kernel"
	PathUserspace = "userspace"
)

// Expectation is what a row must give: the kernel path (with the given
// attach mode when Attach is set), or a clean fallback to the userspace
// router whose log line contains Reason.
type Expectation struct {
	Path   string
	Attach string
	Reason string
}

// Kernel expects the fast path to load and carry the transfer; attach is
// the attach mode flanneld must report, empty for any.
func Kernel(attach string) Expectation { return Expectation{Path: PathKernel, Attach: attach} }

// Fallback expects flanneld to fall back to the userspace router with a
// log line that contains reason.
func Fallback(reason string) Expectation { return Expectation{Path: PathUserspace, Reason: reason} }

// Row is one line of the matrix: a kernel (a Debian package booted in
// QEMU, or the host's own when Package is nil) and its expectation.
type Row struct {
	Name string
	// Package matches the kernel image package's name; the newest match
	// in Suites is booted.
	Package *regexp.Regexp
	Suites  []string
	Expect  Expectation
	// Env is passed to every flanneld of the cluster test.
	Env []string
}

// VM reports whether the row boots a kernel in QEMU.
func (r Row) VM() bool { return r.Package != nil }

// Rows is the matrix and the single place its expectations live. When the
// fast path loads on a kernel, change that row's Expect to Kernel("") (or
// Kernel("clsact") / Kernel("tcx") to pin the attach mode); a row that gives
// the kernel path while it expects a fallback fails, so the table cannot
// fall behind.
var Rows = []Row{
	{Name: "5.10", Package: regexp.MustCompile(`^linux-image-5\.10\.0-[0-9]+-amd64$`),
		Suites: []string{"bullseye", "bullseye-updates", "bullseye-security"},
		Expect: Kernel("clsact")},
	{Name: "6.1", Package: regexp.MustCompile(`^linux-image-6\.1\.0-[0-9]+-amd64$`),
		Suites: []string{"bookworm", "bookworm-updates", "bookworm-security"},
		Expect: Kernel("clsact")},
	{Name: "6.12", Package: regexp.MustCompile(`^linux-image-6\.12\.[0-9]+\+deb13-amd64$`),
		Suites: []string{"trixie", "trixie-updates", "trixie-security"},
		Expect: Kernel("tcx")},
	{Name: "host", Expect: Kernel("tcx")},
	// The host's kernel with the attach and the variant of the oldest
	// kernel forced (FLANNEL_FASTPATH_*): a mixed cluster of attach modes
	// passes on the host as it does in the guests.
	{Name: "host-clsact", Expect: Kernel("clsact"), Env: []string{"FLANNEL_FASTPATH_ATTACH=clsact"}},
	{Name: "host-5.10-variant", Expect: Kernel("clsact"),
		Env: []string{"FLANNEL_FASTPATH_ATTACH=clsact", "FLANNEL_FASTPATH_VARIANT=no-coarse-clock,no-decap-flags"}},
}

// GuestModules are loaded in every guest before the tests: the devices the
// testbed and flanneld create, the tc pieces of both attach modes, and
// what iptables (nf_tables) needs for flanneld's FORWARD and masquerade
// rules. A module built into a kernel loads as a no-op.
var GuestModules = []string{
	"tun", "veth", "bridge", "udp_tunnel", "ip6_udp_tunnel", "vxlan",
	"sch_ingress", "cls_bpf", "act_bpf",
	"nf_tables", "nft_compat", "nft_chain_nat", "nft_ct", "nft_masq",
	"nf_conntrack", "nf_nat", "x_tables", "xt_conntrack", "xt_comment", "xt_tcpudp",
	"xt_MASQUERADE", "xt_addrtype", "xt_mark", "xt_multiport", "ipt_REJECT", "ip6t_REJECT",
	"ip_tables", "iptable_filter", "iptable_nat", "ip6_tables", "ip6table_filter", "ip6table_nat",
}

// Lookup returns the rows named in names (all rows when names is empty).
func Lookup(names []string) ([]Row, []string) {
	if len(names) == 0 {
		return Rows, nil
	}
	var rows []Row
	var unknown []string
	for _, n := range names {
		found := false
		for _, r := range Rows {
			if r.Name == n {
				rows, found = append(rows, r), true
			}
		}
		if !found {
			unknown = append(unknown, n)
		}
	}
	return rows, unknown
}
