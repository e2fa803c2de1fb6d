//go:build linux

package main

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/extiface"
	"github.com/flannel-go/flannel-go/lease"
)

// subnetManager is what the daemon needs of a subnet manager once it
// holds a lease: etcd's *lease.Manager and Kubernetes' *kube.Manager. Both
// speak lease.Lease and lease.Event, so routesync, the router and the
// fast path do not know which one feeds them.
type subnetManager interface {
	Acquire(ctx context.Context, cfg *lease.Config) (lease.Lease, error)
	Watch(ctx context.Context, events chan<- []lease.Event) error
	Keep(ctx context.Context, cfg *lease.Config, l lease.Lease, onChange func(lease.Lease)) error
	Close()
}

// subnetSource is where the network config and the leases live: etcd, or
// the Kubernetes API with --kube-subnet-mgr. The daemon waits for the
// config, picks its interface by it, then asks for the manager of this
// node's addresses.
type subnetSource interface {
	WaitConfig(ctx context.Context) (*lease.Config, error)
	Manager(ext *extiface.Iface, prev lease.SubnetFile) subnetManager
	// Close closes what the source opened; close the manager first.
	Close()
}

// openSource connects to the subnet manager's store.
func (d *daemon) openSource(ctx context.Context) (subnetSource, error) {
	if d.o.kube.enabled {
		return d.connectKube(ctx)
	}
	cli, closeEtcd, err := d.connectEtcd(ctx)
	if err != nil {
		return nil, err
	}
	return &etcdSource{d: d, cli: cli, close: closeEtcd}, nil
}

// etcdSource is the etcd subnet manager's store: <prefix>/config and the
// leases under <prefix>/subnets.
type etcdSource struct {
	d     *daemon
	cli   *clientv3.Client
	close func()
}

// WaitConfig reads <prefix>/config with a manager of its own: the leasing
// one needs the interface, which the config chooses.
func (s *etcdSource) WaitConfig(ctx context.Context) (*lease.Config, error) {
	cm := lease.NewManager(s.cli, lease.Options{Prefix: s.d.o.etcdPrefix, Logger: s.d.log})
	defer cm.Close()
	return cm.WaitConfig(ctx)
}

func (s *etcdSource) Manager(ext *extiface.Iface, prev lease.SubnetFile) subnetManager {
	return s.d.newManager(s.cli, ext, prev)
}

func (s *etcdSource) Close() { s.close() }
