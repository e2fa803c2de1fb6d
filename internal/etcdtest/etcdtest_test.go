package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestBackendsPutGet(t *testing.T) {
	Backends(t, func(t *testing.T, cli *clientv3.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if len(cli.Endpoints()) == 0 {
			t.Fatal("client has no endpoints")
		}
		if _, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"198.18.0.0/16"}`); err != nil {
			t.Fatalf("put: %v", err)
		}
		resp, err := cli.Get(ctx, "/coreos.com/network/config")
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"Network":"198.18.0.0/16"}` {
			t.Fatalf("get returned %v", resp.Kvs)
		}
	})
}
