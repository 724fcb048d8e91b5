// Package format reads and writes weight files: safetensors (single file, sharded with an
// index) and the seed project's `.dat`. Every reader is lazy — it parses headers, validates them
// against the file size, and reads one tensor at a time with ReadAt — so a 3 GB checkpoint loads
// in one pass with host memory bounded by its largest tensor (Stream).
//
// We write our own safetensors code instead of using nlpodyssey/safetensors because that
// library deserialises a whole file from one []byte, which defeats streaming loads.
//
// Errors name the file, the tensor and the byte offset; nothing is allocated from a size or
// count that was not first checked against the file's length.
package format

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/qwengo/qwengo/engine/tensor"
)

// TensorInfo describes one stored tensor without reading it.
type TensorInfo struct {
	Name   string
	DType  tensor.DType
	Shape  []int
	File   string // path of the file holding it
	Offset int64  // absolute byte offset of its data in File
	Size   int64  // bytes
}

// Source is a set of named tensors read lazily.
type Source interface {
	Tensors() []TensorInfo                  // in storage order
	Read(name string) (*tensor.Host, error) // one tensor, size validated
	Close() error
}

// maxHeader bounds a safetensors JSON header (the reference implementation uses 100 MB).
const maxHeader = 100 << 20

type stFile struct {
	path     string
	f        *os.File
	infos    []TensorInfo
	byName   map[string]int
	metadata map[string]string
}

// Safetensors is one opened .safetensors file.
type Safetensors struct{ stFile }

// OpenSafetensors parses and validates a safetensors header.
func OpenSafetensors(path string) (*Safetensors, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := parseSafetensors(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Safetensors{*st}, nil
}

func parseSafetensors(path string, f *os.File) (*stFile, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	var hb [8]byte
	if _, err := f.ReadAt(hb[:], 0); err != nil {
		return nil, fmt.Errorf("%s: truncated: no 8-byte header length (file has %d bytes)", path, size)
	}
	n := binary.LittleEndian.Uint64(hb[:])
	if n > maxHeader || int64(n) > size-8 {
		return nil, fmt.Errorf("%s: header length %d at offset 0 exceeds the file (%d bytes) or the 100 MB limit", path, n, size)
	}
	raw := make([]byte, n)
	if _, err := f.ReadAt(raw, 8); err != nil {
		return nil, fmt.Errorf("%s: reading header: %w", path, err)
	}
	return parseHeader(path, raw, size, f)
}

type stEntry struct {
	DType       string  `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// parseHeader validates a header (raw JSON) for a file of fileSize bytes.
func parseHeader(path string, raw []byte, fileSize int64, f *os.File) (*stFile, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, fmt.Errorf("%s: header at offset 8 is not valid JSON: %v", path, err)
	}
	st := &stFile{path: path, f: f, byName: map[string]int{}}
	dataStart := 8 + int64(len(raw))
	dataLen := fileSize - dataStart
	for name, msg := range top {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &st.metadata); err != nil {
				return nil, fmt.Errorf("%s: __metadata__ must map strings to strings: %v", path, err)
			}
			continue
		}
		var e stEntry
		dec := json.NewDecoder(strings.NewReader(string(msg)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: bad header entry: %v", path, name, err)
		}
		dt, err := tensor.ParseDType(e.DType)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %v", path, name, err)
		}
		if len(e.DataOffsets) != 2 || e.DataOffsets[0] < 0 || e.DataOffsets[1] < e.DataOffsets[0] {
			return nil, fmt.Errorf("%s: tensor %q: data_offsets %v are not [begin, end]", path, name, e.DataOffsets)
		}
		if e.DataOffsets[1] > dataLen {
			return nil, fmt.Errorf("%s: tensor %q: data ends at %d but the file has only %d data bytes (truncated?)", path, name, dataStart+e.DataOffsets[1], dataLen)
		}
		numel := int64(1)
		shape := make([]int, len(e.Shape))
		for i, d := range e.Shape {
			if d < 0 || (d > 0 && numel > (1<<50)/d) {
				return nil, fmt.Errorf("%s: tensor %q: bad shape %v", path, name, e.Shape)
			}
			numel *= d
			shape[i] = int(d)
		}
		want := numel * int64(dt.Size())
		if got := e.DataOffsets[1] - e.DataOffsets[0]; got != want {
			return nil, fmt.Errorf("%s: tensor %q: %v%v needs %d bytes, data_offsets give %d", path, name, dt, shape, want, got)
		}
		st.infos = append(st.infos, TensorInfo{Name: name, DType: dt, Shape: shape, File: path, Offset: dataStart + e.DataOffsets[0], Size: want})
	}
	sort.Slice(st.infos, func(i, j int) bool {
		if st.infos[i].Offset != st.infos[j].Offset {
			return st.infos[i].Offset < st.infos[j].Offset
		}
		return st.infos[i].Name < st.infos[j].Name
	})
	end := dataStart
	for i, ti := range st.infos {
		if ti.Size > 0 && ti.Offset < end {
			return nil, fmt.Errorf("%s: tensor %q at offset %d overlaps the previous tensor (ends at %d)", path, ti.Name, ti.Offset, end)
		}
		end = max(end, ti.Offset+ti.Size)
		st.byName[ti.Name] = i
	}
	return st, nil
}

// Tensors lists the tensors in storage order.
func (s *stFile) Tensors() []TensorInfo { return s.infos }

// Metadata returns the header's __metadata__ map (may be nil).
func (s *stFile) Metadata() map[string]string { return s.metadata }

// Read reads one tensor.
func (s *stFile) Read(name string) (*tensor.Host, error) {
	i, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", s.path, name)
	}
	return readInfo(s.f, s.infos[i])
}

func readInfo(f io.ReaderAt, ti TensorInfo) (*tensor.Host, error) {
	buf := make([]byte, ti.Size)
	if ti.Size == 0 {
		return &tensor.Host{Name: ti.Name, DType: ti.DType, Shape: append([]int(nil), ti.Shape...), Data: buf}, nil
	}
	if _, err := f.ReadAt(buf, ti.Offset); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: reading %d bytes at offset %d: %w", ti.File, ti.Name, ti.Size, ti.Offset, err)
	}
	return &tensor.Host{Name: ti.Name, DType: ti.DType, Shape: append([]int(nil), ti.Shape...), Data: buf}, nil
}

// Close closes the file.
func (s *stFile) Close() error { return s.f.Close() }

// Sharded is a safetensors checkpoint split across files listed by an index.
type Sharded struct {
	index  string
	files  []*Safetensors
	infos  []TensorInfo
	byName map[string]int // tensor -> file
}

// OpenSharded opens model.safetensors.index.json and every shard it names.
func OpenSharded(indexPath string) (*Sharded, error) {
	raw, err := os.ReadFile(indexPath)
	if err != nil {
		return nil, err
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%s: not a safetensors index: %v", indexPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("%s: weight_map is empty", indexPath)
	}
	dir := filepath.Dir(indexPath)
	sh := &Sharded{index: indexPath, byName: map[string]int{}}
	fileIdx := map[string]int{}
	var shardNames []string
	for _, fn := range idx.WeightMap {
		if _, ok := fileIdx[fn]; !ok {
			if strings.Contains(fn, "..") || filepath.IsAbs(fn) {
				sh.Close()
				return nil, fmt.Errorf("%s: shard name %q leaves the checkpoint directory", indexPath, fn)
			}
			fileIdx[fn] = -1
			shardNames = append(shardNames, fn)
		}
	}
	sort.Strings(shardNames)
	for _, fn := range shardNames {
		st, err := OpenSafetensors(filepath.Join(dir, fn))
		if err != nil {
			sh.Close()
			return nil, fmt.Errorf("%s: shard: %w", indexPath, err)
		}
		fileIdx[fn] = len(sh.files)
		sh.files = append(sh.files, st)
	}
	for name, fn := range idx.WeightMap {
		st := sh.files[fileIdx[fn]]
		if _, ok := st.byName[name]; !ok {
			sh.Close()
			return nil, fmt.Errorf("%s: tensor %q is listed in the index but missing from shard %s", indexPath, name, fn)
		}
	}
	for fi, st := range sh.files {
		for _, ti := range st.infos {
			if fn, ok := idx.WeightMap[ti.Name]; !ok || fileIdx[fn] != fi {
				sh.Close()
				return nil, fmt.Errorf("%s: tensor %q in shard %s is not mapped to it by the index", indexPath, ti.Name, st.path)
			}
			sh.byName[ti.Name] = fi
			sh.infos = append(sh.infos, ti)
		}
	}
	return sh, nil
}

// Tensors lists tensors shard by shard, each in storage order.
func (s *Sharded) Tensors() []TensorInfo { return s.infos }

// Read reads one tensor from its shard.
func (s *Sharded) Read(name string) (*tensor.Host, error) {
	fi, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", s.index, name)
	}
	return s.files[fi].Read(name)
}

// Close closes every shard.
func (s *Sharded) Close() error {
	var first error
	for _, f := range s.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Open opens a checkpoint: a directory (model.safetensors.index.json or model.safetensors, or a
// single *.safetensors / *.dat inside), a .safetensors file, an index .json, or a seed .dat.
func Open(path string) (Source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		for _, name := range []string{"model.safetensors.index.json", "model.safetensors"} {
			p := filepath.Join(path, name)
			if _, err := os.Stat(p); err == nil {
				return Open(p)
			}
		}
		var cands []string
		for _, pat := range []string{"*.safetensors", "*.dat"} {
			m, _ := filepath.Glob(filepath.Join(path, pat))
			cands = append(cands, m...)
		}
		if len(cands) == 1 {
			return Open(cands[0])
		}
		return nil, fmt.Errorf("%s: no model.safetensors(.index.json) and %d other weight files: name the file", path, len(cands))
	}
	switch {
	case strings.HasSuffix(path, ".json"):
		return OpenSharded(path)
	case strings.HasSuffix(path, ".dat"):
		return OpenDat(path)
	case strings.HasSuffix(path, ".safetensors"):
		return OpenSafetensors(path)
	}
	return nil, fmt.Errorf("%s: unknown weight file type (want .safetensors, .safetensors.index.json or .dat)", path)
}

// Stream reads every tensor once in storage order (shard by shard, ascending offset), calling fn
// with each. Host memory is bounded by the largest tensor. progress(done, total) is called
// after each tensor when non-nil.
func Stream(src Source, fn func(*tensor.Host) error, progress func(done, total int64)) error {
	infos := src.Tensors()
	var total, done int64
	for _, ti := range infos {
		total += ti.Size
	}
	for _, ti := range infos {
		t, err := src.Read(ti.Name)
		if err != nil {
			return err
		}
		if err := fn(t); err != nil {
			return err
		}
		done += ti.Size
		if progress != nil {
			progress(done, total)
		}
	}
	return nil
}

// writeAtomic writes via a temporary file in the same directory and renames it into place.
func writeAtomic(path string, write func(w io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := newBufWriter(tmp)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// WriteSafetensors writes tensors (in the given order) atomically, with an 8-byte aligned
// header as the reference implementation pads it.
func WriteSafetensors(path string, tensors []*tensor.Host, metadata map[string]string) error {
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	seen := map[string]bool{}
	for _, t := range tensors {
		if err := t.Validate(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if seen[t.Name] || t.Name == "__metadata__" || t.Name == "" {
			return fmt.Errorf("write %s: duplicate or reserved tensor name %q", path, t.Name)
		}
		seen[t.Name] = true
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		header[t.Name] = map[string]any{"dtype": t.DType.String(), "shape": shape, "data_offsets": []int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	return writeAtomic(path, func(w io.Writer) error {
		var lb [8]byte
		binary.LittleEndian.PutUint64(lb[:], uint64(len(hj)))
		if _, err := w.Write(lb[:]); err != nil {
			return err
		}
		if _, err := w.Write(hj); err != nil {
			return err
		}
		for _, t := range tensors {
			if _, err := w.Write(t.Data); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteSharded writes HF-style shards model-0000i-of-0000n.safetensors of at most maxShardBytes
// (a larger tensor gets a shard of its own) plus model.safetensors.index.json.
func WriteSharded(dir string, tensors []*tensor.Host, maxShardBytes int64, metadata map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var shards [][]*tensor.Host
	var cur []*tensor.Host
	var curBytes, total int64
	for _, t := range tensors {
		n := int64(len(t.Data))
		if len(cur) > 0 && curBytes+n > maxShardBytes {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, t)
		curBytes += n
		total += n
	}
	if len(cur) > 0 {
		shards = append(shards, cur)
	}
	weightMap := map[string]string{}
	for i, sh := range shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		if err := WriteSafetensors(filepath.Join(dir, name), sh, metadata); err != nil {
			return err
		}
		for _, t := range sh {
			weightMap[t.Name] = name
		}
	}
	idx, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "model.safetensors.index.json"), func(w io.Writer) error {
		_, err := w.Write(append(idx, '\n'))
		return err
	})
}

// WriteFileAtomic writes data to path through a temporary file and a rename.
func WriteFileAtomic(path string, data []byte) error {
	return writeAtomic(path, func(w io.Writer) error { _, err := w.Write(data); return err })
}
