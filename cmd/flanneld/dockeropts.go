//go:build linux

package main

import (
	"io"

	"github.com/flannel-go/flannel-go/internal/dockeropts"
)

func mkDockerOpts(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return dockeropts.Main(args, getenv, stdout, stderr, nil)
}
