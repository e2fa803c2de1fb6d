package deps

import (
	_ "github.com/VictoriaMetrics/metrics"
	_ "github.com/coreos/go-iptables/iptables"
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "github.com/google/gopacket/layers"
	_ "github.com/google/gopacket/pcapgo"
	_ "github.com/songgao/water"
	_ "github.com/vishvananda/netlink"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "go.uber.org/zap"
	_ "golang.org/x/net/ipv4"
	_ "golang.org/x/sys/unix"
)
