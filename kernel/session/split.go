package session

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"sort"
	"strings"
)

// unitKind classifies a top-level piece of a cell.
type unitKind int

const (
	unitImport unitKind = iota // import declaration
	unitDecl                   // func, method, type, var or const declaration
	unitStmt                   // statement (including a trailing expression)
)

func (k unitKind) String() string {
	switch k {
	case unitImport:
		return "import"
	case unitDecl:
		return "decl"
	}
	return "stmt"
}

// unit is one top-level declaration or statement of a cell, located by byte offsets and by
// line:column (1-based, columns in bytes) in the cell.
type unit struct {
	kind       unitKind
	start, end int // src[start:end] is the unit's text
	line, col  int
	docStart   int // start of the doc comment right above the unit (== start if none)

	// Filled by parsing.
	names   []string // declared names: funcs, types, vars, consts; methods as "Type.Method"
	types   []string // type names declared (subset of names)
	imports []importSpec
	isMain  bool // func main()
	isExpr  bool // an expression statement
}

// importSpec is one imported package: name "" for the package's own name; line:col locates
// the spec in the cell.
type importSpec struct {
	name, path string
	line, col  int
}

// splitError is a syntax error located in the cell.
type splitError struct {
	list scanner.ErrorList
}

func (e *splitError) Error() string { return e.list.Error() }

// cellFile is the file name positions of cell code carry while parsing a cell alone. Its base
// name must be yaegi's default source name "_.go": yaegi resolves package names per source
// file, by the base name of the position's file.
const cellFile = "cell/_.go"

// splitCell cuts a cell into top-level units at depth-0 semicolons (explicit or inserted at
// line ends), classifies each unit as import, declaration or statement, and parses each one to
// check it and to learn what it declares. A leading package clause is dropped. Syntax errors
// come back as *splitError with positions in the cell (file name "cell").
func splitCell(src string) ([]unit, error) {
	fset := token.NewFileSet()
	file := fset.AddFile(cellFile, -1, len(src))
	var errs scanner.ErrorList
	var s scanner.Scanner
	s.Init(file, []byte(src), func(pos token.Position, msg string) { errs.Add(pos, msg) }, scanner.ScanComments)

	type tok struct {
		pos token.Pos
		tok token.Token
		lit string
	}
	var units []unit
	var cur []tok
	depth := 0
	header := false // inside the header of a for/if/switch at depth 0, whose semicolons do not end the unit
	// Comment groups: offset where the current run of line-adjacent comments starts, and the
	// line it ends on.
	commentStart, commentEndLine := -1, -1
	lastTokEndLine := 0

	flush := func() {
		if len(cur) == 0 {
			return
		}
		first, last := cur[0], cur[len(cur)-1]
		start := file.Offset(first.pos)
		end := file.Offset(last.pos) + tokLen(last.tok, last.lit)
		if last.tok == token.STRING && strings.HasPrefix(last.lit, "`") {
			// Raw strings lose carriage returns in lit: find the closing quote in src.
			if i := strings.IndexByte(src[file.Offset(last.pos)+1:], '`'); i >= 0 {
				end = file.Offset(last.pos) + i + 2
			}
		}
		if end > len(src) {
			end = len(src)
		}
		p := file.Position(first.pos)
		u := unit{start: start, end: end, line: p.Line, col: p.Column, docStart: start}
		if commentStart >= 0 && commentEndLine == p.Line-1 && commentStart < start {
			u.docStart = commentStart
		}
		u.kind = classify(cur[0].tok, func(i int) token.Token {
			if i < len(cur) {
				return cur[i].tok
			}
			return token.EOF
		})
		units = append(units, u)
		cur = cur[:0]
		header = false
		commentStart, commentEndLine = -1, -1
	}

	for {
		pos, t, lit := s.Scan()
		if t == token.EOF {
			break
		}
		if t == token.COMMENT {
			if len(cur) == 0 {
				p := file.Position(pos)
				endLine := file.Position(pos + token.Pos(len(lit))).Line
				if commentStart < 0 || p.Line > commentEndLine+1 || p.Line == lastTokEndLine {
					commentStart = file.Offset(pos)
				}
				if p.Line == lastTokEndLine { // a trailing comment of the previous unit
					commentStart = -1
					endLine = -1
				}
				commentEndLine = endLine
			}
			continue
		}
		switch t {
		case token.FOR, token.IF, token.SWITCH:
			if depth == 0 {
				header = true
			}
		case token.LBRACE:
			if depth == 0 {
				header = false
			}
			depth++
		case token.LPAREN, token.LBRACK:
			depth++
		case token.RPAREN, token.RBRACK, token.RBRACE:
			if depth > 0 {
				depth--
			}
		}
		if t == token.SEMICOLON && depth == 0 && !header {
			flush()
			lastTokEndLine = file.Position(pos).Line
			continue
		}
		cur = append(cur, tok{pos, t, lit})
		lastTokEndLine = file.Position(pos + token.Pos(tokLen(t, lit))).Line
	}
	flush()
	if len(errs) > 0 {
		errs.Sort()
		return nil, &splitError{errs}
	}

	// Drop a leading package clause (pasted programs).
	if len(units) > 0 && strings.HasPrefix(src[units[0].start:units[0].end], "package") {
		f := strings.Fields(src[units[0].start:units[0].end])
		if len(f) == 2 && f[0] == "package" && token.IsIdentifier(f[1]) {
			units = units[1:]
		}
	}
	for i := range units {
		if err := parseUnit(src, &units[i]); err != nil {
			return nil, err
		}
	}
	return units, nil
}

// classify decides from the first tokens whether a unit is a declaration. A unit starting with
// func is a declaration when a name follows, or a receiver and then a name (a method);
// otherwise it is a function literal in a statement.
func classify(first token.Token, at func(int) token.Token) unitKind {
	switch first {
	case token.IMPORT:
		return unitImport
	case token.TYPE, token.VAR, token.CONST:
		return unitDecl
	case token.FUNC:
		switch at(1) {
		case token.IDENT:
			return unitDecl
		case token.LPAREN:
			depth := 0
			for i := 1; ; i++ {
				switch at(i) {
				case token.LPAREN:
					depth++
				case token.RPAREN:
					depth--
					if depth == 0 {
						if at(i+1) == token.IDENT && (at(i+2) == token.LPAREN || at(i+2) == token.LBRACK) {
							return unitDecl
						}
						return unitStmt
					}
				case token.EOF:
					return unitStmt
				}
			}
		}
	}
	return unitStmt
}

func tokLen(t token.Token, lit string) int {
	if lit != "" && t != token.SEMICOLON {
		return len(lit)
	}
	if t == token.SEMICOLON {
		return 0
	}
	return len(t.String())
}

// lineDirective returns a /*line*/ comment that makes the next character report position
// line:col of file name.
func lineDirective(name string, line, col int) string {
	return fmt.Sprintf("/*line %s:%d:%d*/", name, line, col)
}

// parseUnit parses one unit alone (positions in cell coordinates) and records what it
// declares.
func parseUnit(src string, u *unit) error {
	text := src[u.start:u.end]
	fset := token.NewFileSet()
	dir := lineDirective(cellFile, u.line, u.col)
	switch u.kind {
	case unitImport, unitDecl:
		f, err := parser.ParseFile(fset, "", "package p;"+dir+text+"\n", parser.DeclarationErrors)
		if err != nil {
			return u.endError(text, err)
		}
		if len(f.Decls) != 1 {
			return &splitError{scanner.ErrorList{{Pos: token.Position{Filename: cellFile, Line: u.line, Column: u.col},
				Msg: "expected one declaration"}}}
		}
		switch d := f.Decls[0].(type) {
		case *ast.FuncDecl:
			name := d.Name.Name
			if d.Recv != nil && len(d.Recv.List) == 1 {
				if tn := recvTypeName(d.Recv.List[0].Type); tn != "" {
					name = tn + "." + name
				}
			} else if name == "main" && d.Type.Params.NumFields() == 0 && d.Type.Results.NumFields() == 0 {
				u.isMain = true
			}
			u.names = append(u.names, name)
		case *ast.GenDecl:
			for _, sp := range d.Specs {
				switch sp := sp.(type) {
				case *ast.ImportSpec:
					p := fset.Position(sp.Pos())
					is := importSpec{path: strings.Trim(sp.Path.Value, "\"`"), line: p.Line, col: p.Column}
					if sp.Name != nil {
						is.name = sp.Name.Name
					}
					u.imports = append(u.imports, is)
				case *ast.TypeSpec:
					u.names = append(u.names, sp.Name.Name)
					u.types = append(u.types, sp.Name.Name)
				case *ast.ValueSpec:
					for _, n := range sp.Names {
						if n.Name != "_" {
							u.names = append(u.names, n.Name)
						}
					}
				}
			}
		}
	default:
		f, err := parser.ParseFile(fset, "", "package p;func _(){"+dir+text+"\n}", 0)
		if err != nil {
			return u.endError(text, err)
		}
		body := f.Decls[0].(*ast.FuncDecl).Body
		if len(body.List) == 1 {
			_, u.isExpr = body.List[0].(*ast.ExprStmt)
		}
	}
	return nil
}

func recvTypeName(e ast.Expr) string {
	for {
		switch t := e.(type) {
		case *ast.StarExpr:
			e = t.X
		case *ast.ParenExpr:
			e = t.X
		case *ast.IndexExpr:
			e = t.X
		case *ast.IndexListExpr:
			e = t.X
		case *ast.Ident:
			return t.Name
		default:
			return ""
		}
	}
}

// endError converts a parse error of the unit; errors found past the unit's text (the
// parser reached the wrapper's closing brace or the end) are placed at the end of the unit
// and say so.
func (u *unit) endError(text string, err error) error {
	var list scanner.ErrorList
	if !errors.As(err, &list) {
		return err
	}
	endLine, endCol := u.line, u.col
	for _, r := range text {
		if r == '\n' {
			endLine, endCol = endLine+1, 1
		} else {
			endCol++
		}
	}
	for _, e := range list {
		if e.Pos.Line > endLine || e.Pos.Line == endLine && e.Pos.Column > endCol {
			e.Pos.Line, e.Pos.Column = endLine, endCol
			e.Msg = strings.NewReplacer("found '}'", "found end of cell", "found 'EOF'", "found end of cell", "found newline", "found end of cell").Replace(e.Msg)
		}
	}
	return &splitError{list}
}

func toSplitError(err error) error {
	var list scanner.ErrorList
	if errors.As(err, &list) {
		return &splitError{list}
	}
	return err
}

// group is a run of units compiled together: all imports, or consecutive declarations, or
// consecutive statements.
type group struct {
	kind  unitKind
	units []unit
}

// planGroups orders a cell's units for evaluation: imports first, then the other units in
// source order, consecutive declarations in one group and consecutive statements in another
// (yaegi cannot mix the two in one evaluation).
func planGroups(units []unit) []group {
	var gs []group
	var imports []unit
	for _, u := range units {
		if u.kind == unitImport {
			imports = append(imports, u)
		}
	}
	if len(imports) > 0 {
		gs = append(gs, group{kind: unitImport, units: imports})
	}
	for _, u := range units {
		if u.kind == unitImport {
			continue
		}
		if n := len(gs); n > 0 && gs[n-1].kind == u.kind {
			gs[n-1].units = append(gs[n-1].units, u)
			continue
		}
		gs = append(gs, group{kind: u.kind, units: []unit{u}})
	}
	return gs
}

// groupSource builds the source of a group for the interpreter: every unit is preceded by a
// line directive so positions (in errors and panics) are the cell's, under file name name.
// Statements are wrapped in a function body, as yaegi's REPL mode does.
func groupSource(src, name string, g group) string {
	var b strings.Builder
	if g.kind == unitStmt {
		b.WriteString("package main; func main() {\n")
	} else {
		b.WriteString("package main\n")
	}
	for _, u := range g.units {
		b.WriteString(lineDirective(name, u.line, u.col))
		b.WriteString(src[u.start:u.end])
		if g.kind == unitStmt {
			b.WriteString(";")
		}
		b.WriteString("\n")
	}
	if g.kind == unitStmt {
		b.WriteString("}")
	}
	return b.String()
}

// unitsCover reports whether units are ordered, disjoint and inside src (a test and fuzz
// invariant).
func unitsCover(src string, units []unit) error {
	if !sort.SliceIsSorted(units, func(i, j int) bool { return units[i].start < units[j].start }) {
		return errors.New("units out of order")
	}
	prev := 0
	for i, u := range units {
		if u.start < prev || u.end < u.start || u.end > len(src) || u.docStart > u.start {
			return fmt.Errorf("unit %d [%d:%d] (doc %d) overlaps or is out of range (prev end %d, len %d)", i, u.start, u.end, u.docStart, prev, len(src))
		}
		if strings.TrimSpace(src[u.start:u.end]) == "" {
			return fmt.Errorf("unit %d is empty", i)
		}
		prev = u.end
	}
	return nil
}
