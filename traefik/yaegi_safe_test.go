package edgelimit

import (
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestYaegiSafe type-checks the plugin and its vendored packages and refuses
// what Traefik's Yaegi interpreter (v0.16) cannot run, with the file and
// line: the min, max and clear builtins, range over an integer or a
// function, generics (any instantiation: slices.Sort, atomic.Pointer[T],
// sync.OnceValue...), packages Traefik does not give plugins, and three
// Yaegi bugs: == against typed constant expressions (iota + 1), nil in a
// tuple assignment (a, b = nil, false), select statements (one shared
// array of cases for every execution: concurrent ones race), and a
// function of the package used as a value (returned as a func(string) string, it reached reflect.Set as
// an interpreter node and panicked). The
// harness module loads the plugin through Yaegi itself; this test says
// why, sooner and more clearly.
func TestYaegiSafe(t *testing.T) {
	fset := token.NewFileSet()
	std := importer.Default() // one instance: one time package for all
	vendored := map[string]*types.Package{}
	imp := importerFunc(func(path string) (*types.Package, error) {
		if p, ok := vendored[path]; ok {
			return p, nil
		}
		return std.Import(path)
	})
	// In the order of their imports: each sees those before it.
	for _, pkg := range vendoredPackages {
		path := "github.com/edgelimit/caddy-edgelimit/" + pkg
		vendored[path] = checkDir(t, fset, filepath.Join("vendor", "github.com", "edgelimit", "caddy-edgelimit", filepath.FromSlash(pkg)), path, imp)
	}
	checkDir(t, fset, ".", "github.com/edgelimit/caddy-edgelimit/traefik", imp)
}

type importerFunc func(path string) (*types.Package, error)

func (f importerFunc) Import(path string) (*types.Package, error) { return f(path) }

// forbiddenImports are packages that do not load in Traefik's Yaegi
// (unsafe and syscall need Traefik's useUnsafe; the others are generic).
var forbiddenImports = map[string]bool{
	"unsafe": true, "syscall": true, "os/exec": true, "plugin": true, "embed": true,
	"slices": true, "maps": true, "iter": true, "cmp": true,
}

func checkDir(t *testing.T, fset *token.FileSet, dir, path string, imp types.Importer) *types.Package {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	info := &types.Info{
		Types:     map[ast.Expr]types.TypeAndValue{},
		Uses:      map[*ast.Ident]types.Object{},
		Instances: map[*ast.Ident]types.Instance{},
		Defs:      map[*ast.Ident]types.Object{},
	}
	conf := types.Config{Importer: imp}
	pkg, err := conf.Check(path, fset, files, info)
	if err != nil {
		t.Fatalf("type-checking %s: %v", dir, err)
	}
	for _, f := range files {
		for _, im := range f.Imports {
			p := strings.Trim(im.Path.Value, `"`)
			if forbiddenImports[p] {
				t.Errorf("%s: imports %s, which Traefik's Yaegi does not load", fset.Position(im.Pos()), p)
			}
		}
		checkConsts(t, fset, f, info, pkg)
		callees := map[*ast.Ident]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			if call, ok := n.(*ast.CallExpr); ok {
				switch fn := call.Fun.(type) {
				case *ast.Ident:
					callees[fn] = true
				case *ast.SelectorExpr:
					callees[fn.Sel] = true
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				checkErrorsAs(t, fset, n, info)
			case *ast.RangeStmt:
				switch u := info.Types[n.X].Type.Underlying().(type) {
				case *types.Basic:
					if u.Info()&types.IsInteger != 0 {
						t.Errorf("%s: range over an integer, which Yaegi cannot run", fset.Position(n.Pos()))
					}
				case *types.Signature:
					t.Errorf("%s: range over a function, which Yaegi cannot run", fset.Position(n.Pos()))
				}
			case *ast.Ident:
				if fn, ok := info.Uses[n].(*types.Func); ok && fn.Pkg() == pkg && !callees[n] {
					t.Errorf("%s: the function %s used as a value, which Yaegi may hand over as an interpreter node (a panic): call it, or switch on a kind", fset.Position(n.Pos()), n.Name)
				}
				if b, ok := info.Uses[n].(*types.Builtin); ok {
					switch b.Name() {
					case "min", "max", "clear":
						t.Errorf("%s: the %s builtin, which Yaegi does not have", fset.Position(n.Pos()), b.Name())
					}
				}
				if _, ok := info.Instances[n]; ok {
					t.Errorf("%s: instantiates the generic %s, which Yaegi cannot do with the standard library", fset.Position(n.Pos()), n.Name)
				}
			case *ast.AssignStmt:
				checkTuple(t, fset, n)
			case *ast.SelectStmt:
				t.Errorf("%s: a select statement: Yaegi runs every execution of one select on one shared array of cases, so concurrent ones wait on each other's channels (a hang); wait on a context's Done (store.Sleep) or use a mutex", fset.Position(n.Pos()))
			case *ast.FuncDecl:
				if n.Type.TypeParams != nil {
					t.Errorf("%s: generic function %s", fset.Position(n.Pos()), n.Name.Name)
				}
			case *ast.TypeSpec:
				if n.TypeParams != nil {
					t.Errorf("%s: generic type %s", fset.Position(n.Pos()), n.Name.Name)
				}
			}
			return true
		})
	}
	return pkg
}

// checkConsts refuses typed constants of the package's own types whose
// value is an expression (iota + 1, 1 << iota): Yaegi v0.16 evaluates ==
// and != against them as false whatever the values. A literal or a bare
// iota is fine (_ T = iota skips zero).
func checkConsts(t *testing.T, fset *token.FileSet, f *ast.File, info *types.Info, pkg *types.Package) {
	t.Helper()
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		var current []ast.Expr // the expressions that implicit repetition repeats
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			if len(vs.Values) > 0 {
				current = vs.Values
			}
			for i, name := range vs.Names {
				if name.Name == "_" || i >= len(current) {
					continue
				}
				obj := info.Defs[name]
				if obj == nil {
					continue
				}
				named, ok := obj.Type().(*types.Named)
				if !ok || named.Obj().Pkg() != pkg {
					continue
				}
				switch e := current[i].(type) {
				case *ast.BasicLit:
					continue
				case *ast.Ident:
					if e.Name == "iota" {
						continue
					}
				}
				t.Errorf("%s: constant %s of type %s is an expression: Yaegi gets == and != against it wrong; use a literal or a bare iota",
					fset.Position(name.Pos()), name.Name, named.Obj().Name())
			}
		}
	}
}

// checkErrorsAs refuses errors.As with a target whose type is an
// interface that is not the standard library's (a literal interface{ ...
// } or one of the plugin's): the interpreter hands errors.As its own
// wrapper type, and errors.As panics.
func checkErrorsAs(t *testing.T, fset *token.FileSet, call *ast.CallExpr, info *types.Info) {
	t.Helper()
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "As" || len(call.Args) != 2 {
		return
	}
	if pkg, ok := info.Uses[sel.Sel].(*types.Func); !ok || pkg.Pkg() == nil || pkg.Pkg().Path() != "errors" {
		return
	}
	ptr, ok := info.Types[call.Args[1]].Type.(*types.Pointer)
	if !ok {
		return
	}
	target := ptr.Elem()
	if _, isIface := target.Underlying().(*types.Interface); !isIface {
		return
	}
	if named, ok := target.(*types.Named); ok && named.Obj().Pkg() != nil && !strings.Contains(named.Obj().Pkg().Path(), ".") {
		return // a standard library interface, as net.Error
	}
	t.Errorf("%s: errors.As with a target of interface type %s, which Yaegi hands over as its own wrapper (a panic): use an interface of the standard library (net.Error)", fset.Position(call.Pos()), target)
}

// checkTuple refuses the tuple assignments Yaegi v0.16 gets wrong: with =
// (not :=), a, b = x, f() assigns only f()'s target when any value is a
// call or a conversion, and a, b = nil, false panics.
func checkTuple(t *testing.T, fset *token.FileSet, n *ast.AssignStmt) {
	t.Helper()
	if len(n.Lhs) < 2 || len(n.Rhs) != len(n.Lhs) {
		return
	}
	for _, e := range n.Rhs {
		if id, ok := e.(*ast.Ident); ok && id.Name == "nil" {
			t.Errorf("%s: nil in a tuple assignment, on which Yaegi panics", fset.Position(n.Pos()))
			return
		}
	}
	if n.Tok != token.ASSIGN {
		return
	}
	for _, e := range n.Rhs {
		call := false
		ast.Inspect(e, func(x ast.Node) bool {
			if _, ok := x.(*ast.CallExpr); ok {
				call = true
			}
			return !call
		})
		if call {
			t.Errorf("%s: a tuple assignment with a call among its values, which Yaegi assigns only in part: split it", fset.Position(n.Pos()))
			return
		}
	}
}
