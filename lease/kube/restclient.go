package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Client makes the few API calls flanneld needs (get a pod, list and
// watch nodes, patch a node's status) with a REST client that knows only
// the core/v1 types: client-go's typed clientset links every API group,
// which tripled flanneld's size.
type Client struct {
	rc rest.Interface
}

// coreScheme holds core/v1 and the meta types its answers use (Status,
// WatchEvent, the list options).
var coreScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(err) // static registration; cannot fail
	}
	return s
}()

// NewClient returns a Client for the API server cfg reaches.
func NewClient(cfg *rest.Config) (*Client, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.APIPath = "/api"
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(coreScheme).WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("unable to initialize client: %w", err)
	}
	return &Client{rc: rc}, nil
}

func (c *Client) getPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var p corev1.Pod
	err := c.rc.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(&p)
	return &p, err
}

// patchNodeStatus sends a strategic merge patch to a node's status
// subresource.
func (c *Client) patchNodeStatus(ctx context.Context, name string, body []byte) error {
	return c.rc.Patch(types.StrategicMergePatchType).Resource("nodes").Name(name).SubResource("status").Body(body).Do(ctx).Error()
}

// nodesListWatch lists and watches all nodes.
func (c *Client) nodesListWatch() cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.rc, "nodes", metav1.NamespaceAll, fields.Everything())
}
