//go:build !linux

package fastpath

import "errors"

// Outside Linux there is no TC and no fast path; the package compiles so
// that tools and editors work.

var errNotLinux = errors.New("fast path: Linux only")

type clsactFilter struct{}

func (*clsactFilter) Close() error { return nil }

func attachClsact(hook) (*clsactFilter, error) { return nil, errNotLinux }

func removeOurFilters(int) (int, error) { return 0, nil }
