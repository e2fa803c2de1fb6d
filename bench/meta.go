package bench

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
)

// Describe names what a result measured: the commit (git describe, with
// "-dirty" for uncommitted changes), the sha256 of the binary under test
// (none when bin is empty), the command line, and the machine. Every
// committed result file carries it, so that a figure can be traced to the
// code and the host that produced it.
func Describe(bin string, args []string) map[string]string {
	m := map[string]string{
		"go":      runtime.Version(),
		"nproc":   fmt.Sprint(runtime.NumCPU()),
		"command": strings.Join(args, " "),
	}
	m["commit"] = startCommit
	if bin != "" {
		m["binary"] = bin
		if sum, err := fileSHA256(bin); err == nil {
			m["binary_sha256"] = sum
		} else {
			m["binary_sha256"] = "unknown: " + err.Error()
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if model := cpuModel(); model != "" {
		m["cpu"] = model
	}
	return m
}

// startCommit is the commit measured: the one `make bench` built the binary
// from ($FLANNEL_BENCH_COMMIT), else the checkout's when the process
// started. A run takes most of an hour, and a commit made meanwhile, or
// between the build and the start of this process, must not be named.
var startCommit = describeCommit()

func describeCommit() string {
	if c := os.Getenv("FLANNEL_BENCH_COMMIT"); c != "" {
		return c
	}
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// WriteConfig writes m as Go benchmark-format configuration lines
// ("key: value"), which benchstat keeps with the results that follow.
func WriteConfig(w io.Writer, m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if _, err := fmt.Fprintf(w, "%s: %s\n", k, strings.ReplaceAll(m[k], "\n", " ")); err != nil {
			return err
		}
	}
	return nil
}
