package licenses

import (
	"sort"
	"strings"
)

// Markers Classify returns besides SPDX identifiers.
const (
	Notice      = "notice"       // an Apache-2.0 NOTICE file: its text must be passed on
	PatentGrant = "patent-grant" // Go's PATENTS file: an extra grant, no condition
	Unknown     = "unknown"      // nothing recognised: a person must read it
)

// marker is a phrase that appears, after normalize, in every copy of a
// licence's text and in no other licence this project meets.
type marker struct {
	id     string
	all    []string // every one must appear
	absent string   // must not appear (tells BSD-2 from BSD-3)
}

// markers are checked in order; a file can hold several licences (for
// example sigs.k8s.io/yaml: MIT and BSD-3-Clause).
var markers = []marker{
	{id: "Apache-2.0", all: []string{"apache license version 2 0"}},
	{id: "MIT", all: []string{"permission is hereby granted free of charge to any person obtaining a copy"}},
	{id: "BSD-3-Clause", all: []string{"redistribution and use in source and binary forms", "neither the name"}},
	{id: "BSD-3-Clause", all: []string{"redistribution and use in source and binary forms", "names of its contributors may not be used"}},
	{id: "BSD-2-Clause", all: []string{"redistribution and use in source and binary forms"}, absent: "neither the name"},
	{id: "ISC", all: []string{"permission to use copy modify and or distribute this software for any purpose with or without fee is hereby granted"}},
	{id: "MPL-2.0", all: []string{"mozilla public license version 2 0"}},
	{id: "LGPL", all: []string{"gnu lesser general public license"}},
	{id: "LGPL", all: []string{"gnu library general public license"}},
	{id: "AGPL", all: []string{"gnu affero general public license"}},
	{id: "GPL", all: []string{"gnu general public license"}},
	{id: PatentGrant, all: []string{"additional ip rights grant patents"}},
}

// Classify names the licences whose text appears in text, sorted; a text
// with none of them is Unknown.
func Classify(text string) []string {
	norm := normalize(text)
	found := map[string]bool{}
	for _, m := range markers {
		ok := m.absent == "" || !strings.Contains(norm, m.absent)
		for _, p := range m.all {
			ok = ok && strings.Contains(norm, p)
		}
		if ok {
			found[m.id] = true
		}
	}
	if len(found) == 0 {
		return []string{Unknown}
	}
	ids := make([]string, 0, len(found))
	for id := range found {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// normalize lowercases text and keeps only letters and digits, with runs of
// anything else as one space, so that line breaks, comment markers and
// punctuation do not matter.
func normalize(text string) string {
	var b strings.Builder
	space := true
	for _, r := range strings.ToLower(text) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			space = false
		} else if !space {
			b.WriteByte(' ')
			space = true
		}
	}
	return strings.TrimSpace(b.String())
}
