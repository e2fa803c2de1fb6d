package kube

import (
	"fmt"
	"os"

	"github.com/flannel-go/flannel-go/lease"
)

// DefaultNetConfPath is upstream's --net-config-path default, where the
// DaemonSet mounts the ConfigMap's net-conf.json.
const DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"

// ReadNetConf reads and parses the network config file (upstream's
// net-conf.json: the same JSON as etcd's <prefix>/config). Errors name
// the file and, for a parse error, upstream's text.
func ReadNetConf(path string) (*lease.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read net conf: %w (the DaemonSet mounts the ConfigMap's net-conf.json there; see --net-config-path)", err)
	}
	return ParseNetConf(path, data)
}

// ParseNetConf parses the content of net-conf.json read from path.
func ParseNetConf(path string, data []byte) (*lease.Config, error) {
	cfg, err := lease.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("error parsing subnet config %s: %w", path, err)
	}
	return cfg, nil
}
