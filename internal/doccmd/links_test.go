package doccmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocLinks fails for a relative link in README.md, SECURITY.md or
// docs/*.md that points at no file, or whose #anchor names no heading of
// the Markdown file it points at.
func TestDocLinks(t *testing.T) {
	root := ModuleRoot(t)
	docs, err := MarkdownDocuments(root)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]map[string]bool{} // by file, relative to root
	anchorsOf := func(rel string) map[string]bool {
		if a, ok := anchors[rel]; ok {
			return a
		}
		a, err := Anchors(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		anchors[rel] = a
		return a
	}
	checked := 0
	for _, d := range docs {
		links, err := Links(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if strings.Contains(l.Target, "://") || strings.HasPrefix(l.Target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(l.Target, "#")
			target := d
			if path != "" {
				target = filepath.Join(filepath.Dir(d), path)
				if _, err := os.Stat(filepath.Join(root, target)); err != nil {
					t.Errorf("%s:%d: link %s: no such file %s", d, l.Line, l.Target, target)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(target, ".md") {
				t.Errorf("%s:%d: link %s: an anchor into %s, which is not Markdown", d, l.Line, l.Target, target)
			} else if !anchorsOf(target)[anchor] {
				t.Errorf("%s:%d: link %s: %s has no heading with the anchor #%s", d, l.Line, l.Target, target, anchor)
			}
		}
	}
	if checked == 0 {
		t.Error("no relative links found: the check would pass on nothing")
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"Set-up (as root, on a fresh Debian machine with Go)": "set-up-as-root-on-a-fresh-debian-machine-with-go",
		"Network config (`<prefix>/config`)":                  "network-config-prefixconfig",
		"Live: `GET /debug/pcap` on the health listener":      "live-get-debugpcap-on-the-health-listener",
		"Containers cannot reach each other (ip_forward)":     "containers-cannot-reach-each-other-ip_forward",
		"/readyz answers 503":                                 "readyz-answers-503",
		"See [the docs](docs/x.md) now":                       "see-the-docs-now",
	} {
		if got := Slug(in); got != want {
			t.Errorf("Slug(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAnchorsAndLinks(t *testing.T) {
	md := "# Top\n\n## Same\n\n## Same\n\n```sh\n# not a heading [x](nowhere.md)\n```\n\nSee [a](#same-1), `[b](code.md)` and ![c](img.png \"title\").\n"
	p := filepath.Join(t.TempDir(), "x.md")
	if err := os.WriteFile(p, []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := Anchors(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 3 || !a["top"] || !a["same"] || !a["same-1"] {
		t.Errorf("anchors %v, want top, same, same-1", a)
	}
	links, err := Links(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 2 || links[0].Target != "#same-1" || links[1].Target != "img.png" || links[0].Line != 11 {
		t.Errorf("links %+v, want #same-1 and img.png on line 11", links)
	}
}
