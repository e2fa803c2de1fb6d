package kernelmatrix

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Guest layout. The host's root is the guest's root (read-only), the
// shared directory is mounted at GuestWork, the kernel's modules at
// guestModules/lib/modules, so that modprobe -d guestModules finds them.
const (
	GuestWork    = "/mnt"
	guestModules = "/run/kernel"
)

// Console markers: the host reads the guest's progress from these lines.
const (
	markInit   = "KMATRIX-INIT"   // the initramfs runs
	markGuest  = "KMATRIX-GUEST"  // the harness runs in the guest
	markError  = "KMATRIX-ERROR"  // the initramfs could not set up the guest
	markExit   = "KMATRIX-EXIT"   // the harness exited, with its status
	markResult = "KMATRIX-RESULT" // the row's result as one JSON line
)

// bootModules are what the initramfs loads to reach the 9p shares; their
// dependencies come along (built-in ones are skipped).
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p"}

// initScript is the initramfs's /init (busybox sh): mount the host's root
// and the shares, point the kernel's module loader at the guest's modules,
// run the harness in the host's root and power off.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "{{.Init}} $(uname -r)"
fail() { echo "{{.Error}} $*"; poweroff -f; }
for m in $(cat /mods/order); do insmod /mods/$m || fail "insmod $m"; done
r=/newroot o=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o $o,ro,cache=loose hostroot $r || fail "mount the host's root (9p tag hostroot)"
mount -t tmpfs -o mode=755 run $r/run || fail "tmpfs on /run"
mkdir -p $r{{.Modules}}/lib/modules $r/run/netns
mount -t 9p -o $o,ro,cache=loose modules $r{{.Modules}}/lib/modules || fail "mount the kernel's modules (9p tag modules)"
mount -t 9p -o $o work $r{{.Work}} || fail "mount the shared directory (9p tag work) on {{.Work}}"
mount -t proc proc $r/proc; mount -t sysfs sys $r/sys; mount -t devtmpfs dev $r/dev
mount -t tmpfs -o mode=1777 tmp $r/tmp || fail "tmpfs on /tmp"
mkdir -p $r/dev/pts $r/dev/shm; mount -t devpts devpts $r/dev/pts; mount -t tmpfs shm $r/dev/shm
mount -t bpf bpf $r/sys/fs/bpf || fail "mount bpffs"
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup || fail "mount cgroup2"
mount -t tracefs tracefs $r/sys/kernel/tracing 2>/dev/null
printf '#!/bin/busybox sh\nexec chroot %s /sbin/modprobe -d {{.Modules}} "$@"\n' $r >/bin/guest-modprobe
chmod +x /bin/guest-modprobe
echo /bin/guest-modprobe >/proc/sys/kernel/modprobe
chroot $r {{.Work}}/{{.Harness}} guest {{.Work}}
echo "{{.Exit}} $?"
poweroff -f
`

// BuildInitramfs writes an uncompressed initramfs (newc cpio) for k to
// file: busybox, the modules that reach the 9p shares, and /init.
func BuildInitramfs(ctx context.Context, k *KernelTree, file string) error {
	idx, err := ReadModuleIndex(filepath.Join(k.Modules, k.Release))
	if err != nil {
		return fmt.Errorf("%s: %w", k.Package, err)
	}
	order, err := idx.LoadOrder(bootModules...)
	if err != nil {
		return fmt.Errorf("%s: %w", k.Package, err)
	}
	stage, err := os.MkdirTemp("", "kmatrix-initramfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"bin", "mods", "newroot", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox (Debian package busybox-static) is needed for the guest's initramfs: %w", err)
	}
	if err := copyFile(busybox, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	var names []string
	for i, m := range order {
		name := fmt.Sprintf("%02d-%s", i, filepath.Base(m))
		if err := copyFile(filepath.Join(k.Modules, k.Release, m), filepath.Join(stage, "mods", name), 0o644); err != nil {
			return err
		}
		names = append(names, name)
	}
	if err := os.WriteFile(filepath.Join(stage, "mods", "order"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	r := strings.NewReplacer("{{.Init}}", markInit, "{{.Error}}", markError, "{{.Exit}}", markExit,
		"{{.Modules}}", guestModules, "{{.Work}}", GuestWork, "{{.Harness}}", HarnessBin)
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(r.Replace(initScript)), 0o755); err != nil {
		return err
	}
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	defer out.Close()
	// find lists the tree for cpio, which writes the archive.
	cmd := exec.CommandContext(ctx, "sh", "-c", "find . | busybox cpio -o -H newc")
	var stderr strings.Builder
	cmd.Dir, cmd.Stdout, cmd.Stderr = stage, out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initramfs cpio: %w\n%s", err, stderr.String())
	}
	return out.Close()
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
