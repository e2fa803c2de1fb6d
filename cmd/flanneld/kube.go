//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/flannel-go/flannel-go/internal/extiface"
	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/lease/kube"
)

// kubeOptions are upstream's Kubernetes subnet manager flags, with its
// names, defaults and help texts.
type kubeOptions struct {
	enabled                   bool
	apiURL                    string
	annotationPrefix          string
	kubeconfig                string
	netConfPath               string
	setNodeNetworkUnavailable bool
}

func (k *kubeOptions) addFlags(fs *flag.FlagSet) {
	fs.BoolVar(&k.enabled, "kube-subnet-mgr", false, "contact the Kubernetes API for subnet assignment instead of etcd.")
	fs.StringVar(&k.apiURL, "kube-api-url", "", "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.")
	fs.StringVar(&k.annotationPrefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix, `Kubernetes annotation prefix. Can contain single slash "/", otherwise it will be appended at the end.`)
	fs.StringVar(&k.kubeconfig, "kubeconfig-file", "", "kubeconfig file location. Does not need to be specified if flannel is running in a pod.")
	fs.StringVar(&k.netConfPath, "net-config-path", kube.DefaultNetConfPath, "path to the network configuration file")
	fs.BoolVar(&k.setNodeNetworkUnavailable, "set-node-network-unavailable", true, "set NodeNetworkUnavailable after ready")
}

// validate checks the Kubernetes flags when --kube-subnet-mgr is on; they
// are ignored otherwise, as upstream.
func (k *kubeOptions) validate(o *options) error {
	if !k.enabled {
		return nil
	}
	var errs []error
	if err := kube.CheckAnnotationPrefix(k.annotationPrefix); err != nil {
		errs = append(errs, fmt.Errorf("--kube-annotation-prefix: %w", err))
	}
	if o.etcdEmbedded != "" {
		errs = append(errs, errors.New("--etcd-embedded runs the etcd subnet manager's store; it has no use with --kube-subnet-mgr"))
	}
	return errors.Join(errs...)
}

// kubeSource is the Kubernetes API as the subnet manager's store: the
// config from --net-config-path, the subnets from the nodes' podCIDRs.
type kubeSource struct {
	d *daemon
	m *kube.Manager
}

// connectKube builds the API client (kubeconfig, URL or in-cluster) and
// finds this node's name.
func (d *daemon) connectKube(ctx context.Context) (subnetSource, error) {
	o := d.o.kube
	// client-go logs through klog; send it to our log instead of stderr
	// in klog's format.
	klog.SetSlogLogger(d.log)
	rc, err := kube.RESTConfig(o.apiURL, o.kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "flanneld/" + version
	c, err := kube.NewClient(rc)
	if err != nil {
		return nil, err
	}
	name, err := kube.NodeName(ctx, c, os.Getenv, d.log)
	if err != nil {
		return nil, err
	}
	m, err := kube.New(c, kube.Options{
		NodeName:                  name,
		AnnotationPrefix:          o.annotationPrefix,
		NetConfPath:               o.netConfPath,
		SetNodeNetworkUnavailable: o.setNodeNetworkUnavailable,
		Logger:                    d.log,
		Observer:                  newLeaseMetrics(),
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("Created subnet manager: Kubernetes Subnet Manager - "+name, "api_server", rc.Host)
	return &kubeSource{d: d, m: m}, nil
}

// WaitConfig reads net-conf.json and waits for this node's podCIDR. As
// upstream, the node's node-public-ip and node-public-ipv6 annotations
// replace --public-ip and --public-ipv6 for choosing the interface.
func (s *kubeSource) WaitConfig(ctx context.Context) (*lease.Config, error) {
	cfg, err := s.m.WaitConfig(ctx)
	if err != nil {
		return nil, err
	}
	v4, v6 := s.m.StoredPublicAddrs()
	if v4 != "" {
		s.d.log.Info("Using the public IP from the node's annotation", "ip", v4)
		s.d.o.publicIP = v4
	}
	if v6 != "" {
		s.d.log.Info("Using the public IPv6 from the node's annotation", "ip", v6)
		s.d.o.publicIPv6 = v6
	}
	return cfg, nil
}

// Manager publishes the interface's public addresses on the node.
func (s *kubeSource) Manager(ext *extiface.Iface, _ lease.SubnetFile) subnetManager {
	s.m.SetPublicAddrs(ext.ExtAddr, ext.ExtV6Addr)
	return s.m
}

func (s *kubeSource) Close() { s.m.Close() }
