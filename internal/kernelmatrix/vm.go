package kernelmatrix

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// VM boots a kernel in QEMU with the host's root shared read-only and
// Work shared read-write, and runs the harness in guest mode there.
type VM struct {
	Kernel  *KernelTree
	Initrd  string
	Work    string // holds the binaries and row.json; the guest writes its logs and result.json here
	MemMiB  int
	CPUs    int
	Timeout time.Duration
	Accel   string    // QEMU's -accel, DefaultAccel when empty
	Console io.Writer // the guest's console, line by line
}

// DefaultAccel is TCG on every CPU: a /dev/kvm may exist without working
// (these machines' does: KVM cannot start a guest here), and the matrix
// never measures speed.
const DefaultAccel = "tcg,thread=multi"

// qemuArgs is QEMU's command line: no default devices, the serial console
// on stdio, three 9p shares. Expedited RCU: creating and deleting network
// namespaces and devices waits for grace periods, which TCG's slow timers
// stretch.
func (v *VM) qemuArgs() []string {
	accel := v.Accel
	if accel == "" {
		accel = DefaultAccel
	}
	share := func(path, tag, extra string) []string {
		return []string{"-virtfs", "local,path=" + path + ",mount_tag=" + tag + ",security_model=none,multidevs=remap" + extra}
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-accel", accel, "-cpu", "max", "-smp", fmt.Sprint(v.CPUs), "-m", fmt.Sprint(v.MemMiB),
		"-kernel", v.Kernel.Image, "-initrd", v.Initrd,
		"-append", "console=ttyS0 quiet panic=-1 rcupdate.rcu_expedited=1",
	}
	args = append(args, share("/", "hostroot", ",readonly=on")...)
	args = append(args, share(v.Kernel.Modules, "modules", ",readonly=on")...)
	return append(args, share(v.Work, "work", "")...)
}

// escapes are terminal control sequences on the console.
var escapes = regexp.MustCompile(`\x1b(\[[?0-9;]*[a-zA-Z]|c)|\r`)

// Run boots the guest and returns the result it wrote. An error says what
// went wrong with the kernel or the guest, with the console's last lines.
func (v *VM) Run(ctx context.Context) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, v.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", v.qemuArgs()...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start qemu-system-x86_64 (Debian package qemu-system-x86): %w", err)
	}
	seen := make(chan consoleState, 1)
	go func() { seen <- v.watch(pr) }()
	runErr := cmd.Wait()
	pw.Close()
	st := <-seen
	last := "\nlast console lines:\n" + strings.Join(st.tail, "\n")
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return Result{}, fmt.Errorf("%s did not finish within %s%s", v.Kernel.Package, v.Timeout, last)
	case !st.init:
		return Result{}, fmt.Errorf("%s did not boot to its initramfs (qemu: %v)%s", v.Kernel.Package, runErr, last)
	case st.errLine != "":
		return Result{}, fmt.Errorf("%s booted, but the guest could not be set up: %s%s", v.Kernel.Package, st.errLine, last)
	case !st.guest:
		return Result{}, fmt.Errorf("%s booted, but the harness did not start in the guest%s", v.Kernel.Package, last)
	case st.exit == "":
		return Result{}, fmt.Errorf("%s: the guest stopped before the harness exited (kernel panic?)%s", v.Kernel.Package, last)
	}
	b, err := os.ReadFile(filepath.Join(v.Work, "result.json"))
	if err != nil {
		return Result{}, fmt.Errorf("%s: the harness exited (%s) without a result: %w%s", v.Kernel.Package, st.exit, err, last)
	}
	var res Result
	if err := json.Unmarshal(b, &res); err != nil {
		return Result{}, fmt.Errorf("%s: result.json: %w", v.Kernel.Package, err)
	}
	return res, nil
}

// consoleState is what the console showed.
type consoleState struct {
	init, guest bool
	errLine     string
	exit        string
	tail        []string
}

func (v *VM) watch(r io.Reader) consoleState {
	var st consoleState
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := escapes.ReplaceAllString(sc.Text(), "")
		fmt.Fprintln(v.Console, line)
		if st.tail = append(st.tail, line); len(st.tail) > 30 {
			st.tail = st.tail[1:]
		}
		switch {
		case strings.HasPrefix(line, markInit):
			st.init = true
		case strings.HasPrefix(line, markGuest):
			st.guest = true
		case strings.HasPrefix(line, markError) && st.errLine == "":
			st.errLine = line
		case strings.HasPrefix(line, markExit):
			st.exit = strings.TrimSpace(strings.TrimPrefix(line, markExit))
		}
	}
	io.Copy(io.Discard, r)
	return st
}

// Guest is the harness inside the VM: load the modules, run the row's
// tests, write result.json to work and print it as one line.
func Guest(ctx context.Context, work string, console io.Writer) int {
	fmt.Fprintln(console, markGuest, Release())
	// The initramfs's PATH is busybox's; the tests run the host's tools.
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/root")
	var cfg RowConfig
	b, err := os.ReadFile(filepath.Join(work, "row.json"))
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		fmt.Fprintln(console, markError, "row.json:", err)
		return 2
	}
	// One modprobe for all: each process start costs up to a second in
	// TCG. It loads what it can and names what it cannot.
	var warnings []string
	args := append([]string{"-d", guestModules, "-a"}, cfg.Modules...)
	if out, err := exec.CommandContext(ctx, "modprobe", args...).CombinedOutput(); err != nil {
		warnings = append(warnings, fmt.Sprintf("modprobe: %v: %s", err, strings.TrimSpace(string(out))))
		fmt.Fprintln(console, "kernel-matrix: warning:", warnings[0])
	}
	start := time.Now()
	// Run the binaries from tmpfs: older kernels' 9p pages an executable
	// in one small read per fault, which makes each start take seconds.
	bin := "/tmp/kernel-matrix-bin"
	for _, name := range []string{FastPathTestBin, FlanneldTestBin, FlanneldBin} {
		if err := copyFile(filepath.Join(work, name), filepath.Join(bin, name), 0o755); err != nil {
			fmt.Fprintln(console, markError, "copy the binaries to tmpfs:", err)
			return 2
		}
	}
	res := RunTests(ctx, cfg, bin, work, console)
	res.Warnings = append(warnings, res.Warnings...)
	res.Seconds = time.Since(start).Seconds()
	line, _ := json.Marshal(res)
	if err := os.WriteFile(filepath.Join(work, "result.json"), line, 0o644); err != nil {
		fmt.Fprintln(console, markError, "write result:", err)
		return 2
	}
	fmt.Fprintln(console, markResult, string(line))
	if !res.OK {
		return 1
	}
	return 0
}
