package format

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

func host(t testing.TB, name string, dt tensor.DType, shape []int) *tensor.Host {
	t.Helper()
	n := tensor.Numel(shape) * dt.Size()
	h := &tensor.Host{Name: name, DType: dt, Shape: shape, Data: make([]byte, n)}
	for i := range h.Data {
		h.Data[i] = byte(i*7 + len(name))
	}
	if dt == tensor.F32 {
		for i := 0; i < n/4; i++ {
			binary.LittleEndian.PutUint32(h.Data[4*i:], math.Float32bits(float32(i)*0.5))
		}
	}
	return h
}

func TestSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ts := []*tensor.Host{
		host(t, "a", tensor.F32, []int{2, 3}),
		host(t, "b", tensor.BF16, []int{5}),
		host(t, "c", tensor.F8E4M3, []int{4, 4}),
		host(t, "d", tensor.U8, []int{3, 2}),
		host(t, "s", tensor.F32, []int{}),
		host(t, "e", tensor.I64, []int{2}),
	}
	p := filepath.Join(dir, "m.safetensors")
	if err := WriteSafetensors(p, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	src, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if md := src.(*Safetensors).Metadata(); md["format"] != "pt" {
		t.Fatalf("metadata %v", md)
	}
	if len(src.Tensors()) != len(ts) {
		t.Fatalf("%d tensors", len(src.Tensors()))
	}
	for _, want := range ts {
		got, err := src.Read(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DType != want.DType || !bytes.Equal(got.Data, want.Data) || len(got.Shape) != len(want.Shape) {
			t.Fatalf("%s: got %v%v", want.Name, got.DType, got.Shape)
		}
	}
	raw, _ := os.ReadFile(p)
	if hl := binary.LittleEndian.Uint64(raw); hl%8 != 0 {
		t.Fatalf("header length %d not 8-aligned", hl)
	}
}

func TestShardedRoundTripAndStream(t *testing.T) {
	dir := t.TempDir()
	var ts []*tensor.Host
	for i := 0; i < 7; i++ {
		ts = append(ts, host(t, "t"+string(rune('a'+i)), tensor.F32, []int{16, 8}))
	}
	if err := WriteSharded(dir, ts, 1200, nil); err != nil {
		t.Fatal(err)
	}
	shards, _ := filepath.Glob(filepath.Join(dir, "model-*-of-*.safetensors"))
	if len(shards) < 3 {
		t.Fatalf("%d shards", len(shards))
	}
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var names []string
	var last int64
	err = Stream(src, func(h *tensor.Host) error {
		names = append(names, h.Name)
		return h.Validate()
	}, func(done, total int64) {
		if done < last || done > total {
			t.Errorf("progress %d/%d", done, total)
		}
		last = done
	})
	if err != nil || len(names) != 7 || last != 7*16*8*4 {
		t.Fatalf("stream: %v %v %d", err, names, last)
	}
}

// rawST builds a safetensors file from a literal header and n data bytes.
func rawST(t *testing.T, header string, n int) string {
	p := filepath.Join(t.TempDir(), "x.safetensors")
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(make([]byte, n))
	os.WriteFile(p, b.Bytes(), 0o644)
	return p
}

func TestSafetensorsErrors(t *testing.T) {
	cases := []struct {
		name, header string
		data         int
		want         string
	}{
		{"bad json", `{"a":`, 0, "not valid JSON"},
		{"unknown dtype", `{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}`, 4, `tensor "a": unknown dtype "F7"`},
		{"truncated data", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, 8, "truncated"},
		{"size mismatch", `{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8, "needs 12 bytes"},
		{"overlap", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12, "overlaps"},
		{"bad offsets", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}`, 8, "not [begin, end]"},
		{"unknown field", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, 4, "bad header entry"},
		{"negative dim", `{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4, "bad shape"},
	}
	for _, c := range cases {
		_, err := OpenSafetensors(rawST(t, c.header, c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "x.safetensors") {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	p := filepath.Join(t.TempDir(), "h.safetensors")
	os.WriteFile(p, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{'}, 0o644)
	if _, err := OpenSafetensors(p); err == nil || !strings.Contains(err.Error(), "exceeds the file") {
		t.Errorf("huge header length: %v", err)
	}
	os.WriteFile(p, []byte{1, 2}, 0o644)
	if _, err := OpenSafetensors(p); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("short file: %v", err)
	}
}

func TestShardedErrors(t *testing.T) {
	dir := t.TempDir()
	WriteSafetensors(filepath.Join(dir, "s1.safetensors"), []*tensor.Host{host(t, "a", tensor.F32, []int{2})}, nil)
	idx := filepath.Join(dir, "model.safetensors.index.json")
	os.WriteFile(idx, []byte(`{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`), 0o644)
	if _, err := OpenSharded(idx); err == nil || !strings.Contains(err.Error(), `"b" is listed in the index but missing`) {
		t.Errorf("missing tensor: %v", err)
	}
	os.WriteFile(idx, []byte(`{"weight_map":{"a":"../s1.safetensors"}}`), 0o644)
	if _, err := OpenSharded(idx); err == nil || !strings.Contains(err.Error(), "leaves the checkpoint") {
		t.Errorf("escaping shard: %v", err)
	}
	os.WriteFile(idx, []byte(`{"weight_map":{"a":"nope.safetensors"}}`), 0o644)
	if _, err := OpenSharded(idx); err == nil || !strings.Contains(err.Error(), "nope.safetensors") {
		t.Errorf("missing shard: %v", err)
	}
}

// datFile builds a .dat covering every elemType and both key spellings.
func datFile(t testing.TB) (string, []DatEntry, [][]byte) {
	entries := []DatEntry{
		{Key: "model.layers.0.self_attn.q_proj.weight.qdata", ElemType: 0, Shape: []int{4, 16}},
		{Key: "model.layers.0.self_attn.q_proj.weight.scale", ElemType: 101, Shape: []int{4, 2}},
		{Key: "lm_head.qdata", ElemType: 100, Shape: []int{2, 8}},
		{Key: "lm_head.scale", ElemType: 101, Shape: []int{2, 1}},
		{Key: "model.norm.weight", ElemType: 5, Shape: []int{32}},
		{Key: "scalar", ElemType: 6, Shape: []int{}},
	}
	for _, code := range []int{1, 2, 3, 4, 7, 11, 15} {
		entries = append(entries, DatEntry{Key: "t" + string(rune('0'+code%10)) + string(rune('a'+code)), ElemType: code, Shape: []int{2, 1, 3}})
	}
	var payloads [][]byte
	for i, e := range entries {
		p := make([]byte, tensor.Numel(e.Shape)*datTypes[e.ElemType].Size())
		for j := range p {
			p[j] = byte(i*31 + j)
		}
		payloads = append(payloads, p)
	}
	path := filepath.Join(t.TempDir(), "w.dat")
	if err := WriteDat(path, entries, func(i int) ([]byte, error) { return payloads[i], nil }); err != nil {
		t.Fatal(err)
	}
	return path, entries, payloads
}

func TestDatRoundTripIdenticalBytes(t *testing.T) {
	path, entries, payloads := datFile(t)
	d, err := OpenDat(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Entries) != len(entries) {
		t.Fatalf("%d entries", len(d.Entries))
	}
	for i, e := range d.Entries {
		if e.Key != entries[i].Key || e.ElemType != entries[i].ElemType {
			t.Fatalf("entry %d: %+v", i, e)
		}
		b, err := d.ReadEntry(i)
		if err != nil || !bytes.Equal(b, payloads[i]) {
			t.Fatalf("entry %d payload: %v", i, err)
		}
	}
	if ti := d.Tensors()[1]; ti.DType != tensor.F8E4M3 {
		t.Fatalf("scale dtype %v", ti.DType)
	}
	out := filepath.Join(t.TempDir(), "copy.dat")
	if err := WriteDat(out, d.Entries, d.ReadEntry); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(out)
	if !bytes.Equal(a, b) {
		t.Fatal("rewrite changed bytes")
	}
	src, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	src.Close()
}

func TestDatErrors(t *testing.T) {
	path, _, _ := datFile(t)
	good, _ := os.ReadFile(path)
	write := func(b []byte) string {
		p := filepath.Join(t.TempDir(), "bad.dat")
		os.WriteFile(p, b, 0o644)
		return p
	}
	badType := append([]byte{1, 1, 'k', 99, 0}, 0)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "truncated at offset 0"},
		{"truncated payload", good[:len(good)-3], "truncated"},
		{"truncated header", []byte{1, 5, 'a', 'b', 'c', 'd', 'e', 6}, "truncated"},
		{"count beyond file", good[:5], "cannot fit"},
		{"unknown elemType", badType, "unknown elemType 99"},
		{"huge count", []byte{0xff, 0xff, 0xff, 0x7f}, "cannot fit"},
		{"non-minimal uleb", []byte{0x81, 0x00}, "not minimal"},
		{"overlong uleb", []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, "too large"},
		{"trailing bytes", append(append([]byte{}, good...), 0), "unexpected bytes"},
		{"zero key", []byte{1, 0}, "key length 0"},
	}
	for _, c := range cases {
		_, err := OpenDat(write(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.dat") {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	if err := WriteDat(filepath.Join(t.TempDir(), "x.dat"), []DatEntry{{Key: "a", ElemType: 6, Shape: []int{2}}}, func(int) ([]byte, error) { return []byte{1}, nil }); err == nil || !strings.Contains(err.Error(), "needs 8 bytes") {
		t.Errorf("short payload: %v", err)
	}
}

func TestCheckFinite(t *testing.T) {
	h, _ := tensor.FromFloat32s("w", tensor.BF16, []int{2, 3}, []float32{1, 2, 3, 4, float32(math.Inf(1)), 6})
	err := CheckFinite(h)
	if err == nil || !strings.Contains(err.Error(), `"w": element 4 [1 1]`) {
		t.Fatalf("err = %v", err)
	}
	h, _ = tensor.FromFloat32s("ok", tensor.F32, []int{2}, []float32{1, 2})
	if err := CheckFinite(h); err != nil {
		t.Fatal(err)
	}
}

func FuzzSafetensorsHeader(f *testing.F) {
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"y"}}`), 8)
	f.Add([]byte(`{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}`), 1)
	f.Fuzz(func(t *testing.T, header []byte, n int) {
		if n < 0 || n > 1<<16 {
			return
		}
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, uint64(len(header)))
		b.Write(header)
		b.Write(make([]byte, n))
		p := filepath.Join(t.TempDir(), "f.safetensors")
		os.WriteFile(p, b.Bytes(), 0o644)
		st, err := OpenSafetensors(p)
		if err != nil {
			return
		}
		defer st.Close()
		for _, ti := range st.Tensors() {
			if _, err := st.Read(ti.Name); err != nil {
				t.Fatalf("validated header but read failed: %v", err)
			}
		}
	})
}

func FuzzDat(f *testing.F) {
	path, _, _ := datFile(f)
	good, _ := os.ReadFile(path)
	f.Add(good)
	f.Add([]byte{1, 1, 'k', 6, 1, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDat("f.dat", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		var back bytes.Buffer
		if err := writeDat(&back, "o.dat", d.Entries, d.ReadEntry); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Bytes(), data) {
			t.Fatal("accepted file does not round-trip byte for byte")
		}
	})
}

// BenchmarkLoad1GB streams a 1 GB BF16 safetensors file shaped like Qwen3-4B layers.
func BenchmarkLoad1GB(b *testing.B) {
	if testing.Short() {
		b.Skip("1 GB file")
	}
	dir := b.TempDir()
	var ts []*tensor.Host
	var total int64
	for i := 0; total < 1<<30; i++ {
		for _, shape := range [][]int{{4096, 2560}, {9728, 2560}, {2560, 9728}} {
			h := &tensor.Host{Name: "layer" + string(rune('A'+i)) + string(rune('a'+len(ts)%26)) + string(rune('0'+len(ts)/26)), DType: tensor.BF16, Shape: shape, Data: make([]byte, tensor.Numel(shape)*2)}
			ts = append(ts, h)
			total += int64(len(h.Data))
		}
	}
	p := filepath.Join(dir, "big.safetensors")
	if err := WriteSafetensors(p, ts, nil); err != nil {
		b.Fatal(err)
	}
	ts = nil
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src, err := Open(p)
		if err != nil {
			b.Fatal(err)
		}
		if err := Stream(src, func(h *tensor.Host) error { return nil }, nil); err != nil {
			b.Fatal(err)
		}
		src.Close()
	}
}
