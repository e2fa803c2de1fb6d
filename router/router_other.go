//go:build !linux

package router

import (
	"context"
	"errors"

	"github.com/flannel-go/flannel-go/tun"
)

// The data plane is Linux's (recvmmsg, UDP GSO/GRO, TUN); elsewhere the
// package compiles, so that tools and editors work, and New says why not.

var errNotLinux = errors.New("router: the data plane runs on Linux only")

// New fails: there is no data plane outside Linux.
func New(Config, []tun.Queue) (*Router, error) { return nil, errNotLinux }

// Run fails: there is no data plane outside Linux.
func (r *Router) Run(context.Context) error { return errNotLinux }

func (r *Router) gsoInUse() bool { return false }

// Close has nothing to close outside Linux.
func (r *Router) Close() error { return nil }
