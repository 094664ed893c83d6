package batv

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

// TestMACComparedInConstantTime is a review aid, not a timing measurement
// (timing a 3-byte comparison on a shared machine proves nothing): it
// type-checks the package's own source and fails if
//
//   - anything compares byte arrays or byte slices with == or != (a MAC,
//     a key, a digest), or compares elements of a [3]byte (the MAC type)
//     one at a time, which could exit early;
//   - bytes.Equal, bytes.Compare or a string conversion of bytes is used
//     in a comparison;
//   - the MAC of a tag is used anywhere but as an argument of macEqual or
//     in the code that parses and formats tags;
//   - macEqual does anything but return crypto/hmac.Equal of its
//     arguments.
//
// Together with reading verify.go (the MAC is compared last, after shape,
// key and window, none of which depend on the secret) this is the
// evidence that the MAC comparison is constant-time.
func TestMACComparedInConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	matches, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range matches {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}, Uses: map[*ast.Ident]types.Object{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil)}
	if _, err := conf.Check("github.com/batv/batv/batv", fset, files, info); err != nil {
		if os.Getenv("BATV_E2E") == "" {
			t.Skipf("cannot type-check the package from source here: %v", err)
		}
		t.Fatal(err)
	}

	isBytes := func(e ast.Expr) bool {
		tv, ok := info.Types[e]
		if !ok {
			return false
		}
		switch u := tv.Type.Underlying().(type) {
		case *types.Array:
			b, ok := u.Elem().Underlying().(*types.Basic)
			return ok && b.Kind() == types.Byte
		case *types.Slice:
			b, ok := u.Elem().Underlying().(*types.Basic)
			return ok && b.Kind() == types.Byte
		}
		return false
	}
	isMACType := func(e ast.Expr) bool {
		tv, ok := info.Types[e]
		if !ok {
			return false
		}
		a, ok := tv.Type.Underlying().(*types.Array)
		if !ok || a.Len() != 3 {
			return false
		}
		b, ok := a.Elem().Underlying().(*types.Basic)
		return ok && b.Kind() == types.Byte
	}
	// stringOfBytes: string(b) with b bytes.
	stringOfBytes := func(e ast.Expr) bool {
		call, ok := ast.Unparen(e).(*ast.CallExpr)
		if !ok || len(call.Args) != 1 {
			return false
		}
		tv, ok := info.Types[call.Fun]
		return ok && tv.IsType() && types.Identical(tv.Type.Underlying(), types.Typ[types.String]) && isBytes(call.Args[0])
	}
	// The functions where the MAC field of a Tag may be touched: decoding
	// it from the address, formatting it, and setting it when signing. A
	// new one fails the test, and asks for a review.
	macFieldAllowed := map[string]bool{"parseVal": true, "putVal": true, "sign": true}

	var macEqualBody *ast.BlockStmt
	for _, f := range files {
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			if fn.Name.Name == "macEqual" && fn.Recv == nil {
				macEqualBody = fn.Body
			}
			var stack []ast.Node
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if n == nil {
					stack = stack[:len(stack)-1]
					return false
				}
				stack = append(stack, n)
				pos := fset.Position(n.Pos())
				switch n := n.(type) {
				case *ast.BinaryExpr:
					if n.Op != token.EQL && n.Op != token.NEQ {
						break
					}
					for _, side := range []ast.Expr{n.X, n.Y} {
						if isBytes(side) || stringOfBytes(side) {
							t.Errorf("%s: %s compares bytes with %s", pos, fn.Name.Name, n.Op)
						}
						if ix, ok := ast.Unparen(side).(*ast.IndexExpr); ok && isMACType(ix.X) {
							t.Errorf("%s: %s compares MAC bytes one at a time", pos, fn.Name.Name)
						}
					}
				case *ast.SelectorExpr:
					if obj, ok := info.Uses[n.Sel].(*types.Var); ok && obj.IsField() && n.Sel.Name == "MAC" && isMACType(n) {
						if !macFieldAllowed[fn.Name.Name] && !argOf(stack, "macEqual") {
							t.Errorf("%s: %s uses a tag's MAC outside macEqual", pos, fn.Name.Name)
						}
					}
					if pkg, ok := n.X.(*ast.Ident); ok {
						if pn, ok := info.Uses[pkg].(*types.PkgName); ok && pn.Imported().Path() == "bytes" &&
							(n.Sel.Name == "Equal" || n.Sel.Name == "Compare") {
							t.Errorf("%s: %s uses bytes.%s", pos, fn.Name.Name, n.Sel.Name)
						}
					}
				}
				return true
			})
		}
	}

	// macEqual is exactly "return hmac.Equal(a[:], b[:])".
	if macEqualBody == nil || len(macEqualBody.List) != 1 {
		t.Fatal("macEqual is missing or is more than one statement")
	}
	ret, ok := macEqualBody.List[0].(*ast.ReturnStmt)
	if !ok || len(ret.Results) != 1 {
		t.Fatal("macEqual does not simply return")
	}
	call, ok := ret.Results[0].(*ast.CallExpr)
	if !ok {
		t.Fatal("macEqual does not return a call")
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		t.Fatal("macEqual does not call a package function")
	}
	pkg, _ := sel.X.(*ast.Ident)
	if pn, ok := info.Uses[pkg].(*types.PkgName); !ok || pn.Imported().Path() != "crypto/hmac" || sel.Sel.Name != "Equal" {
		t.Fatal("macEqual does not return crypto/hmac.Equal(...)")
	}

	// And verification compares through macEqual.
	uses := 0
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			if c, ok := n.(*ast.CallExpr); ok {
				if id, ok := c.Fun.(*ast.Ident); ok && id.Name == "macEqual" {
					uses++
				}
			}
			return true
		})
	}
	if uses < 2 {
		t.Fatalf("macEqual is called %d times; verification compares the exact and the folded MAC with it", uses)
	}
}

// argOf reports whether the innermost call enclosing the node on top of
// stack is a call of the function named name.
func argOf(stack []ast.Node, name string) bool {
	for i := len(stack) - 2; i >= 0; i-- {
		if c, ok := stack[i].(*ast.CallExpr); ok {
			id, ok := c.Fun.(*ast.Ident)
			return ok && id.Name == name
		}
	}
	return false
}
