#!/bin/sh
# Builds kube-apiserver and kubectl from k8s.io/kubernetes, at the version
# this directory's go.mod requires, for `make test-kube`; once: they are
# cached in $FLANNEL_KUBE_CACHE (default $HOME/.cache/flannel-kube)/<version>,
# the directory this script prints. The module is kept out of the main
# go.mod (it needs Kubernetes' 31 staging modules replaced by their
# published versions); the build runs in a copy so the tree stays clean,
# and go.sum pins every module it downloads.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go.mod")
[ -n "$version" ] || { echo "$0: no k8s.io/kubernetes requirement in $here/go.mod" >&2; exit 1; }
dir=${FLANNEL_KUBE_CACHE:-$HOME/.cache/flannel-kube}/$version
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kubectl" ]; then
	echo "$dir"
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work" "$dir.tmp"' EXIT
cp "$here/go.mod" "$here/go.sum" "$work/"
minor=$(echo "$version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
echo "building kube-apiserver and kubectl $version into $dir (about 7 minutes on 2 cores, once)" >&2
mkdir -p "$dir.tmp"
(cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 "${GO:-go}" build -trimpath -ldflags "$ldflags" -o "$dir.tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) >&2
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$dir.tmp" "$dir"
echo "$dir"
