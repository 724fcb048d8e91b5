package format

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/qwengo/qwengo/engine/tensor"
)

func newBufWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 1<<20) }

// Seed `.dat` element type codes (TorchSharp's ScalarType plus two of the seed's own).
var datTypes = map[int]tensor.DType{
	0: tensor.U8, 1: tensor.I8, 2: tensor.I16, 3: tensor.I32, 4: tensor.I64,
	5: tensor.F16, 6: tensor.F32, 7: tensor.F64, 11: tensor.Bool, 15: tensor.BF16,
	100: tensor.F4E2M1x2, 101: tensor.F8E4M3,
}

// DatElemType returns the `.dat` code for a dtype (the inverse of the reader's mapping).
func DatElemType(d tensor.DType) (int, bool) {
	for code, dt := range datTypes {
		if dt == d {
			return code, true
		}
	}
	return 0, false
}

// DatEntry is one entry of a seed `.dat` file.
type DatEntry struct {
	Key      string
	ElemType int // the code as stored; kept on rewrite
	Shape    []int
	Offset   int64 // payload offset in the file
	Size     int64 // payload bytes
}

// Dat is an opened seed `.dat` file (TorchSharp state-dict layout). It implements Source,
// reporting each entry's elemType as a DType; the qdata of NVFP4 pairs uses code 0 (uint8).
type Dat struct {
	Path    string
	Entries []DatEntry
	f       io.ReaderAt
	closer  io.Closer
	byName  map[string]int
}

type datReader struct {
	path string
	f    io.ReaderAt
	off  int64
	size int64
	buf  [1]byte
}

func (r *datReader) byte1() (byte, error) {
	if r.off >= r.size {
		return 0, fmt.Errorf("%s: truncated at offset %d (file has %d bytes)", r.path, r.off, r.size)
	}
	if _, err := r.f.ReadAt(r.buf[:], r.off); err != nil {
		return 0, fmt.Errorf("%s: offset %d: %w", r.path, r.off, err)
	}
	r.off++
	return r.buf[0], nil
}

// uleb reads a minimal unsigned LEB128 number of at most 63 bits.
func (r *datReader) uleb(what string) (uint64, error) {
	start := r.off
	var v uint64
	for shift := uint(0); ; shift += 7 {
		b, err := r.byte1()
		if err != nil {
			return 0, fmt.Errorf("%s (reading %s)", err, what)
		}
		if shift >= 63 || (shift == 56 && b > 0x7f) {
			return 0, fmt.Errorf("%s: %s at offset %d: ULEB128 number too large", r.path, what, start)
		}
		v |= uint64(b&0x7f) << shift
		if b&0x80 == 0 {
			if b == 0 && shift > 0 {
				return 0, fmt.Errorf("%s: %s at offset %d: ULEB128 number is not minimal", r.path, what, start)
			}
			return v, nil
		}
	}
}

// OpenDat parses a seed `.dat` index (keys, types, shapes) without reading payloads.
func OpenDat(path string) (*Dat, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	d, err := parseDat(path, f, fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	d.closer = f
	return d, nil
}

func parseDat(path string, f io.ReaderAt, size int64) (*Dat, error) {
	r := &datReader{path: path, f: f, size: size}
	count, err := r.uleb("entry count")
	if err != nil {
		return nil, err
	}
	// Each entry takes at least 4 bytes (key length, key byte, type, ndim).
	if count > uint64(size)/4+1 {
		return nil, fmt.Errorf("%s: entry count %d cannot fit in %d bytes", path, count, size)
	}
	d := &Dat{Path: path, f: f, byName: map[string]int{}}
	for i := uint64(0); i < count; i++ {
		at := r.off
		klen, err := r.uleb(fmt.Sprintf("key length of entry %d", i))
		if err != nil {
			return nil, err
		}
		if klen == 0 || klen > uint64(size-r.off) || klen > 1<<16 {
			return nil, fmt.Errorf("%s: entry %d at offset %d: key length %d is invalid", path, i, at, klen)
		}
		kb := make([]byte, klen)
		if _, err := f.ReadAt(kb, r.off); err != nil {
			return nil, fmt.Errorf("%s: entry %d: key at offset %d: %w", path, i, r.off, err)
		}
		r.off += int64(klen)
		key := string(kb)
		et, err := r.uleb(fmt.Sprintf("elemType of %q", key))
		if err != nil {
			return nil, err
		}
		dt, ok := datTypes[int(min(et, 1<<20))]
		if !ok {
			return nil, fmt.Errorf("%s: tensor %q at offset %d: unknown elemType %d", path, key, at, et)
		}
		ndim, err := r.uleb(fmt.Sprintf("ndim of %q", key))
		if err != nil {
			return nil, err
		}
		if ndim > 8 {
			return nil, fmt.Errorf("%s: tensor %q at offset %d: %d dimensions", path, key, at, ndim)
		}
		shape := make([]int, ndim)
		numel := uint64(1)
		for j := range shape {
			dim, err := r.uleb(fmt.Sprintf("dim %d of %q", j, key))
			if err != nil {
				return nil, err
			}
			if dim > 0 && numel > math.MaxInt64/8/dim {
				return nil, fmt.Errorf("%s: tensor %q: shape overflows", path, key)
			}
			numel *= dim
			shape[j] = int(dim)
		}
		nbytes := int64(numel) * int64(dt.Size())
		if nbytes > size-r.off {
			return nil, fmt.Errorf("%s: tensor %q: payload of %d bytes at offset %d runs past the end of the file (%d bytes): truncated", path, key, nbytes, r.off, size)
		}
		if _, dup := d.byName[key]; dup {
			return nil, fmt.Errorf("%s: tensor %q at offset %d appears twice", path, key, at)
		}
		d.byName[key] = len(d.Entries)
		d.Entries = append(d.Entries, DatEntry{Key: key, ElemType: int(et), Shape: shape, Offset: r.off, Size: nbytes})
		r.off += nbytes
	}
	if r.off != size {
		return nil, fmt.Errorf("%s: %d unexpected bytes after the last entry at offset %d", path, size-r.off, r.off)
	}
	return d, nil
}

// Tensors lists entries in file order.
func (d *Dat) Tensors() []TensorInfo {
	out := make([]TensorInfo, len(d.Entries))
	for i, e := range d.Entries {
		out[i] = TensorInfo{Name: e.Key, DType: datTypes[e.ElemType], Shape: e.Shape, File: d.Path, Offset: e.Offset, Size: e.Size}
	}
	return out
}

// Read reads one entry as a host tensor.
func (d *Dat) Read(name string) (*tensor.Host, error) {
	i, ok := d.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", d.Path, name)
	}
	e := d.Entries[i]
	return readInfo(d.f, TensorInfo{Name: e.Key, DType: datTypes[e.ElemType], Shape: e.Shape, File: d.Path, Offset: e.Offset, Size: e.Size})
}

// ReadEntry reads entry i's payload bytes.
func (d *Dat) ReadEntry(i int) ([]byte, error) {
	if i < 0 || i >= len(d.Entries) {
		return nil, fmt.Errorf("%s: no entry %d", d.Path, i)
	}
	t, err := d.Read(d.Entries[i].Key)
	if err != nil {
		return nil, err
	}
	return t.Data, nil
}

// Close closes the file.
func (d *Dat) Close() error {
	if d.closer == nil {
		return nil
	}
	return d.closer.Close()
}

// WriteDat writes entries in order, atomically, with minimal ULEB128 and each entry's own
// elemType; payload(i) supplies entry i's bytes, which must match its type and shape.
func WriteDat(path string, entries []DatEntry, payload func(i int) ([]byte, error)) error {
	return writeAtomic(path, func(w io.Writer) error { return writeDat(w, path, entries, payload) })
}

func writeDat(w io.Writer, path string, entries []DatEntry, payload func(i int) ([]byte, error)) error {
	{
		var b []byte
		b = binary.AppendUvarint(b[:0], uint64(len(entries)))
		if _, err := w.Write(b); err != nil {
			return err
		}
		for i, e := range entries {
			dt, ok := datTypes[e.ElemType]
			if !ok {
				return fmt.Errorf("write %s: entry %q: unknown elemType %d", path, e.Key, e.ElemType)
			}
			data, err := payload(i)
			if err != nil {
				return fmt.Errorf("write %s: entry %q: %w", path, e.Key, err)
			}
			if want := tensor.Numel(e.Shape) * dt.Size(); len(data) != want {
				return fmt.Errorf("write %s: entry %q: %v%v needs %d bytes, got %d", path, e.Key, dt, e.Shape, want, len(data))
			}
			b = binary.AppendUvarint(b[:0], uint64(len(e.Key)))
			b = append(b, e.Key...)
			b = binary.AppendUvarint(b, uint64(e.ElemType))
			b = binary.AppendUvarint(b, uint64(len(e.Shape)))
			for _, s := range e.Shape {
				b = binary.AppendUvarint(b, uint64(s))
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
		}
		return nil
	}
}

// CheckFinite returns an error naming the tensor and the first NaN or Inf element of a float
// tensor (F32/F16/BF16/F64); other dtypes pass.
func CheckFinite(t *tensor.Host) error {
	if !t.DType.IsFloat() {
		return nil
	}
	v, err := t.Float32s(nil)
	if err != nil {
		return err
	}
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			idx := make([]int, len(t.Shape))
			rem := i
			for d := len(t.Shape) - 1; d >= 0; d-- {
				if t.Shape[d] > 0 {
					idx[d] = rem % t.Shape[d]
					rem /= t.Shape[d]
				}
			}
			return fmt.Errorf("tensor %q: element %d %v is %v", t.Name, i, idx, x)
		}
	}
	return nil
}
