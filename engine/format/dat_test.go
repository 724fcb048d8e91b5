package format

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

// uleb encodes v as minimal unsigned LEB128, independently of the package's writer.
func uleb(v uint64) []byte {
	var out []byte
	for {
		b := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(out, b)
		}
		out = append(out, b|0x80)
	}
}

type datSpec struct {
	key   string
	code  int
	shape []int
}

// elemSize is the byte size per element of each code, from reference/seed-dat.md.
var elemSize = map[int]int{0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 2, 6: 4, 7: 8, 11: 1, 15: 2, 100: 1, 101: 1}

// datHeader encodes one entry's header (key, elemType, ndim, dims).
func datHeader(key string, code int, shape ...int) []byte {
	b := append(uleb(uint64(len(key))), key...)
	b = append(b, uleb(uint64(code))...)
	b = append(b, uleb(uint64(len(shape)))...)
	for _, d := range shape {
		b = append(b, uleb(uint64(d))...)
	}
	return b
}

// datBytes hand-encodes a .dat and returns it with each entry's payload and payload offset.
func datBytes(specs []datSpec) (file []byte, payloads [][]byte, offsets []int64) {
	file = uleb(uint64(len(specs)))
	for i, s := range specs {
		file = append(file, datHeader(s.key, s.code, s.shape...)...)
		p := make([]byte, tensor.Numel(s.shape)*elemSize[s.code])
		for j := range p {
			p[j] = byte(i*37 + j*11)
		}
		offsets = append(offsets, int64(len(file)))
		payloads = append(payloads, p)
		file = append(file, p...)
	}
	return
}

// seedSpecs covers both NVFP4 key spellings, every elemType with ndim 0..3, a zero-sized
// entry, multi-byte ULEB128 numbers (a dimension of 200, a 150-byte key, over 127 entries).
func seedSpecs() []datSpec {
	specs := []datSpec{
		{"model.layers.0.self_attn.q_proj.weight.qdata", 0, []int{4, 16}},
		{"model.layers.0.self_attn.q_proj.weight.scale", 101, []int{4, 2}},
		{"lm_head.qdata", 0, []int{2, 8}},
		{"lm_head.scale", 101, []int{2, 1}},
		{"model.norm.weight", 5, []int{32}},
	}
	shapes := [][]int{{}, {3}, {2, 3}, {2, 1, 3}}
	for _, c := range datCodes {
		for nd, s := range shapes {
			specs = append(specs, datSpec{fmt.Sprintf("t.%d.ndim%d", c.code, nd), c.code, s})
		}
	}
	specs = append(specs,
		datSpec{"empty", 6, []int{0, 5}},
		datSpec{"wide", 0, []int{200}},
		datSpec{strings.Repeat("k", 150), 1, []int{1}})
	for i := 0; len(specs) < 140; i++ {
		specs = append(specs, datSpec{fmt.Sprintf("filler.%d", i), 0, []int{1}})
	}
	return specs
}

func TestDatRoundTripIdenticalBytes(t *testing.T) {
	specs := seedSpecs()
	file, payloads, offsets := datBytes(specs)
	dir := t.TempDir()
	path := writeFile(t, dir, "seed.dat", file)
	d, err := OpenDat(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Entries) != len(specs) {
		t.Fatalf("%d entries, want %d", len(d.Entries), len(specs))
	}
	infos := d.Tensors()
	for i, e := range d.Entries {
		s := specs[i]
		if e.Key != s.key || e.ElemType != s.code || !slices.Equal(e.Shape, s.shape) || e.Offset != offsets[i] || e.Size != int64(len(payloads[i])) {
			t.Errorf("entry %d = %+v, want %+v at %d", i, e, s, offsets[i])
		}
		want, _ := DatDType(s.code)
		if ti := infos[i]; ti.Name != s.key || ti.DType != want || ti.Offset != e.Offset || ti.Size != e.Size || ti.File != path {
			t.Errorf("info %d = %+v", i, ti)
		}
		b, err := d.ReadEntry(i)
		if err != nil || !bytes.Equal(b, payloads[i]) {
			t.Errorf("entry %d payload: %v", i, err)
		}
		h, err := d.Read(s.key)
		if err != nil || !bytes.Equal(h.Data, payloads[i]) || h.DType != want || h.Validate() != nil {
			t.Errorf("Read(%s): %v", s.key, err)
		}
		if d.Index(s.key) != i {
			t.Errorf("Index(%s) = %d", s.key, d.Index(s.key))
		}
	}
	if d.Index("absent") != -1 {
		t.Error("Index of an absent key")
	}

	// Rewrite from the opened file: identical bytes.
	out := filepath.Join(dir, "copy.dat")
	if err := WriteDat(out, d.Entries, d.ReadEntry); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, file) {
		t.Fatal("rewriting an opened .dat changed its bytes")
	}
	// Write from fresh entries (no offsets): the same bytes as the hand encoding.
	var fresh []DatEntry
	for _, s := range specs {
		fresh = append(fresh, DatEntry{Key: s.key, ElemType: s.code, Shape: s.shape})
	}
	out2 := filepath.Join(dir, "fresh.dat")
	if err := WriteDat(out2, fresh, func(i int) ([]byte, error) { return payloads[i], nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out2); !bytes.Equal(got, file) {
		t.Fatal("WriteDat differs from the reference encoding")
	}
	noTemps(t, dir)

	// As a Source through Open and Stream, in file order.
	src, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	i := 0
	err = Stream(src, func(h *tensor.Host) error {
		if h.Name != specs[i].key || !bytes.Equal(h.Data, payloads[i]) {
			t.Errorf("stream %d: %s", i, h.Name)
		}
		i++
		return nil
	}, nil)
	if err != nil || i != len(specs) {
		t.Fatalf("stream: %v after %d", err, i)
	}
}

func TestDatGolden(t *testing.T) {
	// count 1; key "k"; elemType 6 (float32); ndim 1; dim 2; 8 payload bytes.
	file := []byte{1, 1, 'k', 6, 1, 2, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40}
	d, err := OpenDat(writeFile(t, t.TempDir(), "g.dat", file))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h, err := d.Read("k")
	if err != nil {
		t.Fatal(err)
	}
	v, _ := h.Float32s(nil)
	if !slices.Equal(v, []float32{1, 2}) || d.Entries[0].Offset != 6 {
		t.Errorf("values %v, offset %d", v, d.Entries[0].Offset)
	}
	// An empty .dat: count 0.
	d0, err := OpenDat(writeFile(t, t.TempDir(), "e.dat", []byte{0}))
	if err != nil || len(d0.Entries) != 0 {
		t.Errorf("empty .dat: %v", err)
	}
}

func TestDatCodes(t *testing.T) {
	want := map[int]tensor.DType{0: tensor.U8, 1: tensor.I8, 2: tensor.I16, 3: tensor.I32, 4: tensor.I64, 5: tensor.F16,
		6: tensor.F32, 7: tensor.F64, 11: tensor.Bool, 15: tensor.BF16, 100: tensor.F4E2M1x2, 101: tensor.F8E4M3}
	for code := -1; code < 300; code++ {
		dt, ok := DatDType(code)
		w, known := want[code]
		if ok != known || dt != w {
			t.Errorf("DatDType(%d) = %v %v, want %v %v", code, dt, ok, w, known)
		}
		if known {
			if c, ok := DatElemType(w); !ok || c != code {
				t.Errorf("DatElemType(%v) = %d", w, c)
			}
			if dt.Size() != elemSize[code] {
				t.Errorf("code %d: %v has size %d, the seed uses %d", code, dt, dt.Size(), elemSize[code])
			}
		}
	}
	if _, ok := DatElemType(tensor.Invalid); ok {
		t.Error("Invalid has a code")
	}
}

func TestDatOpenErrors(t *testing.T) {
	good, _, _ := datBytes(seedSpecs())
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f32 := func(key string) []byte { return cat(datHeader(key, 6, 2), make([]byte, 8)) }
	lastKey := "filler.83"
	cases := []struct {
		name string
		file []byte
		want []string
	}{
		{"empty file", nil, []string{"at offset 0", "truncated: empty file"}},
		{"truncated count", []byte{0x80}, []string{"at offset 1", "truncated", "inside the entry count"}},
		{"count exceeds file", cat([]byte{5}, f32("k")), []string{"at offset 0", "entry count 5 cannot fit in the 13 bytes"}},
		{"huge count", []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, []string{"entry count 4294967295 cannot fit"}},
		{"max count", cat(bytes.Repeat([]byte{0xff}, 8), []byte{0x7f}), []string{"entry count 9223372036854775807 cannot fit"}},
		{"truncated key length", []byte{1, 0x80, 0x80, 0x80, 0x80}, []string{"at offset 5", "inside the key length of entry 0"}},
		{"truncated key", []byte{1, 10, 'a', 'b', 'c'}, []string{"at offset 1", "entry 0: truncated: key of 10 bytes runs past the end of the file (3 bytes left)"}},
		{"truncated elemType", []byte{1, 2, 'a', 'b', 0x86}, []string{`tensor "ab" at offset 5`, "inside the elemType"}},
		{"truncated ndim", []byte{1, 3, 'a', 'b', 'c', 6}, []string{`tensor "abc" at offset 6`, "inside ndim"}},
		{"truncated dims", []byte{1, 1, 'k', 6, 2, 3}, []string{`tensor "k" at offset 6`, "inside a dimension"}},
		{"truncated mid-payload", good[:len(good)-1], []string{`tensor "` + lastKey + `"`, "truncated: payload of 1 bytes (U8[1]) runs past the end of the file (0 bytes left)"}},
		{"truncated in the middle", good[:len(good)/2], []string{"truncated"}},
		{"unknown elemType 8", cat([]byte{1}, datHeader("k", 8), []byte{0}), []string{`tensor "k" at offset 3`, "unknown elemType 8"}},
		{"unknown elemType 102", cat([]byte{1}, datHeader("k", 102), []byte{0}), []string{"unknown elemType 102"}},
		{"unknown elemType 2^40", cat([]byte{1}, datHeader("k", 1<<40), []byte{0}), []string{"unknown elemType 1099511627776"}},
		{"non-minimal count", cat([]byte{0x81, 0x00}, f32("k")), []string{"at offset 0", "the entry count is a non-minimal ULEB128"}},
		{"non-minimal key length", cat([]byte{1, 0x81, 0x80, 0x00, 'k', 6, 0}, make([]byte, 4)), []string{"at offset 1", "entry 0: the key length is a non-minimal"}},
		{"non-minimal elemType", cat([]byte{1, 1, 'k', 0x86, 0x00, 0}, make([]byte, 4)), []string{`tensor "k" at offset 3`, "the elemType is a non-minimal ULEB128"}},
		{"non-minimal dim", cat([]byte{1, 1, 'k', 6, 1, 0x82, 0x00}, make([]byte, 8)), []string{`tensor "k" at offset 5`, "a dimension is a non-minimal"}},
		{"overlong count", cat(bytes.Repeat([]byte{0x80}, 9), []byte{0x01}), []string{"at offset 0", "the entry count is an overlong ULEB128 (more than 63 bits)"}},
		{"overlong dim", cat([]byte{1, 1, 'k', 6, 1}, bytes.Repeat([]byte{0xff}, 9), []byte{0x01}), []string{`tensor "k" at offset 5`, "overlong"}},
		{"empty key", []byte{1, 0, 6, 0, 0}, []string{"at offset 1", "entry 0: empty key"}},
		{"key too long", cat([]byte{1}, uleb(70000), make([]byte, 70004)), []string{"key length 70000 exceeds 65536"}},
		{"invalid UTF-8 key", cat([]byte{1, 1, 0xff, 0, 0}), []string{"at offset 1", "not valid UTF-8"}},
		{"duplicate key", cat([]byte{2}, f32("k"), f32("k")), []string{`tensor "k" at offset 14`, "key appears twice (entries 0 and 1)"}},
		{"too many dims", cat([]byte{1}, datHeader("k", 0, make([]int, 65)...)), []string{`tensor "k" at offset 4`, "ndim 65 exceeds 64"}},
		{"shape overflow", cat([]byte{1}, datHeader("k", 4, 1<<40, 1<<40)), []string{`tensor "k" at offset 11`, "shape overflows at dimension 1"}},
		{"payload beyond file", cat([]byte{1}, datHeader("k", 6, 1<<30)), []string{`tensor "k" at offset 10`, "payload of 4294967296 bytes (F32[1073741824]) runs past the end"}},
		{"trailing bytes", cat(good, []byte{0}), []string{fmt.Sprintf("at offset %d", len(good)), "1 bytes after the last of 140 entries"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "bad.dat", c.file)
			d, err := OpenDat(p)
			if err == nil {
				d.Close()
			}
			wantErr(t, err, append([]string{"open " + p}, c.want...)...)
		})
	}
}

func TestDatReadErrors(t *testing.T) {
	file, _, _ := datBytes(seedSpecs()[:3])
	p := writeFile(t, t.TempDir(), "r.dat", file)
	d, err := OpenDat(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = d.ReadEntry(3)
	wantErr(t, err, "read "+p, "no entry 3 (the file has 3)")
	_, err = d.ReadEntry(-1)
	wantErr(t, err, "no entry -1")
	_, err = d.Read("nope")
	wantErr(t, err, `tensor "nope"`, "no such entry")
	os.Truncate(p, d.Entries[2].Offset)
	_, err = d.ReadEntry(2)
	wantErr(t, err, `tensor "lm_head.qdata"`, fmt.Sprintf("at offset %d", d.Entries[2].Offset), "got 0 of 16 bytes")
}

func TestWriteDatErrors(t *testing.T) {
	ok := func(i int) ([]byte, error) { return make([]byte, 8), nil }
	cases := []struct {
		name    string
		entries []DatEntry
		payload func(int) ([]byte, error)
		want    []string
	}{
		{"unknown elemType", []DatEntry{{Key: "k", ElemType: 9, Shape: []int{2}}}, ok, []string{`tensor "k"`, "unknown elemType 9"}},
		{"duplicate key", []DatEntry{{Key: "k", ElemType: 6, Shape: []int{2}}, {Key: "k", ElemType: 6, Shape: []int{2}}}, ok, []string{`tensor "k"`, "name used twice"}},
		{"empty key", []DatEntry{{Key: "", ElemType: 6, Shape: []int{2}}}, ok, []string{"tensor 0 has an empty name"}},
		{"invalid UTF-8 key", []DatEntry{{Key: "\xfe", ElemType: 6, Shape: []int{2}}}, ok, []string{"not valid UTF-8"}},
		{"key too long", []DatEntry{{Key: strings.Repeat("x", maxDatKey+1), ElemType: 6, Shape: []int{2}}}, ok, []string{"exceeds 65536 bytes"}},
		{"negative dim", []DatEntry{{Key: "k", ElemType: 6, Shape: []int{-2}}}, ok, []string{`tensor "k"`, "negative dimension"}},
		{"too many dims", []DatEntry{{Key: "k", ElemType: 6, Shape: make([]int, 65)}}, ok, []string{"ndim 65 exceeds 64"}},
		{"payload too short", []DatEntry{{Key: "k", ElemType: 101, Shape: []int{4, 4}}}, ok, []string{`tensor "k"`, "F8_E4M3[4 4] (elemType 101) needs 16 bytes, payload has 8"}},
		{"payload error", []DatEntry{{Key: "k", ElemType: 6, Shape: []int{2}}}, func(int) ([]byte, error) { return nil, errors.New("disk on fire") },
			[]string{`tensor "k"`, "getting the payload: disk on fire"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "w.dat")
			called := false
			err := WriteDat(p, c.entries, func(i int) ([]byte, error) { called = true; return c.payload(i) })
			wantErr(t, err, append([]string{"write " + p}, c.want...)...)
			if _, err := os.Stat(p); err == nil {
				t.Error("a failed write left the file")
			}
			if called && !strings.Contains(c.name, "payload") {
				t.Error("payload was asked for before the entries were validated")
			}
			noTemps(t, dir)
		})
	}
}

// TestDatWindowBoundary runs entry headers back to back (zero-sized payloads) across many
// parser windows, so keys and multi-byte ULEB128 numbers straddle window edges.
func TestDatWindowBoundary(t *testing.T) {
	var specs []datSpec
	for i := 0; len(specs) < 3000; i++ {
		key := fmt.Sprintf("%d.", i) + strings.Repeat("k", i%300)
		if i%7 == 0 {
			specs = append(specs, datSpec{key, 0, []int{i % 500}})
		} else {
			specs = append(specs, datSpec{key, 6, []int{0, 129 + i}})
		}
	}
	file, payloads, offsets := datBytes(specs)
	if len(file) < 20*datWindow {
		t.Fatalf("only %d bytes", len(file))
	}
	d, err := parseDat("w.dat", bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range d.Entries {
		if e.Key != specs[i].key || e.Offset != offsets[i] || !slices.Equal(e.Shape, specs[i].shape) {
			t.Fatalf("entry %d = %+v", i, e)
		}
		if b, _ := d.ReadEntry(i); !bytes.Equal(b, payloads[i]) {
			t.Fatalf("payload %d", i)
		}
	}
}

// failingReader serves the first n bytes of b and then fails.
type failingReader struct {
	b []byte
	n int64
}

var errDisk = errors.New("injected I/O error")

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= f.n {
		return copy(p, f.b[off:]), nil
	}
	n := 0
	if off < f.n {
		n = copy(p, f.b[off:f.n])
	}
	return n, errDisk
}

func TestDatIOErrors(t *testing.T) {
	file, _, _ := datBytes(seedSpecs())
	for _, n := range []int64{0, 3, 1000} {
		_, err := parseDat("io.dat", failingReader{file, n}, int64(len(file)))
		wantErr(t, err, "open io.dat", fmt.Sprintf("at offset %d", n), "reading the index", "injected I/O error")
		if !errors.Is(err, errDisk) {
			t.Errorf("error does not wrap the cause: %v", err)
		}
	}
	// The index is readable, the end of a large last payload is not.
	file, _, _ = datBytes([]datSpec{{"a", 6, []int{2}}, {"big", 0, []int{3 * datWindow}}})
	d, err := parseDat("io.dat", failingReader{file, int64(len(file)) - 1}, int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.ReadEntry(len(d.Entries) - 1)
	wantErr(t, err, "read io.dat", "injected I/O error")
	_, err = OpenDat(filepath.Join(t.TempDir(), "absent.dat"))
	wantErr(t, err, "absent.dat", "no such file")
}
