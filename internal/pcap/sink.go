package pcap

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/pcapgo"
)

// Sink limits.
const (
	DefaultSnapLen = 2048     // covers a default 1472-byte overlay MTU
	MaxSnapLen     = 65535    // largest IPv4 packet
	bufferBudget   = 4 << 20  // bytes of preallocated records per sink
	minRecords     = 64       // a snaplen near MaxSnapLen still buffers bursts
	maxRecords     = 4096     // at small snaplens the budget is not the limit
	flushEvery     = 64 << 10 // bufio size between the writer and w
)

// SinkOptions shapes a Sink.
type SinkOptions struct {
	// Filter selects the directions to keep (zero: both).
	Filter Filter
	// SnapLen is the most bytes kept of each packet (zero: DefaultSnapLen);
	// longer packets are truncated, with their original length recorded.
	SnapLen int
	// Records is the number of packets the sink buffers between the
	// router and the writer (zero: as many as fit in 4 MiB, 64 to 4096).
	Records int
}

// record is one buffered packet. The records are allocated once and cycle
// between the free and full queues.
type record struct {
	ts   time.Time
	orig int
	buf  []byte // len is the captured length
}

// Sink buffers captured packets for Stream. Capture never waits for the
// writer: when every record is in use the packet is dropped and counted.
type Sink struct {
	filter  Filter
	snapLen int
	free    chan *record
	full    chan *record
	dropped atomic.Uint64
}

// NewSink allocates a sink and all of its records.
func NewSink(opts SinkOptions) (*Sink, error) {
	if opts.Filter == 0 {
		opts.Filter = FilterBoth
	}
	if opts.SnapLen == 0 {
		opts.SnapLen = DefaultSnapLen
	}
	if opts.SnapLen < 1 || opts.SnapLen > MaxSnapLen {
		return nil, fmt.Errorf("snap length %d: want 1 to %d", opts.SnapLen, MaxSnapLen)
	}
	if opts.Records == 0 {
		opts.Records = min(max(bufferBudget/opts.SnapLen, minRecords), maxRecords)
	}
	if opts.Records < 1 {
		return nil, fmt.Errorf("records %d: want at least 1", opts.Records)
	}
	s := &Sink{
		filter:  opts.Filter,
		snapLen: opts.SnapLen,
		free:    make(chan *record, opts.Records),
		full:    make(chan *record, opts.Records),
	}
	slab := make([]byte, opts.Records*opts.SnapLen)
	recs := make([]record, opts.Records)
	for i := range recs {
		recs[i].buf = slab[i*opts.SnapLen : (i+1)*opts.SnapLen : (i+1)*opts.SnapLen]
		s.free <- &recs[i]
	}
	return s, nil
}

// Capture copies pkt into a free record for the writer, or counts a drop
// when there is none. It never blocks and does not retain pkt, so it may be
// called from every forwarding goroutine at once, also after Stream ended.
func (s *Sink) Capture(dir Direction, pkt []byte) {
	if !s.filter.Has(dir) {
		return
	}
	select {
	case r := <-s.free:
		r.ts = time.Now()
		r.orig = len(pkt)
		r.buf = r.buf[:copy(r.buf[:cap(r.buf)], pkt)]
		// Never blocks: full has room for every record there is.
		s.full <- r
	default:
		s.dropped.Add(1)
	}
}

// Dropped is the number of packets lost because the buffer was full.
func (s *Sink) Dropped() uint64 { return s.dropped.Load() }

// flusher is implemented by http.ResponseWriter; flushing it after each
// burst lets a client watch the capture live.
type flusher interface{ Flush() }

// Stream writes a pcap file header to w, then every captured packet until
// ctx is done; what was captured by then is written too. It returns the
// number of packets written. Call it once per sink.
func (s *Sink) Stream(ctx context.Context, w io.Writer) (int, error) {
	bw := bufio.NewWriterSize(w, flushEvery)
	pw := pcapgo.NewWriterNanos(bw)
	if err := pw.WriteFileHeader(uint32(s.snapLen), LinkType); err != nil {
		return 0, fmt.Errorf("write pcap header: %w", err)
	}
	flush := func() error {
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write pcap: %w", err)
		}
		if f, ok := w.(flusher); ok {
			f.Flush()
		}
		return nil
	}
	if err := flush(); err != nil {
		return 0, err
	}
	n := 0
	write := func(r *record) error {
		ci := gopacket.CaptureInfo{Timestamp: r.ts, CaptureLength: len(r.buf), Length: r.orig}
		err := pw.WritePacket(ci, r.buf)
		s.free <- r
		if err != nil {
			return fmt.Errorf("write pcap record %d: %w", n+1, err)
		}
		n++
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case r := <-s.full:
					if err := write(r); err != nil {
						return n, err
					}
				default:
					return n, flush()
				}
			}
		case r := <-s.full:
			if err := write(r); err != nil {
				return n, err
			}
			// Flush once per burst rather than per packet.
			if len(s.full) == 0 {
				if err := flush(); err != nil {
					return n, err
				}
			}
		}
	}
}
