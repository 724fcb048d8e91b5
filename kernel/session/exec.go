package session

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"reflect"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qwengo/qwengo/kernel/display"
	"github.com/traefik/yaegi/interp"
)

// stillRunningAfter is how long an interrupted cell may stay inside a compiled call before the
// session says so.
var stillRunningAfter = 2 * time.Second

// StillRunningMessage starts the notice written to the cell's stderr when an interrupted cell
// stays inside a compiled call that ignores cancellation.
const StillRunningMessage = "still running a compiled call that ignores cancellation"

// runCell runs the magics and Go segments of a cell in order; the result is the last Go
// segment's trailing expression.
func (s *Session) runCell(c *cell) (data map[string]any, err error) {
	var timer *time.Time
	defer func() {
		if timer != nil {
			c.io.Stream("stdout", fmt.Sprintf("Wall time: %s\n", fmtDuration(time.Since(*timer))))
		}
	}()
	for _, seg := range splitSegments(c.src) {
		data = nil
		if c.ctx.Err() != nil {
			return nil, interrupted()
		}
		if seg.magic {
			if seg.text == "%time" || seg.text == "%%time" || strings.HasPrefix(seg.text, "%time ") || strings.HasPrefix(seg.text, "%%time ") {
				now := time.Now()
				timer = &now
				rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(seg.text, "%%time"), "%time"))
				if rest == "" {
					continue
				}
				// %time stmt: time that line (columns shift by the magic's length).
				code := strings.Repeat("\n", seg.line-1) + strings.Repeat(" ", len(seg.text)-len(rest)) + rest
				if data, err = s.runGo(c, code); err != nil {
					return nil, err
				}
				continue
			}
			if err := s.runMagic(c, seg.text); err != nil {
				return nil, err
			}
			continue
		}
		if data, err = s.runGo(c, seg.text); err != nil {
			return nil, err
		}
	}
	return data, nil
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.3f s", d.Seconds())
}

func interrupted() *CellError {
	return &CellError{Name: ErrInterrupted, Value: "the cell was interrupted",
		Traceback: []string{"Interrupted: the cell was interrupted"}}
}

// cellName is the file name positions of a cell carry inside the interpreter.
func cellName(seq int) string { return fmt.Sprintf("cell%d/_.go", seq) }

// compile compiles a node; yaegi's compiler panics on some inputs, which become errors.
func (s *Session) compile(node ast.Node) (prog *interp.Program, err error) {
	defer func() {
		if r := recover(); r != nil {
			prog, err = nil, fmt.Errorf("%v", r)
		}
	}()
	return s.in.CompileAST(node)
}

// runGo evaluates Go code (in cell coordinates) group by group.
func (s *Session) runGo(c *cell, text string) (map[string]any, error) {
	ec := s.errCtx(c)
	units, err := splitCell(text)
	if err != nil {
		return nil, ec.compileError(err)
	}
	var data map[string]any
	groups := planGroups(units)
	for gi, g := range groups {
		if c.ctx.Err() != nil {
			return nil, interrupted()
		}
		var trailing *unit
		if g.kind == unitStmt && gi == len(groups)-1 && g.units[len(g.units)-1].isExpr {
			u := g.units[len(g.units)-1]
			trailing = &u
			g.units = g.units[:len(g.units)-1]
		}
		if len(g.units) > 0 {
			if err := s.runGroup(c, ec, text, g); err != nil {
				return nil, err
			}
		}
		if trailing != nil {
			if data, err = s.evalTrailing(c, ec, text, *trailing); err != nil {
				return nil, err
			}
		}
	}
	return data, nil
}

// parseGroup parses a group's source in the interpreter's file set, rewrites its go
// statements, works around two yaegi bugs (fixCommaOk; for statements, wrapMultiDefines) and
// returns the node to compile.
func (s *Session) parseGroup(code string, kind unitKind) (ast.Node, *ast.BlockStmt, error) {
	f, err := parser.ParseFile(s.in.FileSet(), "_.go", code, parser.DeclarationErrors)
	if err != nil {
		return nil, nil, err
	}
	rewriteGo(f)
	fixCommaOk(f)
	if kind == unitStmt {
		body := f.Decls[0].(*ast.FuncDecl).Body
		wrapMultiDefines(body.List)
		return body, body, nil
	}
	return f, nil, nil
}

// runImports imports the packages of an import group that are not imported yet under the
// same name; a name imported before from another path is replaced.
func (s *Session) runImports(c *cell, ec errorContext, g group) error {
	var b strings.Builder
	b.WriteString("package main\n")
	var replaced []string
	n := 0
	for _, u := range g.units {
		for _, im := range u.imports {
			name := im.name
			if name == "" {
				name = s.importName(im.path)
			}
			if name != "_" && name != "." {
				s.namesMu.RLock()
				old, ok := s.imports[name]
				s.namesMu.RUnlock()
				if ok && old == im.path {
					continue
				}
				if ok {
					replaced = append(replaced, name+"/_.go")
				}
			}
			b.WriteString(lineDirective(cellName(c.seq), im.line, im.col))
			if im.name != "" {
				b.WriteString("import " + im.name + " " + strconv.Quote(im.path) + "\n")
			} else {
				b.WriteString("import " + strconv.Quote(im.path) + "\n")
			}
			n++
		}
	}
	if n > 0 {
		f, err := parser.ParseFile(s.in.FileSet(), "_.go", b.String(), 0)
		if err != nil {
			return ec.compileError(err)
		}
		restore, _ := forgetTypes(s.in, replaced)
		prog, err := s.compile(f)
		if err != nil {
			restore()
			return ec.compileError(err)
		}
		if _, err := s.exec(c, ec, prog); err != nil {
			return err
		}
	}
	s.record(c, "", g)
	return nil
}

// runGroup compiles and runs one group, and records what it declared.
func (s *Session) runGroup(c *cell, ec errorContext, text string, g group) error {
	if g.kind == unitImport {
		return s.runImports(c, ec, g)
	}
	code := groupSource(text, cellName(c.seq), g)
	node, _, err := s.parseGroup(code, g.kind)
	if err != nil {
		return ec.compileError(err)
	}
	restore := func() {}
	if g.kind == unitDecl {
		var types []string
		for _, u := range g.units {
			types = append(types, u.types...)
		}
		if len(types) > 0 {
			r, ok := forgetTypes(s.in, s.redefined(types))
			if !ok {
				return &CellError{Name: ErrCompile, Value: "cannot redefine types in this yaegi version: use %reset",
					Traceback: []string{"CompileError: cannot redefine types in this yaegi version: use %reset"}}
			}
			restore = r
		}
	}
	prog, err := s.compile(node)
	if err != nil {
		restore()
		return ec.compileError(err)
	}
	if _, err := s.exec(c, ec, prog); err != nil {
		return err
	}
	s.record(c, text, g)
	for _, u := range g.units {
		if u.isMain {
			// yaegi runs main whenever a declaration is compiled while main exists: it ran
			// now; forget it so later cells do not run it again.
			forgetTypes(s.in, []string{"main"})
		}
	}
	return nil
}

// redefined returns those of names that a previous cell defined.
func (s *Session) redefined(names []string) []string {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	var out []string
	for _, n := range names {
		if _, ok := s.decls[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

// record remembers a group's declarations and imports.
func (s *Session) record(c *cell, text string, g group) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	for _, u := range g.units {
		for _, im := range u.imports {
			name := im.name
			if name == "" {
				name = s.importName(im.path)
			}
			if name != "_" && name != "." {
				s.imports[name] = im.path
			}
		}
		if g.kind != unitDecl {
			continue
		}
		src := text[u.start:u.end]
		doc := commentText(text[u.docStart:u.start])
		for _, n := range u.names {
			d := &declInfo{decl: src, doc: doc, label: c.label}
			switch {
			case strings.HasPrefix(src, "func"):
				d.kind = "func"
				if strings.Contains(n, ".") {
					d.kind = "method"
				}
				d.decl = funcHeader(src)
			case strings.HasPrefix(src, "type"):
				d.kind = "type"
			case strings.HasPrefix(src, "var"):
				d.kind = "var"
			default:
				d.kind = "const"
			}
			if len(d.decl) > 2000 {
				d.decl = d.decl[:2000] + " …"
			}
			if d.kind == "type" {
				// Methods of the old type are gone with it.
				for k := range s.decls {
					if strings.HasPrefix(k, n+".") {
						delete(s.decls, k)
					}
				}
			}
			s.decls[n] = d
		}
	}
}

// importName is the package name of an import path: from the compiled tables when known,
// else the last element that is not a major version.
func (s *Session) importName(p string) string {
	for _, t := range append(s.symbolTables(), stdlibTable()) {
		for k := range t {
			if path.Dir(k) == p {
				return path.Base(k)
			}
		}
	}
	base := path.Base(p)
	if len(base) > 1 && base[0] == 'v' && strings.Trim(base[1:], "0123456789") == "" {
		return path.Base(path.Dir(p))
	}
	return base
}

// funcHeader cuts a function declaration before its body.
func funcHeader(src string) string {
	depth := 0
	for i, r := range src {
		switch r {
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case '{':
			if depth == 0 {
				return strings.TrimSpace(src[:i])
			}
		}
	}
	return src
}

// commentText strips comment markers.
func commentText(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		l = strings.TrimSpace(l)
		l = strings.TrimPrefix(l, "//")
		l = strings.TrimPrefix(l, "/*")
		l = strings.TrimSuffix(l, "*/")
		out = append(out, strings.TrimPrefix(l, " "))
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}

// exec runs a compiled program in the cell's context. An interrupt stops it; if the
// evaluation goroutine stays in a compiled call, exec waits (see the package documentation).
func (s *Session) exec(c *cell, ec errorContext, prog *interp.Program) (reflect.Value, error) {
	type result struct {
		v   reflect.Value
		err error
	}
	in := s.in
	label := fmt.Sprintf("%s/%d", s.id, c.seq)
	ch := make(chan result, 1)
	go func() {
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("qwengo_eval", label)))
		v, err := in.ExecuteWithContext(c.ctx, prog)
		ch <- result{v, err}
	}()
	r := <-ch
	if c.ctx.Err() != nil && (r.err == nil || errors.Is(r.err, context.Canceled) || errors.Is(r.err, context.DeadlineExceeded)) {
		if err := s.waitEval(c, label); err != nil {
			return reflect.Value{}, err
		}
		s.takePanicLines()
		return reflect.Value{}, interrupted()
	}
	if r.err != nil {
		if p, ok := asPanic(r.err); ok {
			return reflect.Value{}, ec.panicError(p.Value, s.takePanicLines(), p.Stack)
		}
		msg := ec.rewrite(r.err.Error())
		return reflect.Value{}, &CellError{Name: ErrOther, Value: msg, Traceback: []string{ErrOther + ": " + msg}}
	}
	return r.v, nil
}

// waitEval waits until the interrupted evaluation goroutine is gone; after stillRunningAfter it
// tells the user, and a second Interrupt abandons the interpreter.
func (s *Session) waitEval(c *cell, label string) error {
	start := time.Now()
	warned := false
	poll := 5 * time.Millisecond
	for evalAlive(label) {
		if !warned && time.Since(start) >= stillRunningAfter {
			warned = true
			c.io.Stream("stderr", StillRunningMessage+"; waiting for it to return. "+
				"Interrupt again to abandon the interpreter (variables and functions defined in cells are lost; loaded models and engine state are kept).\n")
		}
		select {
		case <-c.hard:
			if err := s.reset(); err != nil {
				return &CellError{Name: ErrOther, Value: err.Error(), Traceback: []string{err.Error()}}
			}
			msg := "abandoned the interpreter stuck in a compiled call; started a fresh one (cell definitions are gone; engine state is kept)"
			c.io.Stream("stderr", msg+"\n")
			return &CellError{Name: ErrInterrupted, Value: msg, Traceback: []string{"Interrupted: " + msg}}
		case <-time.After(poll):
		}
		if poll < 200*time.Millisecond {
			poll *= 2
		}
	}
	if warned {
		c.io.Stream("stderr", fmt.Sprintf("the compiled call returned after %s\n", fmtDuration(time.Since(start))))
	}
	return nil
}

// parseExpr parses an expression statement wrapped as a block for the interpreter.
func (s *Session) parseStmt(code string) (*ast.BlockStmt, error) {
	_, body, err := s.parseGroup("package main; func main() {\n"+code+"\n}", unitStmt)
	return body, err
}

// evalTrailing evaluates the cell's trailing expression. With exactly one value it is stored
// in _qgLast and its bundle computed; otherwise it runs as a plain statement.
func (s *Session) evalTrailing(c *cell, ec errorContext, text string, u unit) (map[string]any, error) {
	code := groupSource(text, cellName(c.seq), group{kind: unitStmt, units: []unit{u}})
	// The plain statement compiles first: its errors are the clearest, and a failed compile
	// of the assignment would leave yaegi's scope polluted.
	_, body, err := s.parseGroup(code, unitStmt)
	if err != nil {
		return nil, ec.compileError(err)
	}
	plain, err := s.compile(body)
	if err != nil {
		return nil, ec.compileError(err)
	}
	var es *ast.ExprStmt
	if len(body.List) > 0 {
		es, _ = body.List[0].(*ast.ExprStmt)
	}
	if es == nil || !s.singleValue(body, es.X) {
		_, err = s.exec(c, ec, plain)
		return nil, err
	}
	_, body, err = s.parseGroup(code, unitStmt)
	if err != nil {
		return nil, ec.compileError(err)
	}
	x := body.List[0].(*ast.ExprStmt).X
	body.List = []ast.Stmt{&ast.AssignStmt{Lhs: []ast.Expr{ast.NewIdent(lastVar)}, Tok: token.DEFINE, TokPos: x.Pos(), Rhs: []ast.Expr{x}}}
	prog, err := s.compile(body)
	if err != nil {
		_, err = s.exec(c, ec, plain)
		return nil, err
	}
	if _, err := s.exec(c, ec, prog); err != nil {
		return nil, err
	}
	return s.bundle(c, ec), nil
}

// singleValue reports whether an expression has exactly one value, by compiling (not running)
// a call of the prelude's _qgOne(v any) with it: yaegi itself accepts `v := f()` for
// functions with no or several results, but checks call arguments.
// body is the parsed block holding x: its position names the source file, which yaegi needs
// to resolve package names; its statements are replaced.
func (s *Session) singleValue(body *ast.BlockStmt, x ast.Expr) bool {
	call := &ast.CallExpr{Fun: ast.NewIdent(hiddenPref + "One"), Args: []ast.Expr{x}}
	body.List = []ast.Stmt{&ast.ExprStmt{X: call}}
	_, err := s.compile(body)
	return err == nil
}

// exprChain renders a selector chain of identifiers ("a.b.c"), or "".
func exprChain(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.SelectorExpr:
		if base := exprChain(x.X); base != "" {
			return base + "." + x.Sel.Name
		}
	}
	return ""
}

// evalChainLocked evaluates a chain of identifiers without output or side effects (a chain
// calls nothing); s.mu is held by the caller.
func (s *Session) evalChainLocked(chain string) (v reflect.Value, ok bool) {
	for _, part := range strings.Split(chain, ".") {
		if !token.IsIdentifier(part) {
			return reflect.Value{}, false
		}
	}
	body, err := s.parseStmt(chain)
	if err != nil {
		return reflect.Value{}, false
	}
	prog, err := s.compile(body)
	if err != nil {
		return reflect.Value{}, false
	}
	defer func() {
		if recover() != nil {
			v, ok = reflect.Value{}, false
		}
		s.takePanicLines()
	}()
	v, err = s.in.Execute(prog)
	if err != nil || !v.IsValid() {
		return reflect.Value{}, false
	}
	return v, true
}

// probe is one way a value offers a MIME representation. Probes with a method name are
// tried only when a cell declared a method of that name (compiled types are covered by
// display.Bundle), which keeps a plain `1+1` fast.
type probe struct{ mime, expr, method string }

var probes = []probe{
	{display.MIMEText, hiddenPref + "fmt.Sprint(" + lastVar + ")", ""}, // yaegi's fmt sees interpreted String methods
	{"", rtName + ".Bundle(" + lastVar + ")", ""},                      // what compiled types offer
	{display.MIMEHTML, lastVar + ".HTML()", "HTML"},
	{display.MIMEMarkdown, lastVar + ".Markdown()", "Markdown"},
	{display.MIMESVG, lastVar + ".SVG()", "SVG"},
	{display.MIMEPNG, lastVar + ".PNG()", "PNG"},
	{display.MIMEJPEG, lastVar + ".JPEG()", "JPEG"},
	{display.MIMEJSON, lastVar + ".JSON()", "JSON"},
	{display.MIMELaTeX, lastVar + ".LaTeX()", "LaTeX"},
	{"image", rtName + ".ImagePNG(" + lastVar + ")", "At"},
	{"mime", lastVar + ".MIME()", "MIME"},
}

// declaredMethods is the set of method names cells declared.
func (s *Session) declaredMethods() map[string]bool {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	m := map[string]bool{}
	for k, d := range s.decls {
		if d.kind == "method" {
			m[k[strings.LastIndexByte(k, '.')+1:]] = true
		}
	}
	return m
}

// bundle computes the MIME bundle of _qgLast: each probe that compiles (the value has that
// method) is run; failing or panicking probes are skipped.
func (s *Session) bundle(c *cell, ec errorContext) map[string]any {
	data := map[string]any{}
	methods := s.declaredMethods()
	for _, p := range probes {
		if p.method != "" && !methods[p.method] {
			continue
		}
		body, err := s.parseStmt(p.expr)
		if err != nil {
			continue
		}
		prog, err := s.compile(body)
		if err != nil {
			continue
		}
		v, err := s.exec(c, ec, prog)
		if err != nil || !v.IsValid() {
			continue
		}
		for v.Kind() == reflect.Interface && !v.IsNil() {
			v = v.Elem()
		}
		switch p.mime {
		case "", "mime":
			if m, ok := v.Interface().(map[string]any); ok {
				for k, x := range m {
					data[k] = x
				}
			}
		case display.MIMEPNG, display.MIMEJPEG, "image":
			if b, ok := v.Interface().([]byte); ok && len(b) > 0 {
				mime := p.mime
				if mime == "image" {
					mime = display.MIMEPNG
					if len(b) >= 24 { // the PNG header's IHDR: width and height
						w := uint32(b[16])<<24 | uint32(b[17])<<16 | uint32(b[18])<<8 | uint32(b[19])
						h := uint32(b[20])<<24 | uint32(b[21])<<16 | uint32(b[22])<<8 | uint32(b[23])
						data[display.MIMEText] = fmt.Sprintf("<image %d×%d>", w, h)
					}
				}
				data[mime] = pngBase64(b)
			}
		case display.MIMEJSON:
			if v.CanInterface() {
				if j, ok := display.JSONData(v.Interface())[display.MIMEJSON]; ok {
					data[display.MIMEJSON] = j
				}
			}
		default:
			if v.Kind() == reflect.String {
				data[p.mime] = v.String()
			}
		}
	}
	s.takePanicLines()
	if _, ok := data[display.MIMEText]; !ok {
		data[display.MIMEText] = display.TextOf(data)
	}
	if t, ok := data[display.MIMEText].(string); ok && len(t) > MaxText {
		cut := MaxText
		for cut > 0 && !utf8.RuneStart(t[cut]) {
			cut--
		}
		data[display.MIMEText] = t[:cut] + fmt.Sprintf("… (%d more bytes)", len(t)-cut)
	}
	return data
}

// MaxText bounds the text/plain of a trailing expression's value.
var MaxText = 64 << 10
