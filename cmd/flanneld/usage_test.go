//go:build linux

package main

import (
	"bytes"
	"flag"
	"regexp"
	"strings"
	"testing"
)

// help returns flanneld -h's output.
func help(t *testing.T) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run([]string{"flanneld", "-h"}, func(string) string { return "" }, &out, &errb); code != 0 {
		t.Fatalf("-h: exit %d", code)
	}
	return errb.String()
}

// TestHelpGroupsEveryFlag checks that --help shows every flag exactly
// once, each real one under a heading of flagGroups (none under Other),
// and the compatibility-only ones in the paragraph at the end.
func TestHelpGroupsEveryFlag(t *testing.T) {
	h := help(t)
	var o options
	fs := newFlagSet("flanneld", &o, &bytes.Buffer{})
	sections := map[string]string{} // heading -> its text
	var titles []string
	for _, part := range strings.Split(h, "\n\n")[1:] {
		title, body, _ := strings.Cut(part, ":\n")
		titles = append(titles, title)
		sections[title] = body
	}
	compat := sections["Compatibility with upstream flanneld"]
	if titles[len(titles)-1] != "Compatibility with upstream flanneld" {
		t.Errorf("sections %q: the compatibility paragraph must come last", titles)
	}
	if _, ok := sections[otherTitle]; ok {
		t.Errorf("flags without a group in usage.go's flagGroups:\n%s", sections[otherTitle])
	}
	fs.VisitAll(func(f *flag.Flag) {
		entry := regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(f.Name) + `( |$)`)
		mention := regexp.MustCompile(`(^|[ ,])-` + regexp.QuoteMeta(f.Name) + `[,:]`)
		_, foreign := f.Value.(*foreignFlag)
		n := len(entry.FindAllString(h, -1))
		switch {
		case foreign && (n != 0 || len(mention.FindAllString(compat, -1)) != 1):
			t.Errorf("-%s: compatibility-only, want it once in the last paragraph and nowhere else", f.Name)
		case !foreign && n != 1:
			t.Errorf("-%s: shown %d times as an entry, want once", f.Name, n)
		}
	})
	for _, want := range []string{"etcd", "Interface and addresses", "Subnet lease", "Data plane (userspace router)",
		"Kernel fast path", "Firewall and host rules", "Health, metrics and debugging"} {
		if _, ok := sections[want]; !ok {
			t.Errorf("no %q section in:\n%s", want, h)
		}
	}
	if !strings.Contains(sections["etcd"], "  -etcd-endpoints string\n") || !strings.Contains(sections["Kernel fast path"], "  -fast-path string\n") {
		t.Errorf("flags not under their headings:\n%s", h)
	}
}

// TestHelpCompatParagraphShort keeps the compatibility flags from
// growing back into the list: a few wrapped lines, no entry per flag.
func TestHelpCompatParagraphShort(t *testing.T) {
	h := help(t)
	_, compat, ok := strings.Cut(h, "\nCompatibility with upstream flanneld:\n")
	if !ok {
		t.Fatalf("no compatibility paragraph:\n%s", h)
	}
	lines := strings.Split(strings.TrimRight(compat, "\n"), "\n")
	if len(lines) > 10 {
		t.Errorf("compatibility paragraph is %d lines, want at most 10:\n%s", len(lines), compat)
	}
	for _, l := range lines {
		if len(l) > 78 || !strings.HasPrefix(l, "  ") {
			t.Errorf("line %q: over 78 columns or not indented", l)
		}
	}
	if !strings.Contains(compat, "-add_dir_header") || !strings.Contains(compat, "ignored") {
		t.Errorf("klog's flags are not described as ignored:\n%s", compat)
	}
}

// TestHelpShowsDefaults keeps flag.PrintDefaults' format for one flag of
// each kind.
func TestHelpShowsDefaults(t *testing.T) {
	h := help(t)
	for _, want := range []string{
		"  -etcd-prefix string\n    \tetcd prefix (default \"/coreos.com/network\")\n",
		"  -subnet-lease-renew-margin int\n",
		"  -ip-masq\n    \tsetup IP masquerade rule",
		"(default 250µs)",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("help lacks %q:\n%s", want, h)
		}
	}
}
