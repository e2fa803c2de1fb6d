package router

import (
	"errors"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// syscallOp names the data-plane calls whose errors are counted.
type syscallOp uint8

const (
	opRecvmmsg syscallOp = iota
	opSendmmsg
	opTunRead
	opTunWrite
	numOps
)

var opNames = [numOps]string{"recvmmsg", "sendmmsg", "tun_read", "tun_write"}

// maxErrno bounds the errno values counted one by one; larger ones share
// the last slot.
const maxErrno = 160

// errnoCounts counts one direction's failed calls by operation and errno.
// Transient errors (ENOBUFS, ENOMEM, ECONNREFUSED after an ICMP port
// unreachable, ...) never stop a worker: they are counted here and logged
// once per errno per minute.
type errnoCounts struct {
	n       [numOps][maxErrno]atomic.Uint64
	lastLog [numOps][maxErrno]int64 // ns on the worker's clock; owner goroutine only
}

// errnoOf returns err's errno, or EIO for an error without one.
func errnoOf(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return unix.EIO
}

// count counts e for op and reports whether it should be logged now.
func (c *errnoCounts) count(op syscallOp, e unix.Errno, now time.Duration) bool {
	i := min(int(e), maxErrno-1)
	c.n[op][i].Add(1)
	if last := c.lastLog[op][i]; last != 0 && int64(now)-last < int64(time.Minute) {
		return false
	}
	c.lastLog[op][i] = max(int64(now), 1)
	return true
}

// SyscallError is a count of failed data-plane calls.
type SyscallError struct {
	Op    string // recvmmsg, sendmmsg, tun_read, tun_write
	Errno string // e.g. ENOBUFS
	Count uint64
}

func (c *errnoCounts) addTo(m map[[2]string]uint64) {
	for op := range c.n {
		for e := range c.n[op] {
			if v := c.n[op][e].Load(); v > 0 {
				m[[2]string{opNames[op], unix.ErrnoName(unix.Errno(e))}] += v
			}
		}
	}
}
