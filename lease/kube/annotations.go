package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// DefaultAnnotationPrefix is upstream's --kube-annotation-prefix default.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// nullBackendData is the backend data of the udp backend: upstream's udp
// backend leaves LeaseAttrs.BackendData nil, and json.RawMessage(nil)
// marshals as null.
const nullBackendData = "null"

// managedValue marks a node whose annotations a flanneld wrote; nodes
// without it are not peers.
const managedValue = "true"

// annotations are the node annotation keys under one prefix, named as
// upstream's (pkg/subnet/kube/annotations.go).
type annotations struct {
	SubnetKubeManaged          string // <prefix>kube-subnet-manager
	BackendData                string // <prefix>backend-data
	BackendV6Data              string // <prefix>backend-v6-data
	BackendType                string // <prefix>backend-type
	BackendPublicIP            string // <prefix>public-ip
	BackendPublicIPv6          string // <prefix>public-ipv6
	BackendNodePublicIP        string // <prefix>node-public-ip, read at start
	BackendNodePublicIPv6      string // <prefix>node-public-ipv6, read at start
	BackendPublicIPOverwrite   string // <prefix>public-ip-overwrite
	BackendPublicIPv6Overwrite string // <prefix>public-ipv6-overwrite
}

// prefixRE is the form upstream accepts once the prefix has its
// separator: a DNS-like name, a slash, and an optional name part ending
// in "-".
var prefixRE = regexp.MustCompile(`(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// newAnnotations builds the keys for --kube-annotation-prefix as upstream
// does: "example.com" becomes "example.com/", "example.com/net" becomes
// "example.com/net-". Its error texts are upstream's.
func newAnnotations(prefix string) (annotations, error) {
	switch strings.Count(prefix, "/") {
	case 0:
		prefix += "/"
	case 1:
	default:
		return annotations{}, errors.New("subnet/kube: prefix can contain at most single slash")
	}
	if !strings.HasSuffix(prefix, "/") && !strings.HasSuffix(prefix, "-") {
		prefix += "-"
	}
	// Unanchored at the start, as upstream's: only the tail must match.
	if !prefixRE.MatchString(prefix) {
		return annotations{}, errors.New("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*")
	}
	return annotations{
		SubnetKubeManaged:          prefix + "kube-subnet-manager",
		BackendData:                prefix + "backend-data",
		BackendV6Data:              prefix + "backend-v6-data",
		BackendType:                prefix + "backend-type",
		BackendPublicIP:            prefix + "public-ip",
		BackendNodePublicIP:        prefix + "node-public-ip",
		BackendPublicIPOverwrite:   prefix + "public-ip-overwrite",
		BackendPublicIPv6:          prefix + "public-ipv6",
		BackendNodePublicIPv6:      prefix + "node-public-ipv6",
		BackendPublicIPv6Overwrite: prefix + "public-ipv6-overwrite",
	}, nil
}

// CheckAnnotationPrefix reports whether prefix is a valid
// --kube-annotation-prefix, with upstream's error text.
func CheckAnnotationPrefix(prefix string) error {
	_, err := newAnnotations(prefix)
	return err
}

// attrs is what this node publishes: the udp backend's lease attributes.
// PublicIPv6 is published only when valid (see annotationPatch).
type attrs struct {
	PublicIP   netip.Addr // invalid in an IPv6-only network
	PublicIPv6 netip.Addr
}

// annotationPatch returns the annotations this node must set so that
// peers see attrs, as upstream's AcquireLease sets them for the udp
// backend, or nil when they are all in place already. have may be nil (a
// node without annotations). Upstream, as ours, rewrites the set when any
// of them differs: backend-type "" and backend-data "null" (the udp
// backend's empty BackendType and nil BackendData), public-ip (or the
// value of public-ip-overwrite when that is set) and kube-subnet-manager
// "true". public-ipv6 and backend-v6-data follow the same rules when the
// node has an IPv6 address to publish (upstream's udp backend never has
// one; flannel-go's carries IPv6, see docs/configuration.md). An IPv6-only node
// publishes no public-ip.
func (a annotations) annotationPatch(have map[string]string, at attrs) map[string]string {
	if !a.needsPatch(have, at) {
		return nil
	}
	want := map[string]string{a.BackendType: ""}
	if at.PublicIP.IsValid() {
		want[a.BackendData] = nullBackendData
		want[a.BackendPublicIP] = overwritten(have[a.BackendPublicIPOverwrite], at.PublicIP)
	}
	if at.PublicIPv6.IsValid() {
		want[a.BackendV6Data] = nullBackendData
		want[a.BackendPublicIPv6] = overwritten(have[a.BackendPublicIPv6Overwrite], at.PublicIPv6)
	}
	want[a.SubnetKubeManaged] = managedValue
	// Send only what changes, as upstream's two-way merge patch does. An
	// overwrite annotation already applied leaves nothing to send, where
	// upstream sends an empty patch.
	for k, v := range want {
		if old, ok := have[k]; ok && old == v {
			delete(want, k)
		}
	}
	if len(want) == 0 {
		return nil
	}
	return want
}

// patchBody is the strategic merge patch that sets the annotations: the
// bytes upstream's two-way merge patch has for the same change (keys in
// sorted order).
func patchBody(annotations map[string]string) ([]byte, error) {
	return json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
}

// needsPatch is upstream's test for rewriting the annotations: any of
// them differs from what this node would write, or an overwrite
// annotation names another address than the node's own (then the patch
// is sent on every start, as upstream).
func (a annotations) needsPatch(have map[string]string, at attrs) bool {
	differs := func(data, ip, overwrite string, addr netip.Addr) bool {
		return have[data] != nullBackendData || have[a.BackendType] != "" ||
			have[ip] != addr.String() || have[a.SubnetKubeManaged] != managedValue ||
			have[overwrite] != "" && have[overwrite] != addr.String()
	}
	if at.PublicIP.IsValid() && differs(a.BackendData, a.BackendPublicIP, a.BackendPublicIPOverwrite, at.PublicIP) {
		return true
	}
	if at.PublicIPv6.IsValid() && differs(a.BackendV6Data, a.BackendPublicIPv6, a.BackendPublicIPv6Overwrite, at.PublicIPv6) {
		return true
	}
	return !at.PublicIP.IsValid() && !at.PublicIPv6.IsValid() && have[a.SubnetKubeManaged] != managedValue
}

// overwritten is the public address to publish: the overwrite
// annotation's value when set (copied as it is, as upstream), else addr.
func overwritten(overwrite string, addr netip.Addr) string {
	if overwrite != "" {
		return overwrite
	}
	return addr.String()
}

// publicAddrs reads a peer's published addresses: public-ip as an IPv4
// address, public-ipv6 as an IPv6 one. An absent annotation gives an
// invalid address; a present one that does not parse is an error naming
// it.
func (a annotations) publicAddrs(have map[string]string) (v4, v6 netip.Addr, err error) {
	if s, ok := have[a.BackendPublicIP]; ok {
		if v4, err = parseIP4(s); err != nil {
			return v4, v6, fmt.Errorf("annotation %s: %w", a.BackendPublicIP, err)
		}
	}
	if s, ok := have[a.BackendPublicIPv6]; ok && s != "" {
		if v6, err = parseIP6(s); err != nil {
			return v4, v6, fmt.Errorf("annotation %s: %w", a.BackendPublicIPv6, err)
		}
	}
	return v4, v6, nil
}

// parseIP4 accepts what upstream's ip.ParseIP4 accepts (an IPv4 address,
// also in IPv4-mapped form) except 0.0.0.0, which no peer can be reached
// at.
func parseIP4(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	ip = ip.Unmap()
	if !ip.Is4() || ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%q is not a usable IPv4 address", s)
	}
	return ip, nil
}

// parseIP6 accepts an IPv6 address that is not IPv4-mapped, unspecified
// or zoned.
func parseIP6(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if !ip.Is6() || ip.Is4In6() || ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%q is not a usable IPv6 address", s)
	}
	return ip, nil
}
