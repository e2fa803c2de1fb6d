package kube

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

func TestAnnotationPrefixes(t *testing.T) {
	for _, tc := range []struct {
		prefix, backendType string // backendType "" means the prefix is refused
	}{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"},
		{"example.com/net", "example.com/net-backend-type"},
		{"example.com/net-", "example.com/net-backend-type"},
		{"ex_1.example-2.com/9", "ex_1.example-2.com/9-backend-type"},
		{"example", ""},
		{"example/", ""},
		{"example/net", ""},
		{"Example.COM", ""},
		{"example.com/Net", ""},
		{"example.com/a/b", ""},
		{"", ""},
	} {
		a, err := newAnnotations(tc.prefix)
		switch {
		case tc.backendType == "" && err == nil:
			t.Errorf("%q accepted, keys %+v", tc.prefix, a)
		case tc.backendType != "" && err != nil:
			t.Errorf("%q refused: %v", tc.prefix, err)
		case a.BackendType != tc.backendType:
			t.Errorf("%q: backend-type key %q, want %q", tc.prefix, a.BackendType, tc.backendType)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "subnet/kube: prefix ") {
			t.Errorf("%q: error %q is not upstream's", tc.prefix, err)
		}
	}
	a, _ := newAnnotations(DefaultAnnotationPrefix)
	want := annotations{
		SubnetKubeManaged:          "flannel.alpha.coreos.com/kube-subnet-manager",
		BackendData:                "flannel.alpha.coreos.com/backend-data",
		BackendV6Data:              "flannel.alpha.coreos.com/backend-v6-data",
		BackendType:                "flannel.alpha.coreos.com/backend-type",
		BackendPublicIP:            "flannel.alpha.coreos.com/public-ip",
		BackendPublicIPv6:          "flannel.alpha.coreos.com/public-ipv6",
		BackendNodePublicIP:        "flannel.alpha.coreos.com/node-public-ip",
		BackendNodePublicIPv6:      "flannel.alpha.coreos.com/node-public-ipv6",
		BackendPublicIPOverwrite:   "flannel.alpha.coreos.com/public-ip-overwrite",
		BackendPublicIPv6Overwrite: "flannel.alpha.coreos.com/public-ipv6-overwrite",
	}
	if a != want {
		t.Errorf("default keys %+v, want %+v", a, want)
	}
}

// TestAnnotationPatchBytes states the patches upstream v0.28.9's udp
// backend sends for these nodes (AcquireLease with BackendType "",
// BackendData nil and no PublicIPv6, diffed by CreateTwoWayMergePatch):
// ours must be the same bytes.
func TestAnnotationPatchBytes(t *testing.T) {
	const p = "flannel.alpha.coreos.com/"
	ip := attrs{PublicIP: netip.MustParseAddr("192.0.2.1")}
	full := map[string]string{p + "backend-data": "null", p + "backend-type": "", p + "kube-subnet-manager": "true", p + "public-ip": "192.0.2.1"}
	for _, tc := range []struct {
		name string
		have map[string]string
		at   attrs
		want string // "" for no patch
	}{
		{"no annotations at all", nil, ip,
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.0.2.1"}}}`},
		{"kubelet's annotations", map[string]string{"node.alpha.kubernetes.io/ttl": "0"}, ip,
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.0.2.1"}}}`},
		{"already published", full, ip, ""},
		{"moved to another address", full, attrs{PublicIP: netip.MustParseAddr("192.0.2.7")},
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.0.2.7"}}}`},
		{"vxlan node switched to udp", with(full, p+"backend-type", "vxlan", p+"backend-data", `{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`), ip,
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":""}}}`},
		{"overwrite annotation", with(full, p+"public-ip-overwrite", "203.0.113.9"), ip,
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"203.0.113.9"}}}`},
		{"overwrite already applied", with(full, p+"public-ip-overwrite", "203.0.113.9", p+"public-ip", "203.0.113.9"), ip, ""},
		{"overwrite equal to the own address", with(full, p+"public-ip-overwrite", "192.0.2.1"), ip, ""},
		{"managed flag removed", with(full, p+"kube-subnet-manager", "false"), ip,
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true"}}}`},
		{"dual-stack node", nil, attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), PublicIPv6: netip.MustParseAddr("2001:db8::1")},
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"","flannel.alpha.coreos.com/backend-v6-data":"null","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.0.2.1","flannel.alpha.coreos.com/public-ipv6":"2001:db8::1"}}}`},
		{"IPv6-only node", nil, attrs{PublicIPv6: netip.MustParseAddr("2001:db8::1")},
			`{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-type":"","flannel.alpha.coreos.com/backend-v6-data":"null","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ipv6":"2001:db8::1"}}}`},
	} {
		a, _ := newAnnotations(DefaultAnnotationPrefix)
		patch := a.annotationPatch(tc.have, tc.at)
		got := ""
		if patch != nil {
			b, err := patchBody(patch)
			if err != nil {
				t.Fatal(err)
			}
			got = string(b)
		}
		if got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

func TestAnnotationPatchCustomPrefix(t *testing.T) {
	a, err := newAnnotations("example.com/net")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := patchBody(a.annotationPatch(nil, attrs{PublicIP: netip.MustParseAddr("198.51.100.4")}))
	want := `{"metadata":{"annotations":{"example.com/net-backend-data":"null","example.com/net-backend-type":"","example.com/net-kube-subnet-manager":"true","example.com/net-public-ip":"198.51.100.4"}}}`
	if string(b) != want {
		t.Errorf("got %s\nwant %s", b, want)
	}
}

// upstreamAnnotate is an independent statement of what upstream's
// AcquireLease does to a node's annotations for the udp backend (IPv4):
// when any of its four annotations differs, or an overwrite names another
// address, it sets backend-type "", backend-data "null", public-ip (the
// overwrite's value when set) and kube-subnet-manager "true". It returns
// nil when upstream sends nothing.
func upstreamAnnotate(have map[string]string, publicIP string) map[string]string {
	const p = "flannel.alpha.coreos.com/"
	ow := have[p+"public-ip-overwrite"]
	if have[p+"backend-data"] == "null" && have[p+"backend-type"] == "" && have[p+"public-ip"] == publicIP &&
		have[p+"kube-subnet-manager"] == "true" && (ow == "" || ow == publicIP) {
		return nil
	}
	out := map[string]string{}
	for k, v := range have {
		out[k] = v
	}
	out[p+"backend-type"] = ""
	out[p+"backend-data"] = "null"
	out[p+"public-ip"] = publicIP
	if ow != "" {
		out[p+"public-ip"] = ow
	}
	out[p+"kube-subnet-manager"] = "true"
	return out
}

// FuzzAnnotationPatch compares our patch with upstream's, computed as
// upstream computes it: the two-way strategic merge patch between the
// node before and after upstreamAnnotate.
func FuzzAnnotationPatch(f *testing.F) {
	f.Add("null", "", "true", "192.0.2.1", "", "192.0.2.1", false)
	f.Add("", "vxlan", "", "", "203.0.113.9", "192.0.2.1", true)
	f.Add("null", "", "true", "203.0.113.9", "203.0.113.9", "192.0.2.1", false)
	f.Fuzz(func(t *testing.T, data, typ, managed, ip, ow, publicIP string, absent bool) {
		addr, err := netip.ParseAddr(publicIP)
		if err != nil || !addr.Is4() {
			return
		}
		for _, s := range []string{data, typ, managed, ip, ow} {
			if !utf8.ValidString(s) {
				return // the API server's JSON never holds such strings
			}
		}
		publicIP = addr.String()
		const p = "flannel.alpha.coreos.com/"
		have := map[string]string{"node.alpha.kubernetes.io/ttl": "0", p + "backend-data": data, p + "backend-type": typ,
			p + "kube-subnet-manager": managed, p + "public-ip": ip, p + "public-ip-overwrite": ow}
		if absent {
			// Absent and empty differ for the patch: upstream writes
			// backend-type "" on a node that lacks it.
			delete(have, p+"backend-type")
			delete(have, p+"public-ip-overwrite")
		}
		a, _ := newAnnotations(DefaultAnnotationPrefix)
		ours := a.annotationPatch(have, attrs{PublicIP: addr})
		want := upstreamAnnotate(have, publicIP)
		var up string
		if want != nil {
			old, after := corev1.Node{}, corev1.Node{}
			old.Annotations, after.Annotations = have, want
			before, _ := json.Marshal(old)
			afterB, _ := json.Marshal(after)
			b, err := strategicpatch.CreateTwoWayMergePatch(before, afterB, corev1.Node{})
			if err != nil {
				t.Fatal(err)
			}
			if up = string(b); up == "{}" {
				up = ""
			}
		}
		var got string
		if ours != nil {
			b, _ := patchBody(ours)
			got = string(b)
		}
		if got != up {
			t.Fatalf("annotations %q, public IP %s:\n ours     %s\n upstream %s", have, publicIP, got, up)
		}
	})
}
