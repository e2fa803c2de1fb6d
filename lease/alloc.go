package lease

import (
	"errors"
	"math/rand/v2"
	"net/netip"
)

// maxCandidates is how many free subnets, from the low end, a random pick
// chooses among (upstream's policy).
const maxCandidates = 100

var errOutOfSubnets = errors.New("out of subnets")

// compatible reports whether a lease's subnets fit the config, as
// upstream's isSubnetConfigCompat and isIPv6SubnetConfigCompat: each family
// the config enables has a subnet of the right length inside its
// [SubnetMin, SubnetMax]; a family it disables has none.
func compatible(cfg *Config, sn subnets) bool {
	if cfg.EnableIPv4 != sn.V4.IsValid() || cfg.EnableIPv6 != sn.V6.IsValid() {
		return false
	}
	return (!cfg.EnableIPv4 || compatible4(cfg, sn.V4)) && (!cfg.EnableIPv6 || compatible6(cfg, sn.V6))
}

// compatible6 is compatible4 for the IPv6 subnet.
func compatible6(cfg *Config, p netip.Prefix) bool {
	if !p.IsValid() || !p.Addr().Is6() || p.Bits() != cfg.IPv6SubnetLen {
		return false
	}
	return p.Addr().Compare(cfg.IPv6SubnetMin) >= 0 && p.Addr().Compare(cfg.IPv6SubnetMax) <= 0
}

// compatible4 reports whether an IPv4 subnet fits the config: right length
// and inside [SubnetMin, SubnetMax].
func compatible4(cfg *Config, p netip.Prefix) bool {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() != cfg.SubnetLen {
		return false
	}
	a := v4(p.Addr())
	return a >= v4(cfg.SubnetMin) && a <= v4(cfg.SubnetMax)
}

// pickSubnet walks the range from SubnetMin, collects up to 100 subnets that
// overlap no taken one, and picks one of them at random.
func pickSubnet(cfg *Config, taken []netip.Prefix, rnd *rand.Rand) (netip.Prefix, error) {
	isTaken := takenSet(taken, cfg.SubnetLen)
	size := uint64(1) << (32 - cfg.SubnetLen)
	var free []netip.Prefix
	for a := uint64(v4(cfg.SubnetMin)); a <= uint64(v4(cfg.SubnetMax)) && len(free) < maxCandidates; a += size {
		if p := netip.PrefixFrom(fromV4(uint32(a)), cfg.SubnetLen); !isTaken(p) {
			free = append(free, p)
		}
	}
	return pickFree(free, rnd)
}

// takenSet reports whether a subnet of length bits is taken: equal to a
// taken subnet of that length (a map look-up) or overlapping one of
// another length (a scan of the few such).
func takenSet(taken []netip.Prefix, bits int) func(netip.Prefix) bool {
	exact := make(map[netip.Prefix]struct{}, len(taken))
	var other []netip.Prefix
	for _, t := range taken {
		if t.Bits() == bits {
			exact[t.Masked()] = struct{}{}
		} else {
			other = append(other, t)
		}
	}
	return func(p netip.Prefix) bool {
		_, ok := exact[p]
		return ok || overlapsAny(p, other)
	}
}

// pickFree picks one of the free subnets at random.
func pickFree(free []netip.Prefix, rnd *rand.Rand) (netip.Prefix, error) {
	if len(free) == 0 {
		return netip.Prefix{}, errOutOfSubnets
	}
	return free[rnd.IntN(len(free))], nil
}

func overlapsAny(p netip.Prefix, list []netip.Prefix) bool {
	for _, q := range list {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// pickSubnet6 is pickSubnet for the IPv6 subnet: up to 100 free subnets
// from IPv6SubnetMin on, one of them at random.
func pickSubnet6(cfg *Config, taken []netip.Prefix, rnd *rand.Rand) (netip.Prefix, error) {
	isTaken := takenSet(taken, cfg.IPv6SubnetLen)
	size := u128{}.setBit(128 - cfg.IPv6SubnetLen)
	max := v6(cfg.IPv6SubnetMax)
	var free []netip.Prefix
	for a := v6(cfg.IPv6SubnetMin); !a.greater(max) && len(free) < maxCandidates; {
		p := netip.PrefixFrom(a.addr(), cfg.IPv6SubnetLen)
		if !isTaken(p) {
			free = append(free, p)
		}
		next := a.add(size)
		if !next.greater(a) {
			break // wrapped past the top of the address space
		}
		a = next
	}
	return pickFree(free, rnd)
}
