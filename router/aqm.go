package router

import (
	"encoding/binary"
	"github.com/flannel-go/flannel-go/internal/inet"
	"math"
)

// codel decides, per dequeued batch, whether the queue in front of the
// router has stood above target for an interval, after RFC 8289's CoDel:
// once it has, it signals (a CE mark or a drop) and signals again after
// interval/sqrt(count), until the delay falls below target. A TCP flow
// then backs off, and the queue it keeps in front of us stays near target
// in time, whatever its size in packets. Times are nanoseconds on the
// worker's clock. One codel belongs to one direction of one worker.
type codel struct {
	target, interval int64
	firstAbove       int64 // when the delay may count as standing; 0: below target
	dropNext         int64
	count            uint32
	lastCount        uint32
	dropping         bool
}

// signal reports whether a packet dequeued at now after delay should be
// marked or dropped.
func (c *codel) signal(delay, now int64) bool {
	if c.target <= 0 {
		return false
	}
	if delay < c.target {
		c.firstAbove = 0
		c.dropping = false
		return false
	}
	if c.firstAbove == 0 {
		c.firstAbove = now + c.interval
		return false
	}
	if !c.dropping {
		if now < c.firstAbove {
			return false
		}
		c.dropping = true
		// Resume near the previous rate when the last episode was recent.
		if delta := c.count - c.lastCount; c.count > 2 && delta > 1 && now-c.dropNext < 16*c.interval {
			c.count = delta
		} else {
			c.count = 1
		}
		c.lastCount = c.count
		c.dropNext = c.controlLaw(now)
		return true
	}
	if now < c.dropNext {
		return false
	}
	c.count++
	c.dropNext = c.controlLaw(now)
	return true
}

func (c *codel) controlLaw(t int64) int64 {
	return t + int64(float64(c.interval)/math.Sqrt(float64(c.count)))
}

// markCE sets Congestion Experienced on the IPv4 or IPv6 packet p when it
// is ECN-capable (ECT(0) or ECT(1)), patching the IPv4 header checksum,
// and reports whether it did; a packet that is not must be dropped
// instead.
func markCE(p []byte) bool {
	if p[0]>>4 == 6 {
		return markCE6(p)
	}
	tos := p[1]
	switch tos & 3 {
	case 0:
		return false
	case 3:
		return true
	}
	old := binary.BigEndian.Uint16(p[0:2])
	p[1] = tos | 3
	hc := binary.BigEndian.Uint16(p[10:12])
	binary.BigEndian.PutUint16(p[10:12], inet.ChecksumUpdate(hc, old, binary.BigEndian.Uint16(p[0:2])))
	return true
}
