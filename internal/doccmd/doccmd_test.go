package doccmd

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestEveryDocCommandIsTested fails for a shell block in the documents
// that has no test=NAME tag, or whose tag no test of the module fetches
// with doccmd.Script(t, "FILE", "NAME").
func TestEveryDocCommandIsTested(t *testing.T) {
	root := ModuleRoot(t)
	docs, err := Documents(root)
	if err != nil {
		t.Fatal(err)
	}
	used := usedTags(t, root)
	count := 0
	for _, d := range docs {
		blocks, err := Blocks(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			count++
			switch {
			case b.Tag == "":
				t.Errorf("%s:%d: shell block without test=NAME: tag it and run it from a test (doccmd.Script)", d, b.Line)
			case !used[d+"\x00"+b.Tag]:
				t.Errorf("%s:%d: no test runs the block tagged test=%s (doccmd.Script(t, %q, %q))", d, b.Line, b.Tag, d, b.Tag)
			}
		}
	}
	if count == 0 {
		t.Error("no shell blocks found in the documents: the check would pass on nothing")
	}
}

// scriptCall matches doccmd.Script(t, "file", "tag") in a test's source,
// or Script(t, "file", "tag") in this package's own.
var scriptCall = regexp.MustCompile(`(?:\bdoccmd\.|[^.\w])Script\(\s*\w+,\s*"([^"]+)",\s*"([^"]+)"\s*\)`)

// usedTags returns file+"\x00"+tag for every call of Script in the
// module's test files.
func usedTags(t *testing.T, root string) map[string]bool {
	t.Helper()
	used := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range scriptCall.FindAllStringSubmatch(string(src), -1) {
			used[m[1]+"\x00"+m[2]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return used
}

func TestBlocks(t *testing.T) {
	md := "# x\n\n```sh test=one\necho 1\necho 2\n```\n\n```json\n{\"a\": 1}\n```\n\n```console\n$ ls\n```\n"
	p := filepath.Join(t.TempDir(), "x.md")
	if err := os.WriteFile(p, []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	blocks, err := Blocks(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || blocks[0].Tag != "one" || blocks[0].Script != "echo 1\necho 2\n" || blocks[0].Line != 3 ||
		blocks[1].Tag != "" || blocks[1].Lang != "console" {
		t.Fatalf("got %+v", blocks)
	}
	if err := os.WriteFile(p, []byte("```sh\nunclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Blocks(p); err == nil {
		t.Error("an unclosed block was accepted")
	}
}
