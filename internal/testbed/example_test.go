package testbed_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// A program builds a bed with New, makes Ctrl-C delete it, and puts a
// container behind the first host's bridge. Tests use testbed.NewT instead,
// which also registers Close with t.Cleanup.
func ExampleNew() {
	ctx := context.Background()
	b, err := testbed.New(ctx, testbed.Options{Hosts: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	stop := testbed.CleanupOnSignal(b)
	defer stop()

	c, err := b.Hosts[0].AddContainer(ctx, "c1", netip.MustParsePrefix("198.18.32.1/24"), 1472)
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := c.Run(ctx, "ping", "-c", "1", c.Gateway.String())
	fmt.Println(out, err)
}
