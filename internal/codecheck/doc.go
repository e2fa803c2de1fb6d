// Package codecheck holds the repository's own code rules as tests (no
// function over 100 lines outside tests); it has no code of its own.
package codecheck
