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

// compatible reports whether a subnet fits the config: right length and
// inside [SubnetMin, SubnetMax].
func compatible(cfg *Config, p netip.Prefix) bool {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() != cfg.SubnetLen {
		return false
	}
	a := v4(p.Addr())
	return a >= v4(cfg.SubnetMin) && a <= v4(cfg.SubnetMax)
}

// pickSubnet walks the range from SubnetMin, collects up to 100 subnets that
// overlap no taken one, and picks one of them at random.
func pickSubnet(cfg *Config, taken []netip.Prefix, rnd *rand.Rand) (netip.Prefix, error) {
	exact := make(map[netip.Prefix]struct{}, len(taken))
	var other []netip.Prefix
	for _, t := range taken {
		if t.Bits() == cfg.SubnetLen {
			exact[t.Masked()] = struct{}{}
		} else {
			other = append(other, t)
		}
	}
	size := uint64(1) << (32 - cfg.SubnetLen)
	var free []netip.Prefix
	for a := uint64(v4(cfg.SubnetMin)); a <= uint64(v4(cfg.SubnetMax)) && len(free) < maxCandidates; a += size {
		p := netip.PrefixFrom(fromV4(uint32(a)), cfg.SubnetLen)
		if _, ok := exact[p]; ok {
			continue
		}
		if overlapsAny(p, other) {
			continue
		}
		free = append(free, p)
	}
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
