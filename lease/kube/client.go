package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig is how flanneld reaches the API server: --kube-api-url
// and/or --kubeconfig-file when given, else the in-cluster config of a
// pod (its service account token and the KUBERNETES_SERVICE_* variables),
// as upstream.
func RESTConfig(apiURL, kubeconfig string) (*rest.Config, error) {
	if apiURL == "" && kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("fail to create kubernetes config: not in a pod (%w); give --kubeconfig-file or --kube-api-url", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("fail to create kubernetes config: %w", err)
	}
	return cfg, nil
}

// NodeName finds the name of this node's object: NODE_NAME, or else the
// node the pod POD_NAMESPACE/POD_NAME runs on, as upstream. getenv reads
// the environment. An unreachable API server is retried (logged to log).
func NodeName(ctx context.Context, c *Client, getenv func(string) string, log *slog.Logger) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("env variables POD_NAME and POD_NAMESPACE must be set (or NODE_NAME: the name of this node's object)")
	}
	var p *corev1.Pod
	err := retry(ctx, log, fmt.Sprintf("get pod %s/%s", ns, pod), func(ctx context.Context) (err error) {
		p, err = c.getPod(ctx, ns, pod)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("error retrieving pod spec for '%s/%s': %w", ns, pod, rbacHint(err, "pods", "get"))
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("node name not present in pod spec '%s/%s'", ns, pod)
	}
	return p.Spec.NodeName, nil
}

// rbacHint adds to a Forbidden answer what to grant: the resource and
// the verbs flanneld needs on it, and where the ClusterRole that grants
// them is. Other errors are returned as they are.
func rbacHint(err error, resource string, verbs ...string) error {
	if !apierrors.IsForbidden(err) {
		return err
	}
	q := make([]string, len(verbs))
	for i, v := range verbs {
		q[i] = strconv.Quote(v)
	}
	grant := "verb " + q[0]
	if len(q) > 1 {
		grant = "verbs " + strings.Join(q, ", ")
	}
	return fmt.Errorf("%w: RBAC forbids flanneld to %s %s; grant %s on resource %q (API group \"\") to its user or service account, "+
		"as the ClusterRole \"flannel\" of flannel-go's kube-flannel.yml does", err, strings.Join(verbs, " and "), resource, grant, resource)
}

// retry calls fn until it succeeds, fails for a reason retrying does not
// cure (Forbidden, NotFound, Unauthorized, an invalid request) or ctx is
// done, with backoff from 100 ms to 5 s; the first failure is logged.
func retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	backoff := minBackoff
	for logged := false; ; logged = true {
		err := fn(ctx)
		if err == nil || ctx.Err() != nil || apierrors.IsForbidden(err) || apierrors.IsNotFound(err) ||
			apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsUnauthorized(err) {
			return err
		}
		if !logged {
			log.Warn(fmt.Sprintf("Could not %s, retrying with backoff up to %s", what, maxBackoff), "error", err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, maxBackoff)
	}
}
