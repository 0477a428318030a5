package consumer_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/consumer"
)

// TestDeadLetterReasonsComplete: DeadLetterReasons lists exactly the Reason* constants declared
// in the package's source, each once, so a reason added later cannot be missing from the metrics'
// pre-registered label values.
func TestDeadLetterReasonsComplete(t *testing.T) {
	fset := token.NewFileSet()
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	declared := map[string]string{} // value -> constant name
	for _, path := range paths {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Reason") || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("%s: %s is not a string literal", fset.Position(name.Pos()), name.Name)
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					if prev, dup := declared[v]; dup {
						t.Errorf("%s and %s share the value %q", prev, name.Name, v)
					}
					declared[v] = name.Name
				}
			}
		}
	}
	if len(declared) == 0 {
		t.Fatal("no Reason* constants found in the package source")
	}
	got := consumer.DeadLetterReasons()
	for v, name := range declared {
		if !slices.Contains(got, v) {
			t.Errorf("%s (%q) is missing from DeadLetterReasons %v", name, v, got)
		}
	}
	for i, v := range got {
		if _, ok := declared[v]; !ok {
			t.Errorf("DeadLetterReasons()[%d] = %q is no Reason* constant", i, v)
		}
		if slices.Index(got, v) != i {
			t.Errorf("DeadLetterReasons lists %q twice", v)
		}
	}
	// It is a copy: changing it changes nothing for the next caller.
	got[0] = "changed"
	if consumer.DeadLetterReasons()[0] == "changed" {
		t.Error("DeadLetterReasons returns a shared slice")
	}
}
