package router

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips a privileged test when not root, except under CI=true,
// where a missing privilege or tool is a failure.
func requireRoot(t *testing.T) {
	t.Helper()
	fail := t.Skip
	if os.Getenv("CI") == "true" {
		fail = t.Fatal
	}
	if os.Geteuid() != 0 {
		fail("needs root (network namespaces, TUN devices)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fail("needs the ip tool (iproute2): ", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		fail("needs /dev/net/tun: ", err)
	}
}

// enterNetns creates a fresh network namespace, moves the calling
// goroutine's locked thread into it for the rest of the test and deletes
// it on cleanup, so nothing the test creates touches the root namespace.
func enterNetns(t *testing.T) {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	name := "fgo-rt-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current netns: %v", err)
	}
	if err := netns.Set(ns); err != nil {
		t.Fatalf("enter netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		// A thread that cannot go back stays locked, so the runtime
		// discards it with the goroutine instead of reusing it.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} else {
			t.Errorf("leave netns %s: %v", name, err)
		}
		orig.Close()
		ns.Close()
	})
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
}
