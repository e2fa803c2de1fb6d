//go:build linux

package main

import "github.com/flannel-go/flannel-go/internal/extiface"

// claimIdentity is the lease manager's Identity: empty, which turns the
// PublicIP claim off, with --public-ip-claim=false.
func claimIdentity(o *options, ext *extiface.Iface) string {
	if !o.publicIPClaim {
		return ""
	}
	return nodeIdentity(ext)
}
