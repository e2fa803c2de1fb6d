//go:build linux

package main

import (
	"flag"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
)

// foreignFlag is a flag upstream flanneld (or klog) defines that has no
// effect here: it is parsed so that a unit written for upstream starts, and
// reported after parsing.
type foreignFlag struct {
	isBool bool
	value  string
}

func (f *foreignFlag) String() string {
	if f == nil {
		return ""
	}
	return f.value
}

func (f *foreignFlag) Set(v string) error {
	if f.isBool {
		if _, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("parse %q as a boolean: %w", v, err)
		}
	}
	f.value = v
	return nil
}

// IsBoolFlag lets a boolean one be given without a value, as in upstream.
func (f *foreignFlag) IsBoolFlag() bool { return f.isBool }

// ignoredFlags are the klog flags: upstream copies -v, --vmodule and --log_backtrace_at into
// its flag set; the other klog flags are accepted too, since a unit that
// names one has no reason to fail here. The value is the default shown by -h.
var ignoredFlags = map[string]struct {
	isBool bool
	def    string
}{
	"vmodule":                          {false, ""},
	"log_backtrace_at":                 {false, ""},
	"logtostderr":                      {true, "true"},
	"alsologtostderr":                  {true, "false"},
	"stderrthreshold":                  {false, "INFO"},
	"log_dir":                          {false, ""},
	"log_file":                         {false, ""},
	"log_file_max_size":                {false, "1800"},
	"add_dir_header":                   {true, "false"},
	"skip_headers":                     {true, "false"},
	"skip_log_headers":                 {true, "false"},
	"one_output":                       {true, "false"},
	"legacy_stderr_threshold_behavior": {true, "false"},
}

// addForeignFlags defines the ignored flags on fs.
func addForeignFlags(fs *flag.FlagSet) {
	for name, f := range ignoredFlags {
		fs.Var(&foreignFlag{isBool: f.isBool, value: f.def}, name, "accepted for compatibility with upstream flanneld, ignored (a warning is logged)")
	}
}

// warnForeignFlags logs one warning naming the ignored flags that were
// set, on the command line or through FLANNELD_* (fromEnv holds the flags
// set from the environment).
func warnForeignFlags(fs *flag.FlagSet, fromEnv map[string]bool, log *slog.Logger) {
	var ignored []string
	fs.Visit(func(f *flag.Flag) {
		if _, ok := ignoredFlags[f.Name]; !ok {
			return
		}
		// Names only, never values: a path may carry secrets.
		how := "--" + f.Name
		if fromEnv[f.Name] {
			how = envName(f.Name)
		}
		ignored = append(ignored, how)
	})
	sort.Strings(ignored)
	if len(ignored) > 0 {
		log.Warn("Ignoring flags that have no meaning in flannel-go (udp backend, log/slog logging): " + strings.Join(ignored, ", "))
	}
}

// logLevel maps -v onto slog: 0 (upstream's default) is Info, 1 and more
// (klog's V(1) and up, which upstream uses for detail) is Debug. Negative
// values, which klog accepts, are Info too.
func logLevel(v int) slog.Level {
	if v > 0 {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
