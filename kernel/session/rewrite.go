package session

import (
	"fmt"
	"go/ast"
	"go/token"
	"reflect"

	"github.com/traefik/yaegi/stdlib"
)

func stdlibTable() map[string]map[string]reflect.Value { return stdlib.Symbols }

// builtins cannot be assigned to a variable, so a go statement calling one keeps it inline.
var builtins = map[string]bool{
	"append": true, "cap": true, "clear": true, "close": true, "complex": true, "copy": true,
	"delete": true, "imag": true, "len": true, "make": true, "max": true, "min": true, "new": true,
	"panic": true, "print": true, "println": true, "real": true, "recover": true,
}

// rewriteGo replaces every go statement under n,
//
//	go f(x, 1)
//
// with
//
//	{ _qgF, _qgA0 := f, x; go _qgrt.Go(_qgrt.Cell(), func() { _qgF(_qgA0, 1) }, _qgF, false, _qgA0, 1) }
//
// The go statement evaluates the function and the arguments, as Go does, and hands the values
// to the session's runtime, which calls the function with them under a recover (reporting a
// panic instead of crashing). The closure is the fallback when the values cannot be passed by
// reflection (a parameter of an interpreted interface type) and the only path for builtins;
// it reads the hoisted variables, which yaegi shares between loop iterations, so only the
// reflective path has per-iteration values.
func rewriteGo(n ast.Node) {
	ast.Inspect(n, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.BlockStmt:
			rewriteList(x.List)
		case *ast.CaseClause:
			rewriteList(x.Body)
		case *ast.CommClause:
			rewriteList(x.Body)
		case *ast.LabeledStmt:
			if g, ok := x.Stmt.(*ast.GoStmt); ok && !isWrapped(g) {
				x.Stmt = wrapGo(g)
			}
		}
		return true
	})
}

func rewriteList(list []ast.Stmt) {
	for i, st := range list {
		if g, ok := st.(*ast.GoStmt); ok && !isWrapped(g) {
			list[i] = wrapGo(g)
		}
	}
}

// isWrapped reports whether g is already a go statement of the session's wrapper.
func isWrapped(g *ast.GoStmt) bool {
	sel, ok := g.Call.Fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == rtName && sel.Sel.Name == "Go"
}

func wrapGo(g *ast.GoStmt) ast.Stmt {
	call := g.Call
	var lhs, rhs []ast.Expr
	hoist := func(e ast.Expr, name string) ast.Expr {
		lhs = append(lhs, ast.NewIdent(name))
		rhs = append(rhs, e)
		return ast.NewIdent(name)
	}
	rt := func(name string) ast.Expr {
		return &ast.SelectorExpr{X: ast.NewIdent(rtName), Sel: ast.NewIdent(name)}
	}
	reflective := true
	fun := call.Fun
	if keepInline(fun, true) {
		reflective = false // builtins and generic instantiations are not values
	} else {
		fun = hoist(fun, hiddenPref+"F")
	}
	args := make([]ast.Expr, len(call.Args))
	soleCall := false
	if len(call.Args) == 1 {
		_, soleCall = ast.Unparen(call.Args[0]).(*ast.CallExpr)
		reflective = reflective && !soleCall // it may be multi-valued
	}
	for i, a := range call.Args {
		if !reflective || keepInline(a, false) {
			args[i] = a
			continue
		}
		args[i] = hoist(a, fmt.Sprintf("%sA%d", hiddenPref, i))
	}
	lit := &ast.FuncLit{
		Type: &ast.FuncType{Func: g.Go, Params: &ast.FieldList{}},
		Body: &ast.BlockStmt{List: []ast.Stmt{&ast.ExprStmt{X: &ast.CallExpr{Fun: fun, Args: args, Ellipsis: call.Ellipsis}}}},
	}
	goArgs := []ast.Expr{&ast.CallExpr{Fun: rt("Cell")}, lit}
	if reflective {
		goArgs = append(goArgs, fun, ast.NewIdent(fmt.Sprint(call.Ellipsis.IsValid())))
		goArgs = append(goArgs, args...)
	} else {
		goArgs = append(goArgs, ast.NewIdent("nil"), ast.NewIdent("false"))
	}
	wrapped := &ast.GoStmt{Go: g.Go, Call: &ast.CallExpr{Fun: rt("Go"), Args: goArgs}}
	block := &ast.BlockStmt{Lbrace: g.Go}
	if len(lhs) > 0 {
		block.List = append(block.List, &ast.AssignStmt{Lhs: lhs, Tok: token.DEFINE, TokPos: g.Go, Rhs: rhs})
	}
	block.List = append(block.List, wrapped)
	return block
}

// keepInline reports whether an expression of a go statement's call is left in the
// goroutine: literals and constant-looking expressions (untyped constants must meet their
// parameter's type), builtins and generic instantiations as the function.
func keepInline(e ast.Expr, isFun bool) bool {
	switch x := ast.Unparen(e).(type) {
	case *ast.BasicLit:
		return true
	case *ast.Ident:
		if isFun {
			return builtins[x.Name]
		}
		switch x.Name {
		case "nil", "true", "false", "iota":
			return true
		}
		return false
	case *ast.IndexExpr, *ast.IndexListExpr:
		return isFun
	case *ast.UnaryExpr:
		return !isFun && x.Op != token.AND && x.Op != token.ARROW && keepInline(x.X, false)
	case *ast.BinaryExpr:
		return !isFun && keepInline(x.X, false) && keepInline(x.Y, false)
	case *ast.ArrayType, *ast.MapType, *ast.ChanType, *ast.FuncType, *ast.InterfaceType, *ast.StructType:
		return true // a type (conversion or make/new argument)
	}
	return false
}

// wrapMultiDefines works around a yaegi (v0.16.1) bug: a multi-value definition from one
// expression inside a block of a cell's top level —
//
//	if ok {
//		v, err := strconv.Atoi(s) // "undefined: v"
//	}
//
// (also `v, ok := m[k]`, `var a, b = f()`, in for, switch, select and bare blocks) — fails to
// compile, while the same statement inside a function body, or at the top level itself, works.
// Each top-level compound statement of the list containing one (outside function literals) is
// run as the body of a function literal called in place: func() { STMT }(). Its own variables
// are block-scoped anyway, and assignments to cell variables reach them through the closure;
// what changes is that a defer in it runs when the statement ends.
func wrapMultiDefines(list []ast.Stmt) {
	for i, st := range list {
		switch st.(type) {
		case *ast.IfStmt, *ast.ForStmt, *ast.RangeStmt, *ast.SwitchStmt, *ast.TypeSwitchStmt, *ast.SelectStmt, *ast.BlockStmt:
		default:
			continue
		}
		if !hasNestedMultiDefine(st) {
			continue
		}
		pos := st.Pos()
		list[i] = &ast.ExprStmt{X: &ast.CallExpr{
			Fun:    &ast.FuncLit{Type: &ast.FuncType{Func: pos, Params: &ast.FieldList{}}, Body: &ast.BlockStmt{Lbrace: pos, List: []ast.Stmt{st}, Rbrace: st.End()}},
			Lparen: st.End(), Rparen: st.End(),
		}}
	}
}

// hasNestedMultiDefine reports whether st holds, outside function literals, a definition of
// several names from a single expression (a, b := f() or var a, b = f()).
func hasNestedMultiDefine(st ast.Stmt) bool {
	found := false
	ast.Inspect(st, func(n ast.Node) bool {
		if found {
			return false
		}
		switch x := n.(type) {
		case *ast.FuncLit:
			return false
		case *ast.AssignStmt:
			found = x.Tok == token.DEFINE && len(x.Lhs) > 1 && len(x.Rhs) == 1
		case *ast.ValueSpec:
			found = len(x.Names) > 1 && len(x.Values) == 1
		}
		return !found
	})
	return found
}

// fixCommaOk works around a second yaegi (v0.16.1) bug: a comma-ok map lookup or type
// assertion that fails leaves its value variable as it was instead of setting it to the zero
// value, so in a loop
//
//	v, ok := m[key] // a missing key: v keeps the previous iteration's value
//
// Each such statement in a statement list (cell top level, blocks, function bodies, case
// clauses), defining or assigning two named variables, is followed by
//
//	if !ok { v = m[key] }      // a map: indexing a missing key gives the zero value
//	if !ok { v = *new(T) }     // x.(T)
//
// The map form is only added when m and key are plain names, selectors or literals, since they
// are evaluated again. Not covered: the statement as the init of an if, for or switch.
func fixCommaOk(n ast.Node) {
	ast.Inspect(n, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.BlockStmt:
			x.List = withCommaOkFixes(x.List)
		case *ast.CaseClause:
			x.Body = withCommaOkFixes(x.Body)
		case *ast.CommClause:
			x.Body = withCommaOkFixes(x.Body)
		}
		return true
	})
}

func withCommaOkFixes(list []ast.Stmt) []ast.Stmt {
	var out []ast.Stmt
	for i, st := range list {
		fix := commaOkFix(st)
		if fix == nil {
			if out != nil {
				out = append(out, st)
			}
			continue
		}
		if out == nil {
			out = append(make([]ast.Stmt, 0, len(list)+1), list[:i]...)
		}
		out = append(out, st, fix)
	}
	if out == nil {
		return list
	}
	return out
}

// commaOkFix returns the statement that zeroes the value of a failed comma-ok in st, or nil.
func commaOkFix(st ast.Stmt) ast.Stmt {
	as, ok := st.(*ast.AssignStmt)
	if !ok || len(as.Lhs) != 2 || len(as.Rhs) != 1 || (as.Tok != token.DEFINE && as.Tok != token.ASSIGN) {
		return nil
	}
	val, ok1 := as.Lhs[0].(*ast.Ident)
	okv, ok2 := as.Lhs[1].(*ast.Ident)
	if !ok1 || !ok2 || val.Name == "_" || okv.Name == "_" {
		return nil
	}
	var zero ast.Expr
	switch r := ast.Unparen(as.Rhs[0]).(type) {
	case *ast.IndexExpr:
		if !pureExpr(r.X) || !pureExpr(r.Index) {
			return nil
		}
		zero = &ast.IndexExpr{X: r.X, Index: r.Index}
	case *ast.TypeAssertExpr:
		if r.Type == nil {
			return nil
		}
		zero = &ast.StarExpr{X: &ast.CallExpr{Fun: ast.NewIdent("new"), Args: []ast.Expr{r.Type}}}
	default:
		return nil
	}
	return &ast.IfStmt{
		If:   as.End(),
		Cond: &ast.UnaryExpr{Op: token.NOT, X: ast.NewIdent(okv.Name)},
		Body: &ast.BlockStmt{List: []ast.Stmt{&ast.AssignStmt{Lhs: []ast.Expr{ast.NewIdent(val.Name)}, Tok: token.ASSIGN, Rhs: []ast.Expr{zero}}}},
	}
}

// pureExpr reports whether evaluating e again is harmless: names, selectors of names, literals.
func pureExpr(e ast.Expr) bool {
	switch x := ast.Unparen(e).(type) {
	case *ast.Ident, *ast.BasicLit:
		return true
	case *ast.SelectorExpr:
		return pureExpr(x.X)
	}
	return false
}
