package format

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

func TestShardedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	var ts []*tensor.Host
	for _, n := range []string{"t0", "t1", "t2", "big", "t4", "t5", "t6"} {
		ts = append(ts, mkHost(n, tensor.F32, 16, 8)) // 512 bytes each
	}
	ts[3] = mkHost("big", tensor.BF16, 40, 20) // 1600 bytes: a shard of its own
	meta := map[string]string{"format": "pt"}
	if err := WriteSharded(dir, ts, 1100, meta); err != nil {
		t.Fatal(err)
	}
	noTemps(t, dir)
	// Greedy split: [t0 t1] [t2] [big] [t4 t5] [t6].
	wantShards := [][]string{{"t0", "t1"}, {"t2"}, {"big"}, {"t4", "t5"}, {"t6"}}
	var idx struct {
		Metadata  map[string]int64
		WeightMap map[string]string `json:"weight_map"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, IndexName))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.Metadata["total_size"] != 6*512+1600 {
		t.Errorf("total_size %d", idx.Metadata["total_size"])
	}
	for k, names := range wantShards {
		shard := "model-0000" + string(rune('1'+k)) + "-of-00005.safetensors"
		for _, n := range names {
			if idx.WeightMap[n] != shard {
				t.Errorf("%s mapped to %q, want %s", n, idx.WeightMap[n], shard)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, shard)); err != nil {
			t.Error(err)
		}
	}
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sh := src.(*Sharded)
	if md := sh.Metadata(); md["format"] != "pt" {
		t.Errorf("metadata %v", md)
	}
	if s := sh.Shards(); len(s) != 5 || filepath.Base(s[0]) != "model-00001-of-00005.safetensors" {
		t.Errorf("shards %v", s)
	}
	var names []string
	var lastDone int64
	err = Stream(src, func(h *tensor.Host) error {
		names = append(names, h.Name)
		want := ts[slices.IndexFunc(ts, func(x *tensor.Host) bool { return x.Name == h.Name })]
		if !bytes.Equal(h.Data, want.Data) || !slices.Equal(h.Shape, want.Shape) || h.DType != want.DType {
			t.Errorf("%s differs", h.Name)
		}
		return nil
	}, func(done, total int64) { lastDone = done })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, " ") != "t0 t1 t2 big t4 t5 t6" || lastDone != 6*512+1600 {
		t.Errorf("stream order %v, %d bytes", names, lastDone)
	}
	for _, ti := range src.Tensors() {
		if filepath.Base(ti.File) != idx.WeightMap[ti.Name] {
			t.Errorf("%s: File %s", ti.Name, ti.File)
		}
	}
}

func TestWriteShardedRemovesStaleShards(t *testing.T) {
	dir := t.TempDir()
	ts := []*tensor.Host{mkHost("a", tensor.F32, 64), mkHost("b", tensor.F32, 64), mkHost("c", tensor.F32, 64)}
	if err := WriteSharded(dir, ts, 256, nil); err != nil {
		t.Fatal(err)
	}
	keep := []string{"notes.txt", "model-1-of-2.safetensors", "model.safetensors"}
	for _, n := range keep {
		writeFile(t, dir, n, []byte("x"))
	}
	if err := WriteSharded(dir, ts, 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	want := []string{"model-00001-of-00001.safetensors", "model-1-of-2.safetensors", "model.safetensors", IndexName, "notes.txt"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if len(src.Tensors()) != 3 {
		t.Errorf("%d tensors", len(src.Tensors()))
	}
}

func TestShardedOpenErrors(t *testing.T) {
	shard := func(t *testing.T, dir, name string, names ...string) {
		var ts []*tensor.Host
		for _, n := range names {
			ts = append(ts, mkHost(n, tensor.F32, 2))
		}
		if err := WriteSafetensors(filepath.Join(dir, name), ts, nil); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		index string
		setup func(t *testing.T, dir string)
		want  []string
	}{
		{"tensor missing from its shard", `{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`,
			func(t *testing.T, d string) { shard(t, d, "s1.safetensors", "a") },
			[]string{`tensor "b"`, "listed in weight_map under s1.safetensors, but that shard has no such tensor"}},
		{"tensor in a shard but not in the index", `{"weight_map":{"a":"s1.safetensors"}}`,
			func(t *testing.T, d string) { shard(t, d, "s1.safetensors", "a", "extra") },
			[]string{"s1.safetensors", `tensor "extra" at offset`, "not listed in the index"}},
		{"tensor in two shards", `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`,
			func(t *testing.T, d string) {
				shard(t, d, "s1.safetensors", "a")
				shard(t, d, "s2.safetensors", "b", "a")
			},
			[]string{"s2.safetensors", `tensor "a"`, "also stored here, but the index", "maps it to s1.safetensors"}},
		{"missing shard file", `{"weight_map":{"a":"nope.safetensors"}}`, nil, []string{"nope.safetensors", "no such file", "shard of"}},
		{"corrupt shard", `{"weight_map":{"a":"bad.safetensors"}}`,
			func(t *testing.T, d string) {
				writeFile(t, d, "bad.safetensors", []byte{200, 0, 0, 0, 0, 0, 0, 0, '{'})
			},
			[]string{"bad.safetensors", "header length 200 runs past the end", "shard of"}},
		{"shard outside the directory", `{"weight_map":{"a":"../s1.safetensors"}}`, nil, []string{`tensor "a"`, `shard name "../s1.safetensors" leaves the checkpoint directory`}},
		{"absolute shard path", `{"weight_map":{"a":"/etc/passwd"}}`, nil, []string{"leaves the checkpoint directory"}},
		{"shard name not a string", `{"weight_map":{"a":3}}`, nil, []string{`tensor "a" at offset 15`, "weight_map value 3 is not a file name"}},
		{"duplicate name in weight_map", `{"weight_map":{"a":"s1.safetensors","a":"s2.safetensors"}}`, nil,
			[]string{`tensor "a" at offset 36`, "appears twice in the weight_map (first at offset 15)"}},
		{"invalid JSON", `{"weight_map":{"a":"s1.safetensors",}}`, nil, []string{"at offset 36", "index is not valid JSON", "invalid character '}'"}},
		{"truncated JSON", `{"weight_map":{"a":"s1.safetensors"`, nil, []string{"not valid JSON", "unexpected end"}},
		{"no weight_map", `{"metadata":{}}`, nil, []string{"no weight_map"}},
		{"empty weight_map", `{"weight_map":{}}`, nil, []string{"weight_map is empty"}},
		{"weight_map not an object", `{"weight_map":[]}`, nil, []string{"at offset 14", "weight_map is not a JSON object"}},
		{"invalid UTF-8", "{\"weight_map\":{\"\xff\":\"s\"}}", nil, []string{"at offset 16", "not valid UTF-8"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if c.setup != nil {
				c.setup(t, dir)
			}
			p := writeFile(t, dir, IndexName, []byte(c.index))
			src, err := OpenSharded(p)
			if err == nil {
				src.Close()
			}
			wantErr(t, err, append([]string{"open "}, c.want...)...)
			if src != nil {
				t.Error("non-nil Source on error")
			}
		})
	}
}

func TestWriteShardedErrors(t *testing.T) {
	a := mkHost("a", tensor.F32, 64)
	cases := []struct {
		name    string
		tensors []*tensor.Host
		max     int64
		want    []string
	}{
		{"zero max", []*tensor.Host{a}, 0, []string{"maxShardBytes must be positive, got 0"}},
		{"no tensors", nil, 100, []string{"no tensors"}},
		{"duplicate across shards", []*tensor.Host{a, mkHost("b", tensor.F32, 64), a}, 256, []string{`tensor "a"`, "name used twice (tensors 0 and 2)"}},
		{"invalid dtype", []*tensor.Host{a, {Name: "x", Shape: []int{1}, Data: []byte{0}}}, 256, []string{`tensor "x"`, "invalid dtype"}},
		{"nil tensor", []*tensor.Host{nil}, 256, []string{"tensor 0 is nil"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			wantErr(t, WriteSharded(dir, c.tensors, c.max, nil), append([]string{"write ", IndexName}, c.want...)...)
			if m, _ := filepath.Glob(filepath.Join(dir, "*")); len(m) > 0 {
				t.Errorf("files written before validation failed: %v", m)
			}
		})
	}
}
