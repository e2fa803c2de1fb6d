package tun

import (
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestOpenNamePattern opens upstream's "flannel%d" in a fresh namespace
// where flannel0 already exists (a leftover, or another flanneld with
// another --etcd-prefix): the kernel picks flannel1 and every queue
// attaches to it; a fixed name that exists is still refused.
func TestOpenNamePattern(t *testing.T) {
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	testbed.RequireTUN(t)
	err := h.Do(func() error {
		first, err := Open("flannel%d", 2)
		if err != nil {
			return fmt.Errorf("first Open: %w", err)
		}
		defer first.Close()
		if first.Name != "flannel0" {
			return fmt.Errorf("first device is %q, want flannel0", first.Name)
		}
		second, err := Open("flannel%d", 3)
		if err != nil {
			return fmt.Errorf("second Open with flannel0 taken: %w", err)
		}
		defer second.Close()
		if second.Name != "flannel1" || len(second.Queues) != 3 {
			return fmt.Errorf("second device %q with %d queues, want flannel1 with 3", second.Name, len(second.Queues))
		}
		if _, err := netlink.LinkByName("flannel1"); err != nil {
			return fmt.Errorf("flannel1 not in the namespace: %w", err)
		}
		if _, err := netlink.LinkByName("flannel2"); err == nil {
			return fmt.Errorf("the queues of the second device created flannel2 instead of attaching to flannel1")
		}
		if d, err := Open("flannel0", 1); err == nil {
			d.Close()
			return fmt.Errorf("Open(flannel0) attached to the existing device")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
