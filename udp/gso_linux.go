package udp

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// maxGSOSegs and maxGSOBytes bound one UDP_SEGMENT send: the kernel
	// takes at most 64 segments (UDP_MAX_SEGMENTS on older kernels) and
	// one UDP datagram's worth of payload, 65535-20-8 bytes.
	maxGSOSegs  = 64
	maxGSOBytes = 65507
)

var (
	gsoCtlLen = unix.CmsgSpace(2) // UDP_SEGMENT: a u16 segment size
	groCtlLen = unix.CmsgSpace(4) // UDP_GRO: an int segment size
	// inCtlLen holds UDP_GRO and SCM_TIMESTAMPNS (a struct timespec).
	inCtlLen = groCtlLen + unix.CmsgSpace(16)
)

// initGSOCtl writes the UDP_SEGMENT control message header into b; the
// segment size follows per send.
func initGSOCtl(b []byte) {
	c := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	c.Level, c.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	c.SetLen(unix.CmsgLen(2))
}

// parseCtl reads a received message's control messages: the UDP_GRO
// segment size (0 if none) and the SCM_TIMESTAMPNS time in wall-clock
// nanoseconds (0 if none).
func parseCtl(ctl []byte) (seg int, stamp int64) {
	for len(ctl) >= unix.CmsgLen(0) {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(c.Len)
		if l < unix.CmsgLen(0) || l > len(ctl) {
			return seg, stamp
		}
		data := ctl[unix.CmsgLen(0):l]
		switch {
		case c.Level == unix.SOL_UDP && c.Type == unix.UDP_GRO && len(data) >= 4:
			seg = max(0, int(int32(binary.NativeEndian.Uint32(data))))
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SO_TIMESTAMPNS && len(data) >= 16:
			stamp = int64(binary.NativeEndian.Uint64(data))*1e9 + int64(binary.NativeEndian.Uint64(data[8:]))
		}
		ctl = ctl[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(ctl)):]
	}
	return seg, stamp
}

// trains fills the send headers with the datagrams of msgs from
// msgs[m].Buffers[at] on, until the headers or iovecs run out, and returns
// the header count and where the next call goes on. With gso, a run of
// datagrams whose sizes are equal (the last may be shorter) becomes one
// header with one iovec each and a UDP_SEGMENT control message: the kernel
// still sends one datagram per iovec, so the wire is the same.
func (c *conn) trains(msgs []Message, m, at int, gso bool) (nh, nextM, nextAt int) {
	iov := 0
	for m < len(msgs) && nh < len(c.whdrs) && iov < len(c.wiovs) {
		bufs := msgs[m].Buffers
		if at >= len(bufs) {
			m, at = m+1, 0
			continue
		}
		first := iov
		size := len(bufs[at])
		total := size
		setIov(&c.wiovs[iov], bufs[at])
		iov, at = iov+1, at+1
		for gso && size > 0 && at < len(bufs) && iov-first < maxGSOSegs && iov < len(c.wiovs) {
			l := len(bufs[at])
			if l > size || total+l > maxGSOBytes {
				break
			}
			setIov(&c.wiovs[iov], bufs[at])
			iov, at, total = iov+1, at+1, total+l
			if l < size {
				break
			}
		}
		c.setHdr(nh, msgs[m].Addr, first, iov-first, size)
		c.wmsg[nh] = int32(m)
		nh++
	}
	return nh, m, at
}

// setName writes addr into sa as the socket's family wants it. An address
// of the other family (or none) gets the other family's tag, which the
// kernel refuses for this message alone, with EAFNOSUPPORT on an IPv4
// socket and ENETUNREACH on an IPv6 one (IPV6_V6ONLY): never a mapped
// address, and never the unspecified one, which would mean this host.
func (c *conn) setName(sa *unix.RawSockaddrInet6, addr netip.AddrPort) {
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], addr.Port())
	ip := addr.Addr()
	if c.v6 {
		sa.Family = unix.AF_INET6
		if !ip.Is6() || ip.Is4In6() {
			sa.Family = unix.AF_INET
		}
		sa.Addr = ip.As16()
		return
	}
	ip = ip.Unmap()
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	sa4.Family = unix.AF_INET
	sa4.Addr = [4]byte{}
	if !ip.Is4() {
		sa4.Family = unix.AF_INET6
		return
	}
	sa4.Addr = ip.As4()
}

func setIov(v *unix.Iovec, b []byte) {
	v.Base = unsafe.SliceData(b)
	v.SetLen(len(b))
}

// setHdr points send header h at segs iovecs from first, to addr, with a
// UDP_SEGMENT of size when it carries more than one datagram.
func (c *conn) setHdr(h int, addr netip.AddrPort, first, segs, size int) {
	c.setName(&c.wnames[h], addr)
	hdr := &c.whdrs[h].Hdr
	hdr.Iov = &c.wiovs[first]
	hdr.SetIovlen(segs)
	if segs > 1 {
		ctl := c.wctl[h*gsoCtlLen : (h+1)*gsoCtlLen]
		binary.NativeEndian.PutUint16(ctl[unix.CmsgLen(0):], uint16(size))
		hdr.Control = &ctl[0]
		hdr.SetControllen(gsoCtlLen)
	} else {
		hdr.Control = nil
		hdr.SetControllen(0)
	}
	c.wsegs[h] = int32(segs)
}
