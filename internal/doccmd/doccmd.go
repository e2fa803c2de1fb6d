// Package doccmd makes the shell commands in the documentation tested:
// every ```sh block in README.md, SECURITY.md, docs/*.md and dist/INSTALL
// carries a tag
// (```sh test=NAME), tests fetch the block by file and tag and run it,
// and this package's own test fails when a block has no tag or no test
// names its tag. Root gives those tests a throwaway root file system to
// run install commands in.
package doccmd

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Block is one fenced shell block of a document.
type Block struct {
	File   string
	Line   int    // of the opening fence
	Lang   string // sh, bash, console, shell
	Tag    string // NAME of test=NAME, "" when untagged
	Script string
}

// shellLangs are the fence languages that hold commands.
var shellLangs = map[string]bool{"sh": true, "bash": true, "shell": true, "console": true}

var tagRe = regexp.MustCompile(`(?:^|\s)test=([A-Za-z0-9_-]+)`)

// Blocks returns the shell blocks of a Markdown file (or of a text file
// using the same fences), in order.
func Blocks(path string) ([]Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var blocks []Block
	var cur *Block
	var body strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			info := strings.TrimPrefix(trimmed, "```")
			lang, _, _ := strings.Cut(info, " ")
			if shellLangs[lang] {
				cur = &Block{File: path, Line: n, Lang: lang}
				if m := tagRe.FindStringSubmatch(info); m != nil {
					cur.Tag = m[1]
				}
				body.Reset()
			} else {
				cur = &Block{File: path, Line: n, Lang: "-"} // not shell: skipped to its end
			}
		case cur != nil && trimmed == "```":
			if cur.Lang != "-" {
				cur.Script = body.String()
				blocks = append(blocks, *cur)
			}
			cur = nil
		case cur != nil:
			body.WriteString(line + "\n")
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: code block never closed", path, cur.Line)
	}
	return blocks, sc.Err()
}

// Script returns the block tagged tag in file (relative to the module
// root), failing t when there is not exactly one.
func Script(t testing.TB, file, tag string) string {
	t.Helper()
	blocks, err := Blocks(filepath.Join(ModuleRoot(t), file))
	if err != nil {
		t.Fatal(err)
	}
	var found []Block
	for _, b := range blocks {
		if b.Tag == tag {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d blocks tagged test=%s, want 1", file, len(found), tag)
	}
	return found[0].Script
}

// ModuleRoot is the directory holding go.mod, found upwards from the
// test's working directory.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Documents are the files whose shell blocks must be tested, relative to
// the module root: README.md, SECURITY.md, docs/*.md and dist/INSTALL.
func Documents(root string) ([]string, error) {
	md, err := MarkdownDocuments(root)
	if err != nil {
		return nil, err
	}
	return append(md, "dist/INSTALL"), nil
}

// MarkdownDocuments are the Markdown files of the documentation, relative
// to the module root: README.md, SECURITY.md and docs/*.md.
func MarkdownDocuments(root string) ([]string, error) {
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	rel := []string{"README.md", "SECURITY.md"}
	for _, d := range docs {
		r, _ := filepath.Rel(root, d)
		rel = append(rel, r)
	}
	return rel, nil
}
