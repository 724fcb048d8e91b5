package session

import (
	"fmt"
	"go/scanner"
	"go/token"
	"reflect"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/qwengo/qwengo/kernel/symbols"
)

// Completion is the answer to a completion request: matches replace code[Start:End] (byte
// offsets).
type Completion struct {
	Matches    []string
	Start, End int
	Metadata   map[string]any // "_jupyter_types_experimental": [{start, end, text, type, signature}]
}

var goKeywords = []string{"break", "case", "chan", "const", "continue", "default", "defer", "else",
	"fallthrough", "for", "func", "go", "goto", "if", "import", "interface", "map", "package",
	"range", "return", "select", "struct", "switch", "type", "var"}

var predeclared = []string{"any", "bool", "byte", "comparable", "complex64", "complex128", "error",
	"false", "float32", "float64", "int", "int8", "int16", "int32", "int64", "iota", "nil", "rune",
	"string", "true", "uint", "uint8", "uint16", "uint32", "uint64", "uintptr"}

func isIdentRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

// identBefore returns the start of the identifier that ends at byte offset end.
func identBefore(code string, end int) int {
	i := end
	for i > 0 {
		r, n := utf8.DecodeLastRuneInString(code[:i])
		if !isIdentRune(r) {
			break
		}
		i -= n
	}
	return i
}

// chainBefore returns the selector chain ("a.b") whose last dot is at byte dot, or "" when
// what precedes the dot is not identifiers and dots.
func chainBefore(code string, dot int) string {
	i := dot
	for i > 0 {
		j := identBefore(code, i)
		if j == i {
			return ""
		}
		i = j
		if i > 0 && code[i-1] == '.' {
			i--
			continue
		}
		break
	}
	chain := code[i:dot]
	if chain == "" || strings.Contains(chain, "..") || !startsIdent(chain) {
		return ""
	}
	return chain
}

func startsIdent(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return r == '_' || unicode.IsLetter(r)
}

type candidate struct{ text, kind, sig string }

// Complete returns completions for the identifier or selector before byte offset cursor:
// magics, keywords, builtins, package names, cell-defined names, members of packages
// (strings.Sp), and fields and methods of values whose expression is a chain of identifiers
// (evaluated by the interpreter when no cell is running).
func (s *Session) Complete(code string, cursor int) Completion {
	if cursor < 0 || cursor > len(code) {
		cursor = len(code)
	}
	lineStart := strings.LastIndexByte(code[:cursor], '\n') + 1
	start := identBefore(code, cursor)
	comp := Completion{Start: start, End: cursor}
	prefix := code[start:cursor]
	var cands []candidate

	switch {
	case strings.HasPrefix(code[lineStart:cursor], "%") && !strings.ContainsAny(code[lineStart:cursor], " \t"):
		comp.Start = lineStart
		prefix = code[lineStart:cursor]
		for _, m := range magics {
			if strings.HasPrefix(m.Name, "%") {
				cands = append(cands, candidate{m.Name, "magic", m.Usage})
			}
		}
	case start > 0 && code[start-1] == '.':
		chain := chainBefore(code, start-1)
		if chain == "" {
			return comp
		}
		cands = s.members(chain)
	default:
		for _, k := range goKeywords {
			cands = append(cands, candidate{k, "keyword", ""})
		}
		for _, k := range predeclared {
			cands = append(cands, candidate{k, "type", ""})
		}
		for k := range builtins {
			cands = append(cands, candidate{k, "function", ""})
		}
		s.namesMu.RLock()
		for name, p := range s.imports {
			cands = append(cands, candidate{name, "module", p})
		}
		for name, d := range s.decls {
			if !strings.Contains(name, ".") {
				cands = append(cands, candidate{name, d.kind, d.decl})
			}
		}
		s.namesMu.RUnlock()
		for name := range s.packageNames() {
			cands = append(cands, candidate{name, "module", ""})
		}
		if s.mu.TryLock() {
			for name, v := range s.globals() {
				t := ""
				if v.IsValid() {
					t = v.Type().String()
				}
				cands = append(cands, candidate{name, "variable", t})
			}
			s.mu.Unlock()
		}
	}
	seen := map[string]bool{}
	var types []map[string]any
	sort.Slice(cands, func(i, j int) bool { return cands[i].text < cands[j].text })
	for _, c := range cands {
		if !strings.HasPrefix(c.text, prefix) || seen[c.text] || strings.HasPrefix(c.text, hiddenPref) {
			continue
		}
		seen[c.text] = true
		comp.Matches = append(comp.Matches, c.text)
		types = append(types, map[string]any{"start": comp.Start, "end": comp.End, "text": c.text, "type": c.kind, "signature": c.sig})
	}
	comp.Metadata = map[string]any{"_jupyter_types_experimental": types}
	return comp
}

// members lists what can follow "chain.": a package's exported symbols, or a value's fields
// and methods.
func (s *Session) members(chain string) []candidate {
	if p, ok := s.packagePath(chain); ok {
		var out []candidate
		for name, v := range s.exportsOf(p) {
			if strings.HasPrefix(name, "_") {
				continue
			}
			kind, sig := symbolKind(v)
			out = append(out, candidate{name, kind, sig})
		}
		return out
	}
	v, ok := s.evalQuiet(chain)
	if !ok {
		return nil
	}
	return s.valueMembers(v, chain)
}

// packagePath resolves a package name as cells see it: imported names first, then any
// compiled package with that name.
func (s *Session) packagePath(name string) (string, bool) {
	if strings.Contains(name, ".") {
		return "", false
	}
	s.namesMu.RLock()
	p, ok := s.imports[name]
	s.namesMu.RUnlock()
	if ok {
		return p, true
	}
	if s.isCellName(name) {
		return "", false
	}
	p, ok = s.packageNames()[name]
	return p, ok
}

func (s *Session) isCellName(name string) bool {
	if !s.mu.TryLock() {
		s.namesMu.RLock()
		_, ok := s.decls[name]
		s.namesMu.RUnlock()
		return ok
	}
	defer s.mu.Unlock()
	return s.isCellNameLocked(name)
}

// isCellNameLocked reports whether cells defined name (s.mu held).
func (s *Session) isCellNameLocked(name string) bool {
	s.namesMu.RLock()
	_, ok := s.decls[name]
	s.namesMu.RUnlock()
	if ok {
		return true
	}
	_, ok = s.globals()[name]
	return ok
}

// packagePathLocked is packagePath with s.mu held.
func (s *Session) packagePathLocked(name string) (string, bool) {
	s.namesMu.RLock()
	p, ok := s.imports[name]
	s.namesMu.RUnlock()
	if ok {
		return p, true
	}
	if s.isCellNameLocked(name) {
		return "", false
	}
	p, ok = s.packageNames()[name]
	return p, ok
}

// symbolKind classifies an extracted symbol.
func symbolKind(v reflect.Value) (kind, sig string) {
	if !v.IsValid() {
		return "variable", ""
	}
	switch {
	case v.Kind() == reflect.Func:
		return "function", v.Type().String()
	case v.Kind() == reflect.Pointer && v.IsNil():
		return "type", v.Type().Elem().String()
	}
	return "variable", v.Type().String()
}

// evalQuiet evaluates a chain of identifiers when no cell runs (see evalChainLocked).
func (s *Session) evalQuiet(chain string) (reflect.Value, bool) {
	if !s.mu.TryLock() {
		return reflect.Value{}, false
	}
	defer s.mu.Unlock()
	return s.evalChainLocked(chain)
}

// valueMembers lists fields and methods of a value: compiled methods through reflection,
// methods of cell-defined types by name (yaegi's types carry no reflect methods), fields of
// structs.
func (s *Session) valueMembers(v reflect.Value, chain string) []candidate {
	var out []candidate
	t := v.Type()
	addMethods := func(t reflect.Type) {
		for i := 0; i < t.NumMethod(); i++ {
			m := t.Method(i)
			if m.IsExported() {
				out = append(out, candidate{m.Name, "method", m.Type.String()})
			}
		}
	}
	addMethods(t)
	if t.Kind() != reflect.Pointer && t.Kind() != reflect.Interface {
		addMethods(reflect.PointerTo(t))
	}
	st := t
	if st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	if st.Kind() == reflect.Struct {
		for i := 0; i < st.NumField(); i++ {
			if name, ok := fieldName(st, st.Field(i)); ok {
				out = append(out, candidate{name, "field", st.Field(i).Type.String()})
			}
		}
	}
	for m, key := range s.cellMethods(chain) {
		sig := ""
		if d, ok := s.cellDecl(key); ok {
			sig = d.decl
		}
		out = append(out, candidate{m, "method", sig})
	}
	return out
}

// fieldName is the name cells use for a struct field: exported fields of compiled types,
// and every field of yaegi's struct types (unnamed), where an unexported field f is
// represented as "Xf".
func fieldName(st reflect.Type, f reflect.StructField) (string, bool) {
	if st.Name() != "" {
		return f.Name, f.IsExported()
	}
	if len(f.Name) > 1 && f.Name[0] == 'X' {
		if r, _ := utf8.DecodeRuneInString(f.Name[1:]); unicode.IsLower(r) || r == '_' {
			return f.Name[1:], true
		}
	}
	return f.Name, true
}

// cellTypesOf returns the cell-defined types whose values (or pointers to them) chain's
// value can be passed as, found by compiling (not running) a call of a function literal with
// it: yaegi's types carry no reflect names or methods. Only types with methods are tried
// unless all is set.
func (s *Session) cellTypesOf(chain string, all bool) []string {
	s.namesMu.RLock()
	var types []string
	for k, d := range s.decls {
		if d.kind != "type" {
			continue
		}
		if !all {
			has := false
			for m := range s.decls {
				if strings.HasPrefix(m, k+".") {
					has = true
					break
				}
			}
			if !has {
				continue
			}
		}
		types = append(types, k)
	}
	s.namesMu.RUnlock()
	sort.Strings(types)
	var out []string
	for _, t := range types {
		for _, form := range []string{t, "*" + t} {
			if s.compiles(fmt.Sprintf("func(%s) {}(%s)", form, chain)) {
				out = append(out, form)
				break
			}
		}
	}
	return out
}

// cellMethods returns the methods cells declared on the type of chain's value, as "Method"
// → "Type.Method".
func (s *Session) cellMethods(chain string) map[string]string {
	out := map[string]string{}
	types := s.cellTypesOf(chain, false)
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	for _, t := range types {
		t = strings.TrimPrefix(t, "*")
		for k := range s.decls {
			if m, ok := strings.CutPrefix(k, t+"."); ok {
				out[m] = k
			}
		}
	}
	return out
}

// compiles reports whether a statement compiles (s.mu must not be held by the caller).
func (s *Session) compiles(stmt string) bool {
	if !s.mu.TryLock() {
		return false
	}
	defer s.mu.Unlock()
	body, err := s.parseStmt(stmt)
	if err != nil {
		return false
	}
	_, err = s.compile(body)
	return err == nil
}

// IsComplete classifies code for a console: "complete", "incomplete" (open brackets,
// strings, comments or a dangling operator; indent is what the next line starts with) or
// "invalid" (a syntax error more lines cannot fix).
func (s *Session) IsComplete(code string) (status, indent string) { return isComplete(code) }

func isComplete(code string) (status, indent string) {
	segs := splitSegments(code)
	for _, sg := range segs {
		if sg.magic {
			// Magic lines are complete; the Go stretches around them decide.
			for _, sg := range segs {
				if !sg.magic {
					if st, ind := isCompleteGo(sg.text); st != "complete" {
						return st, ind
					}
				}
			}
			return "complete", ""
		}
	}
	return isCompleteGo(code)
}

// isCompleteGo classifies Go code (no magics).
func isCompleteGo(code string) (status, indent string) {
	if strings.TrimSpace(code) == "" {
		return "complete", ""
	}
	fset := token.NewFileSet()
	file := fset.AddFile("", -1, len(code))
	var s scanner.Scanner
	var errMsg string
	errOff := -1
	s.Init(file, []byte(code), func(pos token.Position, msg string) {
		if errMsg == "" {
			errMsg, errOff = msg, pos.Offset
		}
	}, 0)
	var stack []token.Token
	last := token.ILLEGAL
	for {
		_, t, lit := s.Scan()
		if t == token.EOF {
			break
		}
		if t == token.SEMICOLON && lit == "\n" {
			continue
		}
		switch t {
		case token.LPAREN, token.LBRACK, token.LBRACE:
			stack = append(stack, t)
		case token.RPAREN, token.RBRACK, token.RBRACE:
			want := map[token.Token]token.Token{token.RPAREN: token.LPAREN, token.RBRACK: token.LBRACK, token.RBRACE: token.LBRACE}[t]
			if len(stack) == 0 || stack[len(stack)-1] != want {
				return "invalid", ""
			}
			stack = stack[:len(stack)-1]
		}
		last = t
	}
	if errMsg != "" {
		switch {
		case strings.Contains(errMsg, "raw string literal not terminated"), strings.Contains(errMsg, "comment not terminated"):
			return "incomplete", ""
		case errOff >= len(strings.TrimRight(code, " \t\r\n")):
			return "incomplete", strings.Repeat("\t", len(stack))
		}
		return "invalid", ""
	}
	indent = strings.Repeat("\t", len(stack))
	if len(stack) > 0 {
		return "incomplete", indent
	}
	switch {
	case last.IsOperator() && last != token.RPAREN && last != token.RBRACK && last != token.RBRACE &&
		last != token.INC && last != token.DEC && last != token.SEMICOLON:
		return "incomplete", "\t"
	}
	if _, err := splitCell(code); err != nil {
		var se *splitError
		if asSplit(err, &se) && len(se.list) > 0 {
			p := se.list[0].Pos
			lines := strings.Split(strings.TrimRight(code, " \t\r\n"), "\n")
			if strings.Contains(se.list[0].Msg, "EOF") || strings.Contains(se.list[0].Msg, "end of cell") || p.Line > len(lines) {
				return "incomplete", indent
			}
		}
		return "invalid", ""
	}
	return "complete", ""
}

func asSplit(err error, out **splitError) bool {
	se, ok := err.(*splitError)
	if ok {
		*out = se
	}
	return ok
}

// Inspect describes the symbol at byte offset cursor (or the function whose call parentheses
// the cursor is in): signature and doc comment of standard library and engine symbols, the
// declaration and doc comment of cell-defined names, the type and value of variables. detail 1
// adds the methods of types. The bundle has text/plain (and text/markdown).
func (s *Session) Inspect(code string, cursor, detail int) (map[string]string, bool) {
	if cursor < 0 || cursor > len(code) {
		cursor = len(code)
	}
	for _, chain := range []string{chainAt(code, cursor), callAt(code, cursor)} {
		if chain == "" {
			continue
		}
		if text, ok := s.describe(chain, detail); ok {
			return map[string]string{"text/plain": text, "text/markdown": "```go\n" + text + "\n```"}, true
		}
	}
	return nil, false
}

// chainAt returns the identifier chain around cursor (the chain up to the identifier under
// the cursor), or the called function's when the cursor is in a call's arguments.
func chainAt(code string, cursor int) string {
	end := cursor
	for end < len(code) {
		r, n := utf8.DecodeRuneInString(code[end:])
		if !isIdentRune(r) {
			break
		}
		end += n
	}
	start := identBefore(code, cursor)
	if start < end {
		if start > 0 && code[start-1] == '.' {
			if ch := chainBefore(code, start-1); ch != "" {
				return ch + "." + code[start:end]
			}
		}
		return code[start:end]
	}
	return callAt(code, cursor)
}

// callAt returns the chain naming the function whose call parentheses enclose cursor.
func callAt(code string, cursor int) string {
	depth := 0
	for i := cursor - 1; i >= 0; i-- {
		switch code[i] {
		case ')':
			depth++
		case '(':
			if depth == 0 {
				j := i
				for j > 0 && (code[j-1] == ' ' || code[j-1] == '\t') {
					j--
				}
				k := identBefore(code, j)
				if k == j {
					return ""
				}
				if k > 0 && code[k-1] == '.' {
					if ch := chainBefore(code, k-1); ch != "" {
						return ch + "." + code[k:j]
					}
				}
				return code[k:j]
			}
			depth--
		case '\n', ';', '{', '}':
			if depth == 0 && code[i] != '\n' {
				return ""
			}
		}
	}
	return ""
}

// describe renders the documentation of a chain.
func (s *Session) describe(chain string, detail int) (string, bool) {
	parts := strings.Split(chain, ".")
	// Package members.
	if p, ok := s.packagePath(parts[0]); ok {
		switch len(parts) {
		case 1:
			d, ok := symbols.Lookup(p, "")
			if !ok {
				return "package " + parts[0] + ` // import "` + p + `"`, true
			}
			return docText(d.Decl, firstParagraphs(d.Text, detail)), true
		case 2, 3:
			member := strings.Join(parts[1:], ".")
			if d, ok := symbols.Lookup(p, member); ok {
				text := docText(qualify(d.Decl, parts[0]), d.Text)
				if d.Kind == "type" && detail > 0 {
					if ms := symbols.Methods(p, parts[1]); len(ms) > 0 {
						text += "\n\nMethods: " + strings.Join(ms, ", ")
					}
				}
				return text, true
			}
			if v, ok := s.exportsOf(p)[parts[1]]; ok && len(parts) == 2 {
				kind, sig := symbolKind(v)
				return kind + " " + chain + " " + sig, true
			}
		}
	}
	// Builtins and predeclared identifiers.
	if len(parts) == 1 {
		if d, ok := s.cellDecl(parts[0]); ok {
			return docText(d.decl, d.doc) + "\n\n(defined in cell " + d.label + ")", true
		}
		if d, ok := symbols.Lookup("builtin", parts[0]); ok {
			return docText(d.Decl, d.Text), true
		}
	}
	// Methods of cell-defined types: T.M.
	if len(parts) == 2 {
		if d, ok := s.cellDecl(chain); ok {
			return docText(d.decl, d.doc) + "\n\n(defined in cell " + d.label + ")", true
		}
	}
	// Values: the type and value, or the documented method or field of a compiled type.
	base := chain
	member := ""
	if len(parts) > 1 {
		base = strings.Join(parts[:len(parts)-1], ".")
		member = parts[len(parts)-1]
	}
	if member != "" {
		if v, ok := s.evalQuiet(base); ok {
			if text, ok := s.memberDoc(v, base, member); ok {
				return text, true
			}
		}
	}
	if v, ok := s.evalQuiet(chain); ok {
		val := "<unprintable>"
		if v.CanInterface() {
			val = fmt.Sprintf("%v", v.Interface())
		}
		if len(val) > 500 {
			val = val[:500] + " …"
		}
		typ := v.Type().String()
		if v.Type().Name() == "" && v.Type().PkgPath() == "" {
			if ts := s.cellTypesOf(chain, true); len(ts) == 1 {
				typ = ts[0] // a cell-defined type: yaegi's reflect type is unnamed
			}
		}
		return fmt.Sprintf("%s: %s = %s", chain, typ, val), true
	}
	return "", false
}

func (s *Session) cellDecl(name string) (*declInfo, bool) {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	d, ok := s.decls[name]
	return d, ok
}

// memberDoc documents base.member where base's value is v.
func (s *Session) memberDoc(v reflect.Value, base, member string) (string, bool) {
	t := v.Type()
	for _, tt := range []reflect.Type{t, reflect.PointerTo(t)} {
		if m, ok := tt.MethodByName(member); ok {
			named := tt
			if named.Kind() == reflect.Pointer {
				named = named.Elem()
			}
			if named.PkgPath() != "" {
				if d, ok := symbols.Lookup(named.PkgPath(), named.Name()+"."+member); ok {
					return docText(d.Decl, d.Text), true
				}
			}
			return "method " + base + "." + member + " " + m.Type.String(), true
		}
	}
	st := t
	if st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	if st.Kind() == reflect.Struct {
		for i := 0; i < st.NumField(); i++ {
			if name, ok := fieldName(st, st.Field(i)); ok && name == member {
				return fmt.Sprintf("field %s.%s %s", base, member, st.Field(i).Type), true
			}
		}
	}
	if key, ok := s.cellMethods(base)[member]; ok {
		if d, ok := s.cellDecl(key); ok {
			return docText(d.decl, d.doc) + "\n\n(defined in cell " + d.label + ")", true
		}
	}
	return "", false
}

// qualify prefixes the name in a "func Name(" declaration with its package for display.
func qualify(decl, pkg string) string {
	if strings.HasPrefix(decl, "func ") && !strings.HasPrefix(decl, "func (") {
		return "func " + pkg + "." + decl[len("func "):]
	}
	return decl
}

func docText(decl, doc string) string {
	if doc == "" {
		return decl
	}
	return decl + "\n\n" + doc
}

// firstParagraphs shortens a package doc at detail 0.
func firstParagraphs(doc string, detail int) string {
	if detail > 0 {
		return doc
	}
	paras := strings.SplitN(doc, "\n\n", 3)
	if len(paras) > 2 {
		return strings.Join(paras[:2], "\n\n") + "\n\n…"
	}
	return doc
}
