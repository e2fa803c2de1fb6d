// Package dockeropts implements mk-docker-opts: it turns flanneld's
// subnet.env into Docker daemon options (--bip, --mtu, --ip-masq) in an env
// file that docker.service reads. Its flags, output and exit codes follow
// upstream flannel's dist/mk-docker-opts.sh.
package dockeropts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Defaults of the -f, -d and -k flags.
const (
	DefaultFlannelEnv  = "/run/flannel/subnet.env"
	DefaultDockerEnv   = "/run/docker_opts.env"
	DefaultCombinedKey = "DOCKER_OPTS"
)

// optPrefix marks the variables that become Docker options.
const optPrefix = "DOCKER_OPT_"

// config holds the parsed command line.
type config struct {
	flannelEnv  string
	dockerEnv   string
	combinedKey string
	individual  bool
	combined    bool
	ipMasq      bool
}

// Main runs mk-docker-opts with the arguments that follow the program name
// and returns its exit status. The script sees the whole environment, so
// DOCKER_OPT_* variables and the -k variable may come from there: Main lists
// the names of the process environment (os.Environ) and reads their values
// through getenv. routes lists the lines of `ip route show`; nil runs
// `ip route show`. stdout is unused, as the script writes nothing there; it
// keeps the signature uniform with the other commands of flanneld.
func Main(args []string, getenv func(string) string, stdout, stderr io.Writer, routes func() ([]string, error)) int {
	var environ []string
	for _, kv := range os.Environ() {
		if k, _, ok := strings.Cut(kv, "="); ok {
			environ = append(environ, k+"="+getenv(k))
		}
	}
	return Run("mk-docker-opts.sh", args, environ, stderr, routes)
}

// Run is Main with an explicit environment: environ holds KEY=value
// entries as os.Environ returns them, and prog is the name the usage text
// shows.
func Run(prog string, args, environ []string, stderr io.Writer, routes func() ([]string, error)) int {
	cfg, err := parseArgs(args)
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		}
		fmt.Fprint(stderr, usage(prog))
		return 1
	}
	if routes == nil {
		routes = ipRouteShow
	}

	vars := make(map[string]string)
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	if st, err := os.Stat(cfg.flannelEnv); err == nil && st.Mode().IsRegular() {
		f, err := os.Open(cfg.flannelEnv)
		if err != nil {
			fmt.Fprintf(stderr, "%s: read flannel env file: %v\n", prog, err)
			return 1
		}
		err = ParseEnv(f, vars)
		f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "%s: read flannel env file %s: %v\n", prog, cfg.flannelEnv, err)
			return 1
		}
	}

	if s := vars["FLANNEL_SUBNET"]; s != "" {
		vars["DOCKER_OPT_BIP"] = "--bip=" + s
	}
	if m := vars["FLANNEL_MTU"]; m != "" {
		vars["DOCKER_OPT_MTU"] = "--mtu=" + m
	}
	if v := vars["FLANNEL_IPMASQ"]; v != "" && cfg.ipMasq {
		// flanneld masquerades itself when FLANNEL_IPMASQ=true, so Docker
		// must not, and the other way round.
		switch v {
		case "true":
			vars["DOCKER_OPT_IPMASQ"] = "--ip-masq=false"
		case "false":
			vars["DOCKER_OPT_IPMASQ"] = "--ip-masq=true"
		default:
			fmt.Fprintf(stderr, "Invalid value of FLANNEL_IPMASQ: %s\n", v)
			return 1
		}
	}

	if err := os.WriteFile(cfg.dockerEnv, []byte(render(cfg, vars)), 0o644); err != nil {
		fmt.Fprintf(stderr, "%s: write docker env file: %v\n", prog, err)
		return 1
	}

	if s := vars["FLANNEL_SUBNET"]; s != "" {
		return checkRoutes(prog, s, routes, stderr)
	}
	return 0
}

// render builds the Docker env file content.
func render(cfg config, vars map[string]string) string {
	var names []string
	for k := range vars {
		if strings.HasPrefix(k, optPrefix) {
			names = append(names, k)
		}
	}
	slices.Sort(names)

	var out strings.Builder
	combined := vars[cfg.combinedKey]
	if combined != "" {
		combined += " "
	}
	for _, n := range names {
		if cfg.individual {
			fmt.Fprintf(&out, "%s=\"%s\"\n", n, vars[n])
		}
		// The script appends " VALUE", so the value starts with a space and
		// a prepended value is followed by two.
		combined += " " + vars[n]
	}
	if cfg.combined {
		fmt.Fprintf(&out, "%s=\"%s\"\n", cfg.combinedKey, combined)
	}
	return out.String()
}

// checkRoutes fails when the routing table already has a gateway route for
// the host's own subnet: Docker's bridge would then fight that route.
func checkRoutes(prog, flannelSubnet string, routes func() ([]string, error), stderr io.Writer) int {
	subnet, err := subnetOf(flannelSubnet)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	}
	lines, err := routes()
	if err != nil {
		// The script ignores a failing `ip`; say so but do not fail.
		fmt.Fprintf(stderr, "%s: cannot check the routing table: %v\n", prog, err)
		return 0
	}
	var hits []string
	for _, l := range lines {
		if strings.Contains(l, subnet) && strings.Contains(l, "via") {
			hits = append(hits, l)
		}
	}
	if len(hits) > 0 {
		fmt.Fprintf(stderr, "Your routing table already contains the subnet: %s\n", strings.Join(hits, "\n"))
		return 1
	}
	return 0
}

// subnetOf turns FLANNEL_SUBNET a.b.c.d/len into a.b.c.(d-1)/len, the
// network address for the usual .1 bridge address.
func subnetOf(s string) (string, error) {
	addr, bits, ok := strings.Cut(s, "/")
	i := strings.LastIndexByte(addr, '.')
	if !ok || i < 0 {
		return "", fmt.Errorf("FLANNEL_SUBNET %q is not of the form a.b.c.d/len", s)
	}
	d, err := strconv.Atoi(addr[i+1:])
	if err != nil {
		return "", fmt.Errorf("FLANNEL_SUBNET %q is not of the form a.b.c.d/len: %w", s, err)
	}
	return addr[:i+1] + strconv.Itoa(d-1) + "/" + bits, nil
}

// ipRouteShow returns the lines of `ip route show`.
func ipRouteShow() ([]string, error) {
	out, err := exec.Command("ip", "route", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("ip route show: %w", err)
	}
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n"), nil
}

// ParseEnv reads shell assignments KEY=value (optionally preceded by
// "export", the value optionally in single or double quotes) into vars.
// Blank lines and # comments are skipped, and so are lines that are not an
// assignment.
func ParseEnv(r io.Reader, vars map[string]string) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok || !validName(k) {
			continue
		}
		if n := len(v); n >= 2 && (v[0] == '"' && v[n-1] == '"' || v[0] == '\'' && v[n-1] == '\'') {
			v = v[1 : n-1]
		}
		vars[k] = v
	}
	return sc.Err()
}

// validName reports whether s is a shell variable name.
func validName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

var errUsage = errors.New("usage")

// parseArgs parses args the way the script's `getopts "f:d:icmk:?h"` does:
// clustered flags (-ic), attached values (-kKEY), "--" ends the options, and
// the first non-option ends them too.
func parseArgs(args []string) (config, error) {
	cfg := config{
		flannelEnv:  DefaultFlannelEnv,
		dockerEnv:   DefaultDockerEnv,
		combinedKey: DefaultCombinedKey,
		ipMasq:      true,
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || len(a) < 2 || a[0] != '-' {
			break
		}
		for j := 1; j < len(a); j++ {
			switch c := a[j]; c {
			case 'i':
				cfg.individual = true
			case 'c':
				cfg.combined = true
			case 'm':
				cfg.ipMasq = false
			case 'h', '?':
				return cfg, errUsage
			case 'f', 'd', 'k':
				val := a[j+1:]
				if val == "" {
					i++
					if i >= len(args) {
						return cfg, fmt.Errorf("option requires an argument -- %c", c)
					}
					val = args[i]
				}
				switch c {
				case 'f':
					cfg.flannelEnv = val
				case 'd':
					cfg.dockerEnv = val
				case 'k':
					cfg.combinedKey = val
				}
				j = len(a)
			default:
				return cfg, fmt.Errorf("illegal option -- %c", c)
			}
		}
	}
	if !cfg.individual && !cfg.combined {
		cfg.individual, cfg.combined = true, true
	}
	return cfg, nil
}

func usage(prog string) string {
	return prog + ` [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
	-f	Path to flannel env file. Defaults to /run/flannel/subnet.env
	-d	Path to Docker env file to write to. Defaults to /run/docker_opts.env
	-i	Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
	-c	Output combined Docker options into DOCKER_OPTS var
	-k	Set the combined options key to this value (default DOCKER_OPTS=)
	-m	Do not output --ip-masq (useful for older Docker version)

`
}
