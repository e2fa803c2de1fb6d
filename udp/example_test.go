package udp_test

import (
	"fmt"
	"net/netip"

	"github.com/flannel-go/flannel-go/udp"
)

// A Conn sends each message's datagrams to its address, as GSO trains
// where it can. (Compiled, not run: it needs an interface with 192.0.2.1.)
func Example() {
	c, err := udp.Listen(udp.Config{Addr: netip.MustParseAddrPort("192.0.2.1:8285")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	peer := netip.MustParseAddrPort("192.0.2.2:8285")
	out := []udp.Message{{Buffers: [][]byte{[]byte("one"), []byte("two")}, Addr: peer}}
	if _, err := c.WriteBatch(out); err != nil {
		fmt.Println(err)
	}
}
