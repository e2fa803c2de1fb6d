package pcap

import (
	"os/exec"
	"testing"
)

// tcpdumpRead decodes a pcap file with tcpdump, as a user would.
func tcpdumpRead(t testing.TB, path string) (string, error) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "tcpdump", "-nn", "-r", path).CombinedOutput()
	return string(out), err
}
