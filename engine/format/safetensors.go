package format

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qwengo/qwengo/engine/tensor"
)

// maxHeader bounds a safetensors JSON header, as the reference implementation does (100 MB).
const maxHeader = 100 << 20

// Safetensors is one opened .safetensors file. It implements Source.
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the byte after the
// header) plus an optional "__metadata__" string map, then the tensor data.
type Safetensors struct {
	Path     string
	r        io.ReaderAt
	c        io.Closer
	infos    []TensorInfo
	byName   map[string]int
	metadata map[string]string
}

// OpenSafetensors parses and validates the header of a .safetensors file; tensors are read
// on demand. The Source it returns is a *Safetensors.
func OpenSafetensors(path string) (Source, error) {
	s, err := openSafetensors(path)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func openSafetensors(path string) (*Safetensors, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, ioErr("open", path, "", -1, errors.Unwrap(err), "cannot open")
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, ioErr("open", path, "", -1, err, "stat")
	}
	s, err := parseSafetensors(path, f, fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	s.c = f
	return s, nil
}

// parseSafetensors reads and validates the header of a safetensors file of size bytes.
func parseSafetensors(path string, r io.ReaderAt, size int64) (*Safetensors, error) {
	if size < 8 {
		return nil, newErr("open", path, "", 0, "truncated: %d bytes, a safetensors file starts with an 8-byte header length", size)
	}
	var hb [8]byte
	if _, err := r.ReadAt(hb[:], 0); err != nil {
		return nil, ioErr("open", path, "", 0, err, "reading the header length")
	}
	n := binary.LittleEndian.Uint64(hb[:])
	switch {
	case n > uint64(size-8):
		return nil, newErr("open", path, "", 0, "header length %d runs past the end of the file (%d bytes after the length): truncated or not safetensors", n, size-8)
	case n > maxHeader:
		return nil, newErr("open", path, "", 0, "header length %d exceeds the %d-byte limit", n, maxHeader)
	case n < 2:
		return nil, newErr("open", path, "", 0, "header length %d cannot hold a JSON object", n)
	}
	raw := make([]byte, n)
	if _, err := r.ReadAt(raw, 8); err != nil {
		return nil, ioErr("open", path, "", 8, err, "reading the %d-byte header", n)
	}
	s := &Safetensors{Path: path, r: r, byName: map[string]int{}}
	if err := s.parseHeader(raw, size); err != nil {
		return nil, err
	}
	return s, nil
}

type stEntry struct {
	DType       *string `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// parseHeader validates the JSON header raw (which starts at file offset 8) of a file of
// fileSize bytes and fills s.infos in storage order.
func (s *Safetensors) parseHeader(raw []byte, fileSize int64) error {
	path := s.Path
	if i := invalidUTF8(raw); i >= 0 {
		return newErr("open", path, "", 8+int64(i), "header is not valid UTF-8")
	}
	dataStart := 8 + int64(len(raw))
	dataLen := fileSize - dataStart
	err := eachMember("open", path, "header", raw, 8, func(name string, val json.RawMessage, at, _ int64) error {
		if name == "__metadata__" {
			if err := json.Unmarshal(val, &s.metadata); err != nil {
				return newErr("open", path, "", at, "__metadata__ must map strings to strings: %v", jsonMsg(err))
			}
			return nil
		}
		if name == "" { // the writer refuses it too: a file we accept must round-trip
			return newErr("open", path, name, at, "a tensor has an empty name")
		}
		var e stEntry
		if err := json.Unmarshal(val, &e); err != nil {
			return newErr("open", path, name, at, "header entry is not {dtype, shape, data_offsets}: %v", jsonMsg(err))
		}
		if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
			return newErr("open", path, name, at, "header entry lacks dtype, shape or data_offsets: %s", truncate(val, 200))
		}
		dt, err := tensor.ParseDType(*e.DType)
		if err != nil {
			return newErr("open", path, name, at, "unknown dtype %q (known: F64 F32 F16 BF16 F8_E4M3 I64 I32 I16 I8 U8 BOOL)", *e.DType)
		}
		shape := make([]int, len(e.Shape))
		for i, d := range e.Shape {
			if d < 0 || d > 1<<53 {
				return newErr("open", path, name, at, "bad dimension %d in shape %v", d, e.Shape)
			}
			shape[i] = int(d)
		}
		want, err := shapeBytes(shape, dt.Size())
		if err != nil {
			return newErr("open", path, name, at, "%v", err)
		}
		o := e.DataOffsets
		if len(o) != 2 || o[0] < 0 || o[1] < o[0] {
			return newErr("open", path, name, at, "data_offsets %v are not [begin, end] with 0 <= begin <= end", o)
		}
		if o[1] > dataLen {
			return newErr("open", path, name, dataStart+o[0],
				"data_offsets %v end at file offset %d, past the end of the file (%d bytes): truncated", o, dataStart+o[1], fileSize)
		}
		if got := o[1] - o[0]; got != want {
			return newErr("open", path, name, dataStart+o[0], "%v%v needs %d bytes but data_offsets %v span %d", dt, shape, want, o, got)
		}
		s.infos = append(s.infos, TensorInfo{Name: name, DType: dt, Shape: shape, File: path, Offset: dataStart + o[0], Size: want})
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(s.infos, func(i, j int) bool {
		a, b := s.infos[i], s.infos[j]
		if a.Offset != b.Offset {
			return a.Offset < b.Offset
		}
		return a.Name < b.Name
	})
	prev := -1
	for i, ti := range s.infos {
		s.byName[ti.Name] = i
		if ti.Size == 0 {
			continue
		}
		if prev >= 0 {
			p := s.infos[prev]
			if ti.Offset < p.Offset+p.Size {
				return newErr("open", path, ti.Name, ti.Offset, "data [%d, %d) overlaps tensor %q at [%d, %d)",
					ti.Offset, ti.Offset+ti.Size, p.Name, p.Offset, p.Offset+p.Size)
			}
		}
		prev = i
	}
	return nil
}

// Tensors lists the tensors in storage order (ascending offset).
func (s *Safetensors) Tensors() []TensorInfo { return copyInfos(s.infos) }

// Metadata returns a copy of the header's __metadata__ map (nil when absent).
func (s *Safetensors) Metadata() map[string]string {
	if s.metadata == nil {
		return nil
	}
	m := make(map[string]string, len(s.metadata))
	for k, v := range s.metadata {
		m[k] = v
	}
	return m
}

// Read reads one tensor.
func (s *Safetensors) Read(name string) (*tensor.Host, error) {
	i, ok := s.byName[name]
	if !ok {
		return nil, newErr("read", s.Path, name, -1, "no such tensor in the file")
	}
	return readTensor(s.r, s.infos[i])
}

// Close closes the file.
func (s *Safetensors) Close() error {
	if s.c == nil {
		return nil
	}
	c := s.c
	s.c = nil
	return c.Close()
}

// eachMember walks the members of the JSON object in raw (exactly one object, then only
// whitespace), calling fn with each key, its raw value and the file offsets of the key and of
// the value (raw starts at file offset base). Syntax errors and duplicate keys become *Error naming where.
func eachMember(op, path, what string, raw []byte, base int64, fn func(key string, val json.RawMessage, at, valAt int64) error) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	bad := func(err error) error {
		// The decoder's offsets are approximate; a validating pass gives the exact byte.
		var se *json.SyntaxError
		if errors.As(json.Unmarshal(raw, new(json.RawMessage)), &se) {
			off := se.Offset // bytes consumed, including the offending one
			if off > 0 && off <= int64(len(raw)) && !strings.HasPrefix(se.Error(), "unexpected end") {
				off--
			}
			return newErr(op, path, "", base+off, "%s is not valid JSON: %v", what, se)
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return newErr(op, path, "", base+dec.InputOffset(), "%s is not valid JSON: %v", what, err)
	}
	tok, err := dec.Token()
	if err != nil {
		return bad(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return newErr(op, path, "", base, "%s is not a JSON object", what)
	}
	seen := map[string]int64{}
	for dec.More() {
		at := dec.InputOffset()
		for at < int64(len(raw)) && bytes.IndexByte([]byte(" \t\r\n,"), raw[at]) >= 0 {
			at++
		}
		tok, err := dec.Token()
		if err != nil {
			return bad(err)
		}
		key, ok := tok.(string)
		if !ok {
			return newErr(op, path, "", base+at, "%s: object key expected", what)
		}
		valAt := dec.InputOffset()
		for valAt < int64(len(raw)) && bytes.IndexByte([]byte(" \t\r\n:"), raw[valAt]) >= 0 {
			valAt++
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return bad(err)
		}
		if prev, dup := seen[key]; dup {
			return newErr(op, path, key, base+at, "name appears twice in the %s (first at offset %d)", what, prev)
		}
		seen[key] = base + at
		if err := fn(key, val, base+at, base+valAt); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return bad(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return newErr(op, path, "", base+dec.InputOffset(), "%s has data after its JSON object", what)
	}
	return nil
}

// jsonMsg shortens encoding/json errors.
func jsonMsg(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %q cannot hold a JSON %s", te.Field, te.Value)
		}
		return fmt.Sprintf("a JSON %s where %v was expected", te.Value, te.Type)
	}
	return err.Error()
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}

// invalidUTF8 returns the index of the first invalid UTF-8 byte in b, or -1.
func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return -1
}

// WriteSafetensors writes tensors in the given order to path, atomically. metadata, when not
// empty, is stored as "__metadata__" (Hugging Face expects {"format": "pt"}). The header lists
// __metadata__ first and then the tensors in data order, and is padded with spaces to a
// multiple of 8 bytes like the reference implementation's.
func WriteSafetensors(path string, tensors []*tensor.Host, metadata map[string]string) error {
	infos, err := hostInfos(path, tensors)
	if err != nil {
		return err
	}
	return WriteSafetensorsFrom(path, infos, func(i int) (*tensor.Host, error) { return tensors[i], nil }, metadata)
}

// WriteSafetensorsFrom writes the tensors infos describe (Name, DType and Shape; File, Offset
// and Size are ignored) to path, atomically, asking read(i) for tensor i just before writing
// it, so host memory is bounded by one tensor. read must return a tensor with the promised
// name, dtype and shape. To copy a Source: WriteSafetensorsFrom(p, infos, func(i int)
// (*tensor.Host, error) { return src.Read(infos[i].Name) }, nil) with infos = src.Tensors().
func WriteSafetensorsFrom(path string, infos []TensorInfo, read func(i int) (*tensor.Host, error), metadata map[string]string) error {
	infos = copyInfos(infos)
	header, err := safetensorsHeader(path, infos, metadata)
	if err != nil {
		return err
	}
	return writeAtomic(path, func(w io.Writer) error { return writeSafetensorsBody(w, path, header, infos, read) })
}

// hostInfos validates host tensors for writing and describes them.
func hostInfos(path string, tensors []*tensor.Host) ([]TensorInfo, error) {
	infos := make([]TensorInfo, len(tensors))
	for i, t := range tensors {
		if t == nil {
			return nil, newErr("write", path, "", -1, "tensor %d is nil", i)
		}
		infos[i] = TensorInfo{Name: t.Name, DType: t.DType, Shape: t.Shape}
	}
	return infos, nil
}

// safetensorsHeader builds the padded JSON header and fills infos[i].Size.
func safetensorsHeader(path string, infos []TensorInfo, metadata map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		for k, v := range metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return nil, newErr("write", path, "", -1, "__metadata__ entry %q is not valid UTF-8", k)
			}
		}
		b.WriteString(`"__metadata__":`)
		b.Write(jsonBytes(metadata))
	}
	seen := map[string]int{}
	var off int64
	for i := range infos {
		ti := &infos[i]
		if err := checkWriteName(path, ti.Name, seen, i); err != nil {
			return nil, err
		}
		if ti.Name == "__metadata__" {
			return nil, newErr("write", path, ti.Name, -1, "the name __metadata__ is reserved")
		}
		if ti.DType.Size() == 0 {
			return nil, newErr("write", path, ti.Name, -1, "invalid dtype %v", ti.DType)
		}
		size, err := shapeBytes(ti.Shape, ti.DType.Size())
		if err != nil {
			return nil, newErr("write", path, ti.Name, -1, "%v", err)
		}
		ti.Size = size
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.Write(jsonBytes(ti.Name))
		b.WriteString(`:{"dtype":`)
		b.Write(jsonBytes(ti.DType.String()))
		b.WriteString(`,"shape":[`)
		for j, d := range ti.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(d))
		}
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, off, off+size)
		off += size
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	return b.Bytes(), nil
}

// writeSafetensorsBody writes the length, the header and each tensor's data.
func writeSafetensorsBody(w io.Writer, path string, header []byte, infos []TensorInfo, read func(i int) (*tensor.Host, error)) error {
	var lb [8]byte
	binary.LittleEndian.PutUint64(lb[:], uint64(len(header)))
	if _, err := w.Write(lb[:]); err != nil {
		return err
	}
	if _, err := w.Write(header); err != nil {
		return err
	}
	for i, ti := range infos {
		t, err := read(i)
		if err != nil {
			return ioErr("write", path, ti.Name, -1, err, "getting the tensor")
		}
		if err := checkSupplied(path, ti, t); err != nil {
			return err
		}
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}

// checkSupplied checks that a tensor handed to a writer is the one its header promised.
func checkSupplied(path string, ti TensorInfo, t *tensor.Host) error {
	switch {
	case t == nil:
		return newErr("write", path, ti.Name, -1, "got a nil tensor")
	case t.Name != ti.Name:
		return newErr("write", path, ti.Name, -1, "got tensor %q instead", t.Name)
	case t.DType != ti.DType || !slices.Equal(t.Shape, ti.Shape):
		return newErr("write", path, ti.Name, -1, "got %v%v, expected %v%v", t.DType, t.Shape, ti.DType, ti.Shape)
	case int64(len(t.Data)) != ti.Size:
		return newErr("write", path, ti.Name, -1, "%v%v needs %d bytes, data has %d", ti.DType, ti.Shape, ti.Size, len(t.Data))
	}
	return nil
}

// jsonBytes encodes v without HTML escaping (names keep their '<', '>' and '&').
func jsonBytes(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v) // strings and string maps cannot fail
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
