package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

// mkHost makes a tensor with deterministic, name-dependent bytes.
func mkHost(name string, dt tensor.DType, shape ...int) *tensor.Host {
	h := &tensor.Host{Name: name, DType: dt, Shape: append([]int{}, shape...), Data: make([]byte, tensor.Numel(shape)*dt.Size())}
	seed := byte(len(name))
	for _, c := range name {
		seed = seed*31 + byte(c)
	}
	for i := range h.Data {
		h.Data[i] = seed + byte(i*7)
	}
	return h
}

// writeFile writes b to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// stBytes builds a safetensors file: length (len(header)+lenDelta), header, n data bytes.
func stBytes(header string, lenDelta int, n int) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)+lenDelta))
	b.WriteString(header)
	b.Write(make([]byte, n))
	return b.Bytes()
}

// wantErr checks that err is a *Error (possibly wrapped) whose message holds every part.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	var fe *Error
	if !errors.As(err, &fe) {
		t.Errorf("error %T is not a *format.Error: %v", err, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

// noTemps fails when a writer left temporary files in dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
	if len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// errSource is a Source whose reads can fail, recording how many tensors are outstanding.
type countingSource struct {
	infos       []TensorInfo
	outstanding int
	maxOut      int
	failAt      string
}

func (c *countingSource) Tensors() []TensorInfo { return c.infos }
func (c *countingSource) Close() error          { return nil }
func (c *countingSource) Read(name string) (*tensor.Host, error) {
	if name == c.failAt {
		return nil, newErr("read", "mem", name, 0, "injected failure")
	}
	c.outstanding++
	c.maxOut = max(c.maxOut, c.outstanding)
	for _, ti := range c.infos {
		if ti.Name == name {
			return mkHost(name, ti.DType, ti.Shape...), nil
		}
	}
	return nil, errors.New("no such tensor")
}

func TestStream(t *testing.T) {
	src := &countingSource{}
	for i, n := range []string{"a", "b", "c", "d"} {
		src.infos = append(src.infos, TensorInfo{Name: n, DType: tensor.F32, Shape: []int{i + 1}, Size: int64(4 * (i + 1))})
	}
	var names []string
	var progress [][2]int64
	err := Stream(src, func(h *tensor.Host) error {
		if src.outstanding != 1 {
			t.Errorf("%d tensors held while handling %s: Stream reads ahead", src.outstanding, h.Name)
		}
		src.outstanding--
		names = append(names, h.Name)
		return nil
	}, func(done, total int64) { progress = append(progress, [2]int64{done, total}) })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, "") != "abcd" {
		t.Errorf("order %v", names)
	}
	want := [][2]int64{{4, 40}, {12, 40}, {24, 40}, {40, 40}}
	if len(progress) != 4 || progress[0] != want[0] || progress[3] != want[3] || progress[1] != want[1] {
		t.Errorf("progress %v, want %v", progress, want)
	}

	// Errors from fn and from Read stop the stream and come back unchanged.
	stop := errors.New("stop here")
	n := 0
	if err := Stream(src, func(*tensor.Host) error { n++; return stop }, nil); err != stop || n != 1 {
		t.Errorf("fn error: %v after %d tensors", err, n)
	}
	src.failAt = "c"
	n = 0
	err = Stream(src, func(*tensor.Host) error { n++; return nil }, nil)
	wantErr(t, err, `tensor "c"`, "injected failure")
	if n != 2 {
		t.Errorf("%d tensors before the failing one", n)
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	ts := []*tensor.Host{mkHost("x", tensor.F32, 3)}

	single := filepath.Join(dir, "single")
	os.Mkdir(single, 0o755)
	WriteSafetensors(filepath.Join(single, "model.safetensors"), ts, nil)

	sharded := filepath.Join(dir, "sharded")
	if err := WriteSharded(sharded, ts, 100, nil); err != nil {
		t.Fatal(err)
	}
	WriteSafetensors(filepath.Join(sharded, "model.safetensors"), ts, nil) // the index wins

	datDir := filepath.Join(dir, "dat")
	os.Mkdir(datDir, 0o755)
	WriteDat(filepath.Join(datDir, "w.dat"), []DatEntry{{Key: "x", ElemType: 6, Shape: []int{3}}}, func(int) ([]byte, error) { return ts[0].Data, nil })

	otherName := filepath.Join(dir, "other")
	os.Mkdir(otherName, 0o755)
	WriteSafetensors(filepath.Join(otherName, "weights.safetensors"), ts, nil)

	ambiguous := filepath.Join(dir, "ambiguous")
	os.Mkdir(ambiguous, 0o755)
	WriteSafetensors(filepath.Join(ambiguous, "a.safetensors"), ts, nil)
	WriteSafetensors(filepath.Join(ambiguous, "b.safetensors"), ts, nil)

	WriteSafetensors(filepath.Join(dir, "noext"), ts, nil)
	writeFile(t, dir, "junk.bin", []byte("hello, world"))

	cases := []struct {
		path string
		want string // dynamic type of the Source, or an error part
	}{
		{single, "*format.Safetensors"},
		{sharded, "*format.Sharded"},
		{filepath.Join(sharded, IndexName), "*format.Sharded"},
		{filepath.Join(sharded, "model-00001-of-00001.safetensors"), "*format.Safetensors"},
		{datDir, "*format.Dat"},
		{otherName, "*format.Safetensors"},
		{filepath.Join(dir, "noext"), "*format.Safetensors"},
		{ambiguous, "error: 2 other .safetensors/.dat files [a.safetensors b.safetensors]"},
		{filepath.Join(dir, "junk.bin"), "error: unknown weight file type"},
		{filepath.Join(dir, "missing"), "error: no such file"},
	}
	for _, c := range cases {
		src, err := Open(c.path)
		if strings.HasPrefix(c.want, "error: ") {
			wantErr(t, err, c.path, strings.TrimPrefix(c.want, "error: "))
			continue
		}
		if err != nil {
			t.Errorf("Open(%s): %v", c.path, err)
			continue
		}
		if got := typeName(src); got != c.want {
			t.Errorf("Open(%s) = %s, want %s", c.path, got, c.want)
		}
		h, err := src.Read("x")
		if err != nil || !bytes.Equal(h.Data, ts[0].Data) {
			t.Errorf("Open(%s).Read: %v", c.path, err)
		}
		if err := src.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing path: %v is not fs.ErrNotExist", err)
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *Safetensors:
		return "*format.Safetensors"
	case *Sharded:
		return "*format.Sharded"
	case *Dat:
		return "*format.Dat"
	}
	return "?"
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	for _, s := range []string{"first", "second"} {
		if err := WriteFileAtomic(p, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != s {
			t.Fatalf("content %q", b)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}
	noTemps(t, dir)
	wantErr(t, WriteFileAtomic(filepath.Join(dir, "no", "such", "dir"), nil), "no", "temporary file")
}

func TestErrorFormat(t *testing.T) {
	cases := []struct {
		e    *Error
		want string
	}{
		{&Error{Op: "open", File: "m.dat", Tensor: "w", Offset: 12, Msg: "bad"}, `open m.dat: tensor "w" at offset 12: bad`},
		{&Error{Op: "open", File: "m.dat", Offset: 0, Msg: "bad"}, `open m.dat: at offset 0: bad`},
		{&Error{Op: "write", File: "m.dat", Tensor: "w", Offset: -1, Msg: "bad", Err: fs.ErrClosed}, `write m.dat: tensor "w": bad: file already closed`},
	}
	for _, c := range cases {
		if got := c.e.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	if !errors.Is(cases[2].e, fs.ErrClosed) {
		t.Error("Unwrap")
	}
}
