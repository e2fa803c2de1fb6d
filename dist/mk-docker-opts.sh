#!/bin/sh
# Upstream flannel installs mk-docker-opts.sh; flannel-go implements it in
# flanneld, so this name only hands over, keeping the caller's arguments.
exec flanneld mk-docker-opts "$@"
