//go:build !linux

package udp

import "errors"

// Listen fails: the batch calls and UDP offloads are Linux's.
func Listen(Config) (Conn, error) { return nil, errors.New("udp: batch I/O runs on Linux only") }
