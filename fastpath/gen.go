package fastpath

// The objects are committed so that a plain go build needs no clang; the
// test TestObjectsMatchSources regenerates them and compares.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -Ibpf/include" -target bpfel -type counter -type probe -type capture_rec -go-package fastpath bpf bpf/fastpath.c
