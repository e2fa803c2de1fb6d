// Package lease implements flannel's etcd v3 data model: the network config
// at <prefix>/config, one subnet lease per node under <prefix>/subnets, and
// the subnet file. It acquires, renews and watches leases; it never touches
// packets.
package lease

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultUDPPort is the udp backend's port when Backend.Port is absent.
const DefaultUDPPort = 8285

// Config is the network config read from <prefix>/config, with the
// derived values (SubnetLen, SubnetMin, SubnetMax) filled in.
type Config struct {
	Network     netip.Prefix
	SubnetLen   int
	SubnetMin   netip.Addr
	SubnetMax   netip.Addr
	EnableIPv4  bool
	EnableIPv6  bool
	IPv6Network netip.Prefix // parsed; the udp backend rejects EnableIPv6 with a clear message
	// IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are derived like their
	// IPv4 counterparts when EnableIPv6 is set.
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr
	BackendType   string // lower-cased; "udp" when Backend is absent
	Port          int    // udp backend port, default 8285
	// EnableNFTables installs the --ip-masq and forward rules with
	// nftables instead of iptables, as upstream v0.28 does.
	EnableNFTables bool
}

// jsonConfig mirrors the JSON document; encoding/json already matches keys
// case-insensitively and ignores unknown ones, as upstream does. The CIDR
// and address fields are values, as upstream's, so that a JSON null reaches
// their parser and fails there as it does upstream; IPv6SubnetMin and
// IPv6SubnetMax are pointers upstream, where null means unset.
type jsonConfig struct {
	Network       cidr4
	SubnetLen     uint
	SubnetMin     addr4
	SubnetMax     addr4
	EnableIPv4    *bool
	EnableIPv6    bool
	IPv6Network   cidr6
	IPv6SubnetLen uint
	IPv6SubnetMin addr6
	IPv6SubnetMax addr6
	Backend       json.RawMessage
	// EnableNFTables is a plain bool, as upstream's: a non-boolean value
	// fails the whole config there too.
	EnableNFTables bool
}

type cidr4 struct{ p netip.Prefix }

func (c *cidr4) UnmarshalJSON(b []byte) error {
	p, err := parseCIDR(b)
	if err != nil {
		return err
	}
	if !p.Addr().Is4() {
		return errors.New("invalid IPv4 CIDR format")
	}
	c.p = p
	return nil
}

// cidr6 takes any CIDR, as upstream's IP6Net does: an IPv4 one matters
// (and fails) only when EnableIPv6 is set.
type cidr6 struct{ p netip.Prefix }

func (c *cidr6) UnmarshalJSON(b []byte) error {
	p, err := parseCIDR(b)
	if err != nil {
		return err
	}
	c.p = p
	return nil
}

// parseCIDR accepts what Go's net.ParseCIDR accepts (quotes trimmed like
// upstream) and masks host bits.
func parseCIDR(b []byte) (netip.Prefix, error) {
	s := string(bytes.Trim(b, `"`))
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR address: %s", s)
	}
	return p.Masked(), nil
}

type addr4 struct{ a netip.Addr }

func (a *addr4) UnmarshalJSON(b []byte) error {
	ip, err := netip.ParseAddr(string(bytes.Trim(b, `"`)))
	if err != nil || ip.Zone() != "" {
		return errors.New("invalid IP address format")
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return errors.New("invalid IPv4 address format")
	}
	a.a = ip
	return nil
}

// addr6 takes any IP address, as upstream's IP6 does; an IPv4 address
// becomes its IPv4-mapped form, which no IPv6Network check accepts.
type addr6 struct{ a netip.Addr }

func (a *addr6) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	ip, err := netip.ParseAddr(string(bytes.Trim(b, `"`)))
	if err != nil || ip.Zone() != "" {
		return errors.New("invalid IP address format")
	}
	a.a = netip.AddrFrom16(ip.As16())
	return nil
}

// decodeConfig unmarshals the document into a type named as upstream's
// struct, which json's type errors name: "cannot unmarshal string into Go
// struct field Config.EnableIPv6 of type bool".
func decodeConfig(data []byte) (jsonConfig, error) {
	type Config jsonConfig
	var jc Config
	err := json.Unmarshal(data, &jc)
	return jsonConfig(jc), err
}

// ParseConfig parses and validates the network config JSON. Error texts are
// upstream flannel's, so an operator can search for them.
func ParseConfig(data []byte) (*Config, error) {
	jc, err := decodeConfig(data)
	if err != nil {
		return nil, err
	}
	cfg := &Config{
		EnableIPv4:    true,
		EnableIPv6:    jc.EnableIPv6,
		SubnetLen:     int(min(jc.SubnetLen, 1<<16)),
		SubnetMin:     jc.SubnetMin.a,
		SubnetMax:     jc.SubnetMax.a,
		IPv6SubnetLen: int(min(jc.IPv6SubnetLen, 1<<16)),
		IPv6SubnetMin: jc.IPv6SubnetMin.a,
		IPv6SubnetMax: jc.IPv6SubnetMax.a,

		EnableNFTables: jc.EnableNFTables,
	}
	if jc.EnableIPv4 != nil {
		cfg.EnableIPv4 = *jc.EnableIPv4
	}
	cfg.Network, cfg.IPv6Network = jc.Network.p, jc.IPv6Network.p
	if err := parseBackend(cfg, jc.Backend); err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func parseBackend(cfg *Config, raw json.RawMessage) error {
	cfg.Port = DefaultUDPPort
	if len(raw) == 0 {
		cfg.BackendType = "udp"
		return nil
	}
	var bt struct{ Type string }
	if err := json.Unmarshal(raw, &bt); err != nil {
		return fmt.Errorf("error decoding Backend property of config: %v", err)
	}
	cfg.BackendType = strings.ToLower(bt.Type)
	if cfg.BackendType != "udp" {
		return nil
	}
	var udp struct{ Port int }
	if err := json.Unmarshal(raw, &udp); err != nil {
		return fmt.Errorf("error decoding UDP backend config: %v", err)
	}
	if udp.Port != 0 {
		if udp.Port < 0 || udp.Port > 65535 {
			return fmt.Errorf("error decoding UDP backend config: Port %d out of range 1..65535", udp.Port)
		}
		cfg.Port = udp.Port
	}
	return nil
}

// Validate checks an already derived config, e.g. one built in code. A
// config returned by ParseConfig always validates.
func (c *Config) Validate() error {
	cp := *c
	if err := cp.check(); err != nil {
		return err
	}
	if cp != *c {
		return errors.New("config is not in its derived form")
	}
	return nil
}

// check validates and fills in derived values (upstream CheckNetworkConfig).
func (c *Config) check() error {
	if c.EnableIPv4 {
		if !c.Network.IsValid() || (c.Network.Addr().IsUnspecified() && c.Network.Bits() == 0) {
			return errors.New("please define a correct Network parameter in the flannel config")
		}
		bits := c.Network.Bits()
		if c.SubnetLen > 0 {
			if c.SubnetLen > 30 {
				return errors.New("SubnetLen must be less than /31")
			}
			if c.SubnetLen < bits+2 {
				return errors.New("network must be able to accommodate at least four subnets")
			}
		} else {
			switch {
			case bits > 28:
				return errors.New("network is too small. Minimum useful network prefix is /28")
			case bits <= 22:
				c.SubnetLen = 24
			default:
				c.SubnetLen = bits + 2
			}
		}
		size := uint32(1) << (32 - c.SubnetLen)
		netIP := v4(c.Network.Addr())
		if !c.SubnetMin.IsValid() || c.SubnetMin.IsUnspecified() {
			c.SubnetMin = fromV4(netIP + size)
		} else if !c.Network.Contains(c.SubnetMin) {
			return errors.New("SubnetMin is not in the range of the Network")
		}
		if !c.SubnetMax.IsValid() || c.SubnetMax.IsUnspecified() {
			next := netIP + uint32(uint64(1)<<(32-bits))
			c.SubnetMax = fromV4(next - size)
		} else if !c.Network.Contains(c.SubnetMax) {
			return errors.New("SubnetMax is not in the range of the Network")
		}
		mask := ^(size - 1)
		if v4(c.SubnetMin)&mask != v4(c.SubnetMin) {
			return fmt.Errorf("SubnetMin is not on a SubnetLen boundary: %v", c.SubnetMin)
		}
		if v4(c.SubnetMax)&mask != v4(c.SubnetMax) {
			return fmt.Errorf("SubnetMax is not on a SubnetLen boundary: %v", c.SubnetMax)
		}
	}
	if c.EnableIPv6 {
		if err := c.check6(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) check6() error {
	if !c.IPv6Network.IsValid() || (c.IPv6Network.Addr().IsUnspecified() && c.IPv6Network.Bits() == 0) {
		return errors.New("please define a correct IPv6Network parameter in the flannel config")
	}
	if !c.IPv6Network.Addr().Is6() || c.IPv6Network.Addr().Is4In6() {
		// Upstream reads 198.18.0.0/16 here as ::ffff:198.18.0.0 with a
		// 16-bit prefix and hands out subnets of ::/16; refuse it instead.
		return fmt.Errorf("invalid IPv6 CIDR format: IPv6Network %s is not an IPv6 network", c.IPv6Network)
	}
	bits := c.IPv6Network.Bits()
	if c.IPv6SubnetLen > 0 {
		if c.IPv6SubnetLen > 126 {
			return errors.New("SubnetLen must be less than /127")
		}
		if c.IPv6SubnetLen < bits+2 {
			return errors.New("network must be able to accommodate at least four subnets")
		}
	} else {
		switch {
		case bits > 124:
			return errors.New("IPv6Network is too small. Minimum useful network prefix is /124")
		case bits <= 62:
			c.IPv6SubnetLen = 64
		default:
			c.IPv6SubnetLen = bits + 2
		}
	}
	size := u128{}.setBit(128 - c.IPv6SubnetLen)
	netIP := v6(c.IPv6Network.Addr())
	if !c.IPv6SubnetMin.IsValid() || c.IPv6SubnetMin.IsUnspecified() {
		c.IPv6SubnetMin = netIP.add(size).addr()
	} else if !c.IPv6Network.Contains(c.IPv6SubnetMin) {
		return errors.New("IPv6SubnetMin is not in the range of the IPv6Network")
	}
	if !c.IPv6SubnetMax.IsValid() || c.IPv6SubnetMax.IsUnspecified() {
		next := netIP.add(u128{}.setBit(128 - bits))
		c.IPv6SubnetMax = next.sub(size).addr()
	} else if !c.IPv6Network.Contains(c.IPv6SubnetMax) {
		return errors.New("IPv6SubnetMax is not in the range of the IPv6Network")
	}
	if netip.PrefixFrom(c.IPv6SubnetMin, c.IPv6SubnetLen).Masked().Addr() != c.IPv6SubnetMin {
		return fmt.Errorf("IPv6SubnetMin is not on a SubnetLen boundary: %v", c.IPv6SubnetMin)
	}
	if netip.PrefixFrom(c.IPv6SubnetMax, c.IPv6SubnetLen).Masked().Addr() != c.IPv6SubnetMax {
		return fmt.Errorf("IPv6SubnetMax is not on a SubnetLen boundary: %v", c.IPv6SubnetMax)
	}
	return nil
}

func v4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func fromV4(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// u128 is an IPv6 address as a number, for subnet arithmetic.
type u128 struct{ hi, lo uint64 }

func v6(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr() netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

// setBit returns u with bit n (0 = least significant) set; n == 128 wraps to 0.
func (u u128) setBit(n int) u128 {
	switch {
	case n < 64:
		u.lo |= 1 << n
	case n < 128:
		u.hi |= 1 << (n - 64)
	}
	return u
}

func (u u128) add(v u128) u128 {
	lo := u.lo + v.lo
	carry := uint64(0)
	if lo < u.lo {
		carry = 1
	}
	return u128{u.hi + v.hi + carry, lo}
}

func (u u128) greater(v u128) bool { return u.hi > v.hi || (u.hi == v.hi && u.lo > v.lo) }

func (u u128) sub(v u128) u128 {
	lo := u.lo - v.lo
	borrow := uint64(0)
	if lo > u.lo {
		borrow = 1
	}
	return u128{u.hi - v.hi - borrow, lo}
}
