package etcdserver

import (
	"fmt"
	"log/slog"
	"os"
)

// privateDir creates the data directory with mode 0700, or takes group and
// other access away from an existing one: it holds the whole flannel
// keyspace, and with authentication on the users' password hashes. etcd
// itself only warns about a wider mode.
func privateDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("embedded etcd: create data directory %s: %w", dir, err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("embedded etcd: data directory %s: %w", dir, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("embedded etcd: data directory %s is not a directory", dir)
	}
	if mode := info.Mode().Perm(); mode&0o077 != 0 {
		if err := os.Chmod(dir, mode&0o700); err != nil {
			return fmt.Errorf("embedded etcd: restrict data directory %s (mode %v) to its owner: %w", dir, mode, err)
		}
		log.Info("Restricted the embedded etcd's data directory to its owner", "dir", dir, "was", mode, "now", mode&0o700)
	}
	return nil
}
