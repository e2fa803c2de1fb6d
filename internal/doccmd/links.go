package doccmd

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
	"unicode"
)

// Link is one Markdown link or image of a document.
type Link struct {
	Line   int
	Target string // as written: path, path#anchor or #anchor
}

var (
	// linkRe matches [text](target) and ![alt](target); the target ends
	// at the first space or closing parenthesis.
	linkRe     = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	codeSpanRe = regexp.MustCompile("`+[^`]*`+")
	headingRe  = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
)

// scanMarkdown calls line for every line of path outside fenced code
// blocks, with its number.
func scanMarkdown(path string, line func(n int, text string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	inFence := false
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(text), "```") {
			inFence = !inFence
			continue
		}
		if !inFence {
			line(n, text)
		}
	}
	return sc.Err()
}

// Links returns the links of a Markdown file, outside code blocks and
// code spans, in order.
func Links(path string) ([]Link, error) {
	var links []Link
	err := scanMarkdown(path, func(n int, text string) {
		text = codeSpanRe.ReplaceAllString(text, "")
		for _, m := range linkRe.FindAllStringSubmatch(text, -1) {
			links = append(links, Link{Line: n, Target: m[1]})
		}
	})
	return links, err
}

// Anchors returns the anchors GitHub gives the headings of a Markdown
// file: the heading's text in lower case, without punctuation, spaces as
// hyphens, and -1, -2, ... for repeats.
func Anchors(path string) (map[string]bool, error) {
	anchors := map[string]bool{}
	seen := map[string]int{}
	err := scanMarkdown(path, func(_ int, text string) {
		m := headingRe.FindStringSubmatch(text)
		if m == nil {
			return
		}
		slug := Slug(m[2])
		if k := seen[slug]; k > 0 {
			anchors[fmt.Sprintf("%s-%d", slug, k)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	})
	return anchors, err
}

// Slug is the anchor of a heading's text, as GitHub computes it from the
// rendered text: links keep their text, code spans their content.
func Slug(heading string) string {
	heading = linkRe.ReplaceAllStringFunc(heading, func(l string) string {
		return l[strings.Index(l, "[")+1 : strings.Index(l, "]")]
	})
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
