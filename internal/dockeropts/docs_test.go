package dockeropts

import (
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/doccmd"
)

// TestDocsMkDockerOpts runs the command docs/install.md shows, with its
// arguments, on the subnet file the text describes (sampleEnv), and
// compares what it writes with the output the document prints.
func TestDocsMkDockerOpts(t *testing.T) {
	block := doccmd.Script(t, "docs/install.md", "mk-docker-opts")
	cmdLine, shown, ok := strings.Cut(block, "\n")
	if !ok || !strings.HasPrefix(cmdLine, "$ ") {
		t.Fatalf("block does not start with a $ command line:\n%s", block)
	}
	run1, cat, ok := strings.Cut(strings.TrimPrefix(cmdLine, "$ "), " && ")
	words := strings.Fields(run1)
	if !ok || len(words) < 2 || words[0] != "flanneld" || words[1] != "mk-docker-opts" {
		t.Fatalf("command %q: want flanneld mk-docker-opts ... && cat FILE", cmdLine)
	}
	// The -d file the document names is the one it prints.
	args := words[2:]
	var out string
	for i, a := range args {
		if a == "-d" && i+1 < len(args) {
			out = args[i+1]
		}
	}
	if out == "" || cat != "cat "+out {
		t.Fatalf("command %q: the -d file and the file printed differ", cmdLine)
	}
	var flags []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-d" {
			i++ // run sets -d to its own file
			continue
		}
		flags = append(flags, args[i])
	}
	r := run(t, sampleEnv, nil, nil, flags...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r.out != shown {
		t.Errorf("docs/install.md shows:\n%s\nmk-docker-opts writes:\n%s", shown, r.out)
	}
}
