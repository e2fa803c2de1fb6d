package licenses

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestThirdPartyFileCurrent regenerates THIRD_PARTY_LICENSES from the
// module cache (offline) and compares it with the committed file: a new or
// updated dependency must come with its licence text.
func TestThirdPartyFileCurrent(t *testing.T) {
	ctx := context.Background()
	mods, err := List(ctx, "../..", "./cmd/flanneld")
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) < 10 {
		t.Fatalf("only %d modules linked into flanneld: go list went wrong", len(mods))
	}
	goLicense, err := GoLicense(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := Render(&want, mods, goLicense); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../THIRD_PARTY_LICENSES")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(want.String(), "\n")
		i := 0
		for i < len(gl) && i < len(wl) && gl[i] == wl[i] {
			i++
		}
		t.Errorf("THIRD_PARTY_LICENSES is stale (first difference at line %d): run make licenses and commit it", i+1)
	}
}

// TestLinkedLicencesAllowed fails when a module linked into flanneld has
// no licence file or one outside the allowlist.
func TestLinkedLicencesAllowed(t *testing.T) {
	mods, err := List(context.Background(), "../..", "./cmd/flanneld")
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(mods); err != nil {
		t.Error(err)
	}
}

const (
	apacheText = "Apache License\n                           Version 2.0, January 2004\n    http://www.apache.org/licenses/\n"
	mitText    = "Copyright (c) 2020 X\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\nof this software..."
	bsd2Text   = "Redistribution and use in source and binary forms, with or without\nmodification, are permitted provided that the following conditions are met:\n"
	bsd3Text   = bsd2Text + "   * Neither the name of Google Inc. nor the names of its\n contributors may be used to endorse..."
	iscText    = "Permission to use, copy, modify, and/or distribute this software for any\npurpose with or without fee is hereby granted"
	gplText    = "                    GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991\n"
	lgplText   = "GNU LESSER GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007"
	mplText    = "Mozilla Public License Version 2.0\n=================================="
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		text string
		want []string
	}{
		{apacheText, []string{"Apache-2.0"}},
		{mitText, []string{"MIT"}},
		{bsd2Text, []string{"BSD-2-Clause"}},
		{bsd3Text, []string{"BSD-3-Clause"}},
		{iscText, []string{"ISC"}},
		{gplText, []string{"GPL"}},
		{lgplText, []string{"LGPL"}},
		{mplText, []string{"MPL-2.0"}},
		{mitText + "\n---\n" + bsd3Text, []string{"BSD-3-Clause", "MIT"}},
		{"All rights reserved. Ask us.", []string{Unknown}},
	} {
		if got := Classify(tc.text); !slices.Equal(got, tc.want) {
			t.Errorf("Classify(%.40q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}

// TestCheckRejects shows that Check fails on what must not ship unread.
func TestCheckRejects(t *testing.T) {
	mod := func(texts ...string) Module {
		m := Module{Path: "example.com/m", Version: "v1.0.0"}
		for _, x := range texts {
			m.Files = append(m.Files, File{Name: "LICENSE", Text: x, IDs: Classify(x)})
		}
		return m
	}
	if err := Check([]Module{mod(apacheText), mod(mitText, bsd3Text)}); err != nil {
		t.Errorf("allowed licences rejected: %v", err)
	}
	for name, m := range map[string]Module{
		"GPL":        mod(gplText),
		"LGPL":       mod(lgplText),
		"MPL":        mod(mplText),
		"unknown":    mod("All rights reserved."),
		"no licence": mod(),
		"notice only": {Path: "example.com/n", Version: "v1.0.0",
			Files: []File{{Name: "NOTICE", Text: "Copyright X", IDs: []string{Notice}}}},
	} {
		if err := Check([]Module{mod(apacheText), m}); err == nil || !strings.Contains(err.Error(), m.Path) {
			t.Errorf("%s: Check = %v, want an error naming %s", name, err, m.Path)
		}
	}
}
