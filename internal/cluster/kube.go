package cluster

import (
	"os"
	"path/filepath"
	"strings"
)

// NetConfFile is the name of a node's net-conf.json in its directory, in
// a Kubernetes cluster (Options.Kube).
const NetConfFile = "net-conf.json"

// subnetManagerArgs are the flags that point flanneld at its subnet
// manager: the cluster's etcd (host 1 running the embedded one unless
// there are separate members), or the Kubernetes API with the node's
// net-conf.json; the test adds how to reach the API server.
func (n *Node) subnetManagerArgs() []string {
	c := n.cluster
	if c.opts.Kube {
		return []string{"--kube-subnet-mgr", "--net-config-path=" + filepath.Join(n.Dir, NetConfFile)}
	}
	args := []string{"--etcd-endpoints=" + strings.Join(c.EtcdEndpoints(), ",")}
	if n.Index == 1 && len(c.EtcdMembers) == 0 {
		args = append(args, "--etcd-embedded="+filepath.Join(c.opts.Dir, "etcd"))
	}
	return args
}

// writeNetConf gives every node the network config as its net-conf.json,
// as the DaemonSet's ConfigMap does.
func (c *Cluster) writeNetConf() error {
	for _, n := range c.Nodes {
		if err := os.WriteFile(filepath.Join(n.Dir, NetConfFile), []byte(c.opts.Config), 0o644); err != nil {
			return err
		}
	}
	return nil
}
