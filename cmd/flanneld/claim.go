//go:build linux

package main

// claimIdentity is the lease manager's Identity: empty, which turns the
// PublicIP claim off, with --public-ip-claim=false.
func claimIdentity(o *options, ext *extIface) string {
	if !o.publicIPClaim {
		return ""
	}
	return nodeIdentity(ext)
}
