package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

func TestSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ts := []*tensor.Host{
		mkHost("model.embed_tokens.weight", tensor.BF16, 7, 5),
		mkHost("f32", tensor.F32, 2, 3),
		mkHost("f16", tensor.F16, 4),
		mkHost("f64", tensor.F64, 1, 2),
		mkHost("layers.0.q_proj.weight", tensor.U8, 3, 8),
		mkHost("layers.0.q_proj.weight_scale", tensor.F8E4M3, 3, 1),
		mkHost("layers.0.q_proj.weight_scale_2", tensor.F32),
		mkHost("i8", tensor.I8, 5), mkHost("i16", tensor.I16, 2), mkHost("i32", tensor.I32, 2), mkHost("i64", tensor.I64, 2),
		mkHost("bool", tensor.Bool, 3),
		mkHost("empty", tensor.F32, 0, 4),
		mkHost(`odd "name" <&> ü`, tensor.F16, 1),
	}
	meta := map[string]string{"format": "pt", "note": "a <b> & c"}
	p := filepath.Join(dir, "m.safetensors")
	if err := WriteSafetensors(p, ts, meta); err != nil {
		t.Fatal(err)
	}
	noTemps(t, dir)
	raw, _ := os.ReadFile(p)
	hl := binary.LittleEndian.Uint64(raw)
	if hl%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", hl)
	}
	header := string(raw[8 : 8+hl])
	if !strings.HasPrefix(header, `{"__metadata__":{"format":"pt","note":"a <b> & c"},"model.embed_tokens.weight":{"dtype":"BF16","shape":[7,5],"data_offsets":[0,70]}`) {
		t.Errorf("header starts %.160s", header)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}

	src, err := OpenSafetensors(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	st := src.(*Safetensors)
	if md := st.Metadata(); len(md) != 2 || md["format"] != "pt" || md["note"] != meta["note"] {
		t.Errorf("metadata %v", md)
	}
	infos := src.Tensors()
	if len(infos) != len(ts) {
		t.Fatalf("%d tensors, want %d", len(infos), len(ts))
	}
	off := int64(8 + hl)
	for i, ti := range infos {
		want := ts[i]
		if ti.Name != want.Name || ti.DType != want.DType || !slices.Equal(ti.Shape, want.Shape) || ti.File != p {
			t.Errorf("info %d = %+v, want %s %v%v", i, ti, want.Name, want.DType, want.Shape)
		}
		if ti.Offset != off || ti.Size != int64(len(want.Data)) {
			t.Errorf("%s: offset %d size %d, want %d %d", ti.Name, ti.Offset, ti.Size, off, len(want.Data))
		}
		off += ti.Size
		got, err := src.Read(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != want.Name || got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("%s: read back %v%v (%d bytes)", want.Name, got.DType, got.Shape, len(got.Data))
		}
		if !bytes.Equal(raw[ti.Offset:ti.Offset+ti.Size], want.Data) {
			t.Errorf("%s: bytes at offset %d differ", want.Name, ti.Offset)
		}
	}
	if off != int64(len(raw)) {
		t.Errorf("data ends at %d, file has %d bytes", off, len(raw))
	}
	// Tensors returns copies: changing them does not change the source.
	infos[0].Shape[0] = 99
	if src.Tensors()[0].Shape[0] != 7 {
		t.Error("Tensors shares its shape slices")
	}
}

// TestSafetensorsGolden checks our writer against byte layouts produced by the reference
// implementation (huggingface/safetensors serialize: compact JSON, __metadata__ first,
// tensors in data order, padding with spaces to a multiple of 8).
func TestSafetensorsGolden(t *testing.T) {
	f32s := func(v ...float32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		return b
	}
	cases := []struct {
		name    string
		tensors []*tensor.Host
		meta    map[string]string
		header  string // expected header before padding
		hlen    int    // expected padded length
	}{
		{"one tensor", []*tensor.Host{{Name: "attn.0", DType: tensor.F32, Shape: []int{1, 2, 3}, Data: f32s(0, 1, 2, 3, 4, 5)}}, nil,
			`{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`, 64},
		{"padded", []*tensor.Host{{Name: "attn0", DType: tensor.F32, Shape: []int{1, 1, 2, 3}, Data: f32s(0, 1, 2, 3, 4, 5)}}, nil,
			`{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}`, 72},
		{"empty", nil, nil, `{}`, 8},
		{"metadata only", nil, map[string]string{"framework": "pt"}, `{"__metadata__":{"framework":"pt"}}`, 40},
	}
	for _, c := range cases {
		p := filepath.Join(t.TempDir(), "g.safetensors")
		if err := WriteSafetensors(p, c.tensors, c.meta); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		want := binary.LittleEndian.AppendUint64(nil, uint64(c.hlen))
		want = append(want, c.header...)
		want = append(want, strings.Repeat(" ", c.hlen-len(c.header))...)
		for _, h := range c.tensors {
			want = append(want, h.Data...)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, want)
		}
		src, err := OpenSafetensors(p)
		if err != nil {
			t.Errorf("%s: reopen: %v", c.name, err)
			continue
		}
		src.Close()
	}
	// The reference's documentation example: an unpadded 60-byte header.
	ref := stBytes(`{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}`, 0, 16)
	src, err := OpenSafetensors(writeFile(t, t.TempDir(), "ref.safetensors", ref))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if ti := src.Tensors(); len(ti) != 1 || ti[0].DType != tensor.I32 || ti[0].Offset != 68 || ti[0].Size != 16 {
		t.Errorf("reference example: %+v", ti)
	}
}

func TestSafetensorsOpenErrors(t *testing.T) {
	entry := func(dtype, shape, offs string) string {
		return fmt.Sprintf(`{"dtype":%s,"shape":%s,"data_offsets":%s}`, dtype, shape, offs)
	}
	f32 := entry(`"F32"`, `[2]`, `[0,8]`)
	cases := []struct {
		name string
		file []byte
		want []string
	}{
		{"empty file", nil, []string{"at offset 0", "truncated: 0 bytes"}},
		{"short file", []byte{1, 2, 3}, []string{"at offset 0", "truncated: 3 bytes"}},
		{"header length beyond file", stBytes(`{}`, 100, 0), []string{"at offset 0", "header length 102 runs past the end"}},
		{"huge header length", stBytes(`{}`, math.MaxInt32*1000, 0), []string{"runs past the end"}},
		{"header length too small", stBytes(`{`, 0, 0), []string{"header length 1 cannot hold"}},
		{"invalid JSON", stBytes(`{"a":`+f32, 0, 8), []string{"at offset 61", "header is not valid JSON: unexpected end"}},
		{"JSON syntax offset", stBytes(`{"a":x}`, 0, 0), []string{"at offset 13", "invalid character 'x'"}},
		{"not an object", stBytes(`[1,2]`, 0, 0), []string{"at offset 8", "not a JSON object"}},
		{"trailing data", stBytes(`{} {}`, 0, 0), []string{"has data after its JSON object"}},
		{"invalid UTF-8", stBytes("{\"a\xff\":1}", 0, 0), []string{"at offset 11", "not valid UTF-8"}},
		{"duplicate name", stBytes(`{"a":`+f32+`,"b":`+entry(`"F32"`, `[2]`, `[8,16]`)+`,"a":`+f32+`}`, 0, 16),
			[]string{`tensor "a" at offset 116`, "appears twice in the header (first at offset 9)"}},
		{"unknown dtype", stBytes(`{"a":`+entry(`"F7"`, `[2]`, `[0,8]`)+`}`, 0, 8), []string{`tensor "a" at offset 9`, `unknown dtype "F7"`}},
		{"dtype not a string", stBytes(`{"a":`+entry(`7`, `[2]`, `[0,8]`)+`}`, 0, 8), []string{`tensor "a"`, "not {dtype, shape, data_offsets}"}},
		{"entry not an object", stBytes(`{"a":5}`, 0, 0), []string{`tensor "a"`, "not {dtype, shape, data_offsets}"}},
		{"missing shape", stBytes(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 0, 4), []string{`tensor "a"`, "lacks dtype, shape or data_offsets"}},
		{"missing offsets", stBytes(`{"a":{"dtype":"F32","shape":[1]}}`, 0, 4), []string{`tensor "a"`, "lacks"}},
		{"negative dim", stBytes(`{"a":`+entry(`"F32"`, `[-1]`, `[0,4]`)+`}`, 0, 4), []string{`tensor "a"`, "bad dimension -1"}},
		{"fractional dim", stBytes(`{"a":`+entry(`"F32"`, `[1.5]`, `[0,4]`)+`}`, 0, 4), []string{`tensor "a"`, `field "shape"`}},
		{"overflowing shape", stBytes(`{"a":`+entry(`"F32"`, `[4294967296,4294967296]`, `[0,4]`)+`}`, 0, 4), []string{`tensor "a"`, "too large"}},
		{"one offset", stBytes(`{"a":`+entry(`"F32"`, `[2]`, `[8]`)+`}`, 0, 8), []string{`tensor "a"`, "data_offsets [8] are not [begin, end]"}},
		{"reversed offsets", stBytes(`{"a":`+entry(`"F32"`, `[1]`, `[8,4]`)+`}`, 0, 8), []string{`tensor "a"`, "not [begin, end]"}},
		{"negative offset", stBytes(`{"a":`+entry(`"F32"`, `[1]`, `[-4,0]`)+`}`, 0, 8), []string{`tensor "a"`, "not [begin, end]"}},
		{"offsets past the end", stBytes(`{"a":`+entry(`"F32"`, `[4]`, `[0,16]`)+`}`, 0, 8),
			[]string{`tensor "a" at offset 63`, "end at file offset 79, past the end of the file (71 bytes): truncated"}},
		{"offsets not dtype*shape", stBytes(`{"a":`+entry(`"F32"`, `[3]`, `[0,8]`)+`}`, 0, 8),
			[]string{`tensor "a" at offset 62`, "F32[3] needs 12 bytes but data_offsets [0 8] span 8"}},
		{"bf16 size mismatch", stBytes(`{"w":`+entry(`"BF16"`, `[4]`, `[0,4]`)+`}`, 0, 8), []string{`tensor "w"`, "BF16[4] needs 8 bytes"}},
		{"overlap", stBytes(`{"a":`+f32+`,"b":`+entry(`"F32"`, `[2]`, `[4,12]`)+`}`, 0, 12),
			[]string{`tensor "b" at offset 120`, `overlaps tensor "a" at [116, 124)`}},
		{"same range twice", stBytes(`{"b":`+f32+`,"a":`+f32+`}`, 0, 8), []string{`tensor "b"`, `overlaps tensor "a"`}},
		{"bad metadata", stBytes(`{"__metadata__":{"a":1}}`, 0, 0), []string{"at offset 9", "__metadata__ must map strings to strings"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "x.safetensors", c.file)
			src, err := OpenSafetensors(p)
			if err == nil {
				src.Close()
			}
			wantErr(t, err, append([]string{"open " + p}, c.want...)...)
			if src != nil {
				t.Errorf("a failed open returned a non-nil Source %#v", src)
			}
		})
	}
}

func TestSafetensorsLenient(t *testing.T) {
	// Accepted like the reference reader: unknown entry fields, __metadata__ null, gaps,
	// zero-sized tensors sharing an offset, a header padded with whitespace.
	header := `{"__metadata__":null,"z":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},` +
		`"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"extra":true},` +
		`"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}` + "  \n\t "
	src, err := OpenSafetensors(writeFile(t, t.TempDir(), "ok.safetensors", stBytes(header, 0, 8)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var names []string
	for _, ti := range src.Tensors() {
		names = append(names, ti.Name)
	}
	if strings.Join(names, ",") != "a,b,z" {
		t.Errorf("storage order %v", names)
	}
	if md := src.(*Safetensors).Metadata(); md != nil {
		t.Errorf("metadata %v", md)
	}
}

func TestSafetensorsReadErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.safetensors")
	if err := WriteSafetensors(p, []*tensor.Host{mkHost("a", tensor.F32, 4), mkHost("b", tensor.F32, 64)}, nil); err != nil {
		t.Fatal(err)
	}
	src, err := OpenSafetensors(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	_, err = src.Read("nope")
	wantErr(t, err, "read "+p, `tensor "nope"`, "no such tensor")

	b := src.Tensors()[1]
	if err := os.Truncate(p, b.Offset+10); err != nil {
		t.Fatal(err)
	}
	_, err = src.Read("b")
	wantErr(t, err, "read "+p, `tensor "b"`, fmt.Sprintf("at offset %d", b.Offset+10), "got 10 of 256 bytes", "unexpected EOF")
	if _, err := src.Read("a"); err != nil {
		t.Errorf("intact tensor: %v", err)
	}
	src.Close()
	_, err = src.Read("a")
	wantErr(t, err, `tensor "a"`, "closed")
}

func TestWriteSafetensorsErrors(t *testing.T) {
	a := mkHost("a", tensor.F32, 2)
	short := mkHost("s", tensor.F32, 2)
	short.Data = short.Data[:5]
	cases := []struct {
		name    string
		tensors []*tensor.Host
		meta    map[string]string
		want    []string
	}{
		{"duplicate name", []*tensor.Host{a, mkHost("b", tensor.U8, 1), a}, nil, []string{`tensor "a"`, "name used twice (tensors 0 and 2)"}},
		{"empty name", []*tensor.Host{mkHost("", tensor.U8, 1)}, nil, []string{"tensor 0 has an empty name"}},
		{"reserved name", []*tensor.Host{mkHost("__metadata__", tensor.U8, 1)}, nil, []string{"reserved"}},
		{"invalid UTF-8 name", []*tensor.Host{mkHost("a\xff", tensor.U8, 1)}, nil, []string{"not valid UTF-8"}},
		{"invalid dtype", []*tensor.Host{{Name: "x", DType: tensor.Invalid, Shape: []int{1}, Data: []byte{0}}}, nil, []string{`tensor "x"`, "invalid dtype"}},
		{"negative dim", []*tensor.Host{{Name: "x", DType: tensor.U8, Shape: []int{-1}}}, nil, []string{`tensor "x"`, "negative dimension"}},
		{"short data", []*tensor.Host{a, short}, nil, []string{`tensor "s"`, "F32[2] needs 8 bytes, data has 5"}},
		{"nil tensor", []*tensor.Host{a, nil}, nil, []string{"tensor 1 is nil"}},
		{"bad metadata", []*tensor.Host{a}, map[string]string{"k": "\xff"}, []string{"__metadata__", "UTF-8"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "w.safetensors")
			wantErr(t, WriteSafetensors(p, c.tensors, c.meta), append([]string{"write " + p}, c.want...)...)
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed write left %s", p)
			}
			noTemps(t, dir)
		})
	}
}

func TestWriteSafetensorsFrom(t *testing.T) {
	ts := []*tensor.Host{mkHost("a", tensor.BF16, 3, 2), mkHost("b", tensor.U8, 5)}
	infos := []TensorInfo{{Name: "a", DType: tensor.BF16, Shape: []int{3, 2}, Size: 999}, {Name: "b", DType: tensor.U8, Shape: []int{5}}}
	dir := t.TempDir()
	p := filepath.Join(dir, "from.safetensors")
	calls := 0
	err := WriteSafetensorsFrom(p, infos, func(i int) (*tensor.Host, error) { calls++; return ts[i], nil }, nil)
	if err != nil || calls != 2 {
		t.Fatalf("%v after %d calls", err, calls)
	}
	if infos[0].Size != 999 {
		t.Error("WriteSafetensorsFrom modified the caller's infos")
	}
	// Copy a Source tensor by tensor; the result is byte-identical to a direct write.
	src, err := OpenSafetensors(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	in := src.Tensors()
	p2 := filepath.Join(dir, "copy.safetensors")
	if err := WriteSafetensorsFrom(p2, in, func(i int) (*tensor.Host, error) { return src.Read(in[i].Name) }, nil); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(p)
	b2, _ := os.ReadFile(p2)
	if !bytes.Equal(b1, b2) {
		t.Error("copy differs")
	}

	wrong := []struct {
		name string
		give *tensor.Host
		err  error
		want string
	}{
		{"callback error", nil, errors.New("boom"), "getting the tensor: boom"},
		{"nil", nil, nil, "got a nil tensor"},
		{"other name", mkHost("z", tensor.BF16, 3, 2), nil, `got tensor "z" instead`},
		{"other shape", mkHost("a", tensor.BF16, 2, 3), nil, "got BF16[2 3], expected BF16[3 2]"},
		{"other dtype", mkHost("a", tensor.F16, 3, 2), nil, "got F16[3 2], expected BF16[3 2]"},
		{"short", &tensor.Host{Name: "a", DType: tensor.BF16, Shape: []int{3, 2}, Data: make([]byte, 4)}, nil, "needs 12 bytes, data has 4"},
	}
	for _, w := range wrong {
		q := filepath.Join(dir, "bad.safetensors")
		err := WriteSafetensorsFrom(q, infos[:1], func(int) (*tensor.Host, error) { return w.give, w.err }, nil)
		wantErr(t, err, "write "+q, `tensor "a"`, w.want)
		if _, err := os.Stat(q); err == nil {
			t.Errorf("%s: file written", w.name)
		}
	}
	noTemps(t, dir)
}

func TestSafetensorsIOErrors(t *testing.T) {
	var b bytes.Buffer
	if err := writeSafetensorsBody(&b, "m", []byte(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}  `), []TensorInfo{{Name: "a", DType: tensor.U8, Shape: []int{4}, Size: 4}},
		func(int) (*tensor.Host, error) { return mkHost("a", tensor.U8, 4), nil }); err != nil {
		t.Fatal(err)
	}
	file := b.Bytes()
	for _, c := range []struct {
		n    int64
		want string
	}{{4, "at offset 0: reading the header length"}, {20, "at offset 8: reading the 55-byte header"}} {
		_, err := parseSafetensors("io.safetensors", failingReader{file, c.n}, int64(len(file)))
		wantErr(t, err, "open io.safetensors", c.want, "injected I/O error")
	}
	s, err := parseSafetensors("io.safetensors", failingReader{file, int64(len(file)) - 2}, int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Read("a")
	wantErr(t, err, `read io.safetensors: tensor "a" at offset 65`, "got 2 of 4 bytes", "injected I/O error")
	_, err = OpenSafetensors(filepath.Join(t.TempDir(), "absent.safetensors"))
	wantErr(t, err, "absent.safetensors", "no such file")
}
