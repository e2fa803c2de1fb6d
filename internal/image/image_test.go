package image

import (
	"bytes"
	"strings"
	"testing"
)

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"./lib/x86_64-linux-gnu/libc.so.6": "usr/lib/x86_64-linux-gnu/libc.so.6",
		"./lib64/ld-linux-x86-64.so.2":     "usr/lib64/ld-linux-x86-64.so.2",
		"./usr/sbin/xtables-nft-multi":     "usr/sbin/xtables-nft-multi",
		"./sbin":                           "usr/sbin",
		"./":                               "",
		"./etc/../etc/protocols":           "etc/protocols",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDropped(t *testing.T) {
	for p, want := range map[string]bool{
		"usr/share/man/man8/iptables.8.gz":     true,
		"usr/share/man":                        false,
		"usr/share/doc/iptables/changelog.gz":  true,
		"usr/share/doc/iptables/copyright":     false,
		"usr/share/doc/libip4tc2":              false,
		"usr/sbin/iptables-nft":                false,
		"usr/share/locale/de/LC_MESSAGES/x.mo": true,
	} {
		if got := dropped(p); got != want {
			t.Errorf("dropped(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestLockRoundTrip(t *testing.T) {
	debs := []Deb{{"libgmp10", "2:6.2.1+dfsg1-1.1", "amd64", strings.Repeat("ab", 32)}, {"iptables", "1.8.9-2", "amd64", strings.Repeat("cd", 32)}}
	var b bytes.Buffer
	if err := WriteLock(&b, debs); err != nil {
		t.Fatal(err)
	}
	got, err := ReadLock(&b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != debs[1] || got[1] != debs[0] {
		t.Fatalf("round trip gave %v", got)
	}
	if got[1].File() != "libgmp10_2%3a6.2.1+dfsg1-1.1_amd64.deb" {
		t.Errorf("file name %q: apt-get download escapes the epoch's colon", got[1].File())
	}
	if _, err := ReadLock(strings.NewReader("iptables 1.8.9-2 amd64\n")); err == nil {
		t.Error("a line without checksum was accepted")
	}
}
