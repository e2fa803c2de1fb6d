package fastpath

import (
	"encoding/binary"
	"errors"
	"os"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// capture is a running reader of the programs' capture ring.
type capture struct {
	rd   *ringbuf.Reader
	done chan struct{}
}

// The record's layout, as bpf2go generated struct capture_rec.
var (
	capHdrLen    = int(unsafe.Offsetof(bpfCaptureRec{}.Data))
	capCaplenOff = int(unsafe.Offsetof(bpfCaptureRec{}.Caplen))
	capDirOff    = int(unsafe.Offsetof(bpfCaptureRec{}.Dir))
)

// SetTap starts copying the packets the programs carry into t, or stops
// when t is nil. The programs check one array entry per packet and write
// into the ring only while a tap is set, so an idle capture costs nothing
// else. Packets longer than the record's data (2048 bytes: TSO
// super-packets) are captured truncated to their beginning.
func (p *Path) SetTap(t dataplane.Tap) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tap != nil {
		if err := p.objs.Capture.Put(uint32(0), uint32(0)); err != nil {
			return err
		}
		p.tap.rd.Close()
		<-p.tap.done
		p.tap = nil
	}
	if t == nil {
		return nil
	}
	rd, err := ringbuf.NewReader(p.objs.Ring)
	if err != nil {
		return err
	}
	c := &capture{rd: rd, done: make(chan struct{})}
	go c.run(t)
	if err := p.objs.Capture.Put(uint32(0), uint32(1)); err != nil {
		rd.Close()
		<-c.done
		return err
	}
	p.tap = c
	return nil
}

func (c *capture) run(t dataplane.Tap) {
	defer close(c.done)
	var rec ringbuf.Record
	for {
		if err := c.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			continue
		}
		raw := rec.RawSample
		if len(raw) < capHdrLen {
			continue
		}
		caplen := int(binary.NativeEndian.Uint16(raw[capCaplenOff:]))
		dir := dataplane.Out
		if raw[capDirOff] == 1 {
			dir = dataplane.In
		}
		if capHdrLen+caplen > len(raw) || caplen == 0 {
			continue
		}
		t.Capture(dir, raw[capHdrLen:capHdrLen+caplen])
	}
}
