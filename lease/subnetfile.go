package lease

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// SubnetFile is the content of the subnet file (default
// /run/flannel/subnet.env).
type SubnetFile struct {
	Network netip.Prefix // config Network
	Subnet  netip.Prefix // the lease subnet; the file writes network+1, e.g. 198.18.32.1/24
	// IPv6Network and IPv6Subnet are the config's IPv6Network and the
	// lease's IPv6 subnet, written as 2001:db8:100:1a::1/64.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	MTU         int
	IPMasq      bool
}

// Bytes renders the file exactly as upstream does, in its order:
// FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_NETWORK,
// FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ. The IPv4 lines are left
// out when Network is not set (IPv4 disabled), the IPv6 lines when
// IPv6Network is not set (IPv6 disabled).
func (sf SubnetFile) Bytes() []byte {
	var b bytes.Buffer
	if sf.Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", sf.Network)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s/%d\n", sf.Subnet.Masked().Addr().Next(), sf.Subnet.Bits())
	}
	if sf.IPv6Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", sf.IPv6Network)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s/%d\n", sf.IPv6Subnet.Masked().Addr().Next(), sf.IPv6Subnet.Bits())
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", sf.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", sf.IPMasq)
	return b.Bytes()
}

// WriteSubnetFile writes the subnet file atomically: a temporary file in the
// same directory renamed over path, mode 0644 whatever the umask, parent
// directories created with mode 0755.
func WriteSubnetFile(path string, sf SubnetFile) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+base+".*")
	if err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if _, err := f.Write(sf.Bytes()); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	return nil
}

// ReadSubnetFile reads a subnet file leniently, as upstream's dotenv reader
// does: KEY=value lines, optional "export " and quotes, comments ignored.
// Values that do not parse, and comma lists of more than one entry, leave
// the field at its zero value. Only I/O errors are returned.
func ReadSubnetFile(path string) (SubnetFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return SubnetFile{}, fmt.Errorf("read subnet file: %w", err)
	}
	var sf SubnetFile
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		val = strings.Trim(strings.TrimSpace(val), `"'`)
		switch key {
		case "FLANNEL_NETWORK":
			sf.Network = parseEnvPrefix(val, false)
		case "FLANNEL_SUBNET":
			sf.Subnet = parseEnvPrefix(val, false)
		case "FLANNEL_IPV6_NETWORK":
			sf.IPv6Network = parseEnvPrefix(val, true)
		case "FLANNEL_IPV6_SUBNET":
			sf.IPv6Subnet = parseEnvPrefix(val, true)
		case "FLANNEL_MTU":
			if n, err := strconv.Atoi(val); err == nil && n > 0 {
				sf.MTU = n
			}
		case "FLANNEL_IPMASQ":
			sf.IPMasq, _ = strconv.ParseBool(val)
		}
	}
	if err := sc.Err(); err != nil {
		return SubnetFile{}, fmt.Errorf("read subnet file %s: %w", path, err)
	}
	return sf, nil
}

// parseEnvPrefix turns "198.18.32.1/24" into 198.18.32.0/24 (and
// "2001:db8:100:1a::1/64" into 2001:db8:100:1a::/64 when ipv6), like Go's
// net.ParseCIDR does for upstream. A list of several entries means none, a
// prefix of the other family too.
func parseEnvPrefix(val string, ipv6 bool) netip.Prefix {
	if strings.Contains(val, ",") {
		parts := strings.Split(val, ",")
		if len(parts) != 1 {
			return netip.Prefix{}
		}
	}
	p, err := netip.ParsePrefix(val)
	if err != nil || p.Addr().Zone() != "" || p.Addr().Is4() == ipv6 || p.Addr().Is4In6() {
		return netip.Prefix{}
	}
	return p.Masked()
}
