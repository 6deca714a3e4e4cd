package policy

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// defaultFS holds the embedded default policy and its tests.
//
//go:embed default/*.rego
var defaultFS embed.FS

// ErrNoPolicy means a policy directory holds no policy (.rego) file.
var ErrNoPolicy = errors.New("no .rego policy files")

// file is one Rego source file of a policy directory.
type file struct {
	rel  string // slash-separated path inside the directory, for the revision
	name string // what errors and test results call it
	src  []byte
}

func (f file) test() bool { return strings.HasSuffix(f.rel, "_test.rego") }

// source is a policy directory read into memory, so that what is hashed is
// exactly what is compiled.
type source struct {
	label string // the directory, or "embedded default"
	files []file // sorted by rel
}

// readSource reads every .rego file under dir, or the embedded default
// policy when dir is empty. Files and directories whose names start with
// "." are skipped (editors' swap files, .git).
func readSource(dir string) (source, error) {
	if dir == "" {
		sub, err := fs.Sub(defaultFS, "default")
		if err != nil {
			return source{}, err
		}
		return readFS(sub, "default", "embedded default")
	}
	st, err := os.Stat(dir)
	if err != nil {
		return source{}, fmt.Errorf("policy directory: %w", err)
	}
	if !st.IsDir() {
		return source{}, fmt.Errorf("policy directory %s is not a directory", dir)
	}
	return readFS(os.DirFS(dir), filepath.ToSlash(dir), dir)
}

func readFS(fsys fs.FS, base, label string) (source, error) {
	s := source{label: label}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || !strings.HasSuffix(p, ".rego") {
			return nil
		}
		src, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		s.files = append(s.files, file{rel: p, name: path.Join(base, p), src: src})
		return nil
	})
	if err != nil {
		return source{}, fmt.Errorf("read policy %s: %w", label, err)
	}
	// WalkDir visits in lexical order already; sorting states the contract.
	slices.SortFunc(s.files, func(a, b file) int { return strings.Compare(a.rel, b.rel) })
	return s, nil
}

// policyFiles returns the files a decision depends on: all but tests.
func (s source) policyFiles() []file {
	var out []file
	for _, f := range s.files {
		if !f.test() {
			out = append(out, f)
		}
	}
	return out
}

// revision hashes the policy files' relative paths and contents, so that
// the same policy has the same revision wherever its directory lies, and
// editing a test does not change it. Each field is length-prefixed, so no
// two different file sets encode alike.
func (s source) revision() string {
	h := sha256.New()
	for _, f := range s.policyFiles() {
		for _, field := range [][]byte{[]byte(f.rel), f.src} {
			h.Write([]byte(strconv.Itoa(len(field))))
			h.Write([]byte{':'})
			h.Write(field)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// parse parses files as Rego v1. Errors carry file:line.
func parse(files []file) (map[string]*ast.Module, error) {
	mods := make(map[string]*ast.Module, len(files))
	var errs ast.Errors
	for _, f := range files {
		m, err := ast.ParseModuleWithOpts(f.name, string(f.src), ast.ParserOptions{
			RegoVersion:       ast.RegoV1,
			ProcessAnnotation: true,
		})
		if err != nil {
			var astErrs ast.Errors
			if errors.As(err, &astErrs) {
				errs = append(errs, astErrs...)
				continue
			}
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		if m == nil {
			// An empty file parses to nothing; the compiler wants a package.
			errs = append(errs, ast.NewError(ast.ParseErr, &ast.Location{File: f.name, Row: 1}, "empty module"))
			continue
		}
		mods[f.name] = m
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return mods, nil
}
