package cluster

import (
	"context"
	"strings"
	"testing"
)

func TestStartOptionErrors(t *testing.T) {
	for _, tt := range []struct {
		opts Options
		want string
	}{
		{Options{}, "Options.Flanneld is required"},
		{Options{Flanneld: "/bin/false", Hosts: 2, Idle: 2}, "Options.Idle 2 out of range for 2 hosts"},
		{Options{Flanneld: "/bin/false", Hosts: 2, Idle: 3, EtcdMembers: 1}, "Options.Idle 3 out of range for 2 hosts"},
		{Options{Flanneld: "/bin/false", Hosts: 2, Idle: -1}, "Options.Idle -1 out of range"},
	} {
		tt.opts.Dir = t.TempDir()
		c, err := Start(context.Background(), tt.opts)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Start(%+v) = %v, %v; want error %q", tt.opts, c, err, tt.want)
		}
	}
}
