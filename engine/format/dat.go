package format

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strconv"
	"unicode/utf8"

	"github.com/qwengo/qwengo/engine/tensor"
)

// datCodes lists the seed `.dat` elemType codes: TorchSharp's ScalarType numbers plus the
// seed's own 100 (float4_e2m1fn_x2) and 101 (float8_e4m3fn).
var datCodes = []struct {
	code  int
	dtype tensor.DType
}{
	{0, tensor.U8}, {1, tensor.I8}, {2, tensor.I16}, {3, tensor.I32}, {4, tensor.I64},
	{5, tensor.F16}, {6, tensor.F32}, {7, tensor.F64}, {11, tensor.Bool}, {15, tensor.BF16},
	{100, tensor.F4E2M1x2}, {101, tensor.F8E4M3},
}

// DatDType returns the DType of a `.dat` elemType code.
func DatDType(code int) (tensor.DType, bool) {
	for _, c := range datCodes {
		if c.code == code {
			return c.dtype, true
		}
	}
	return tensor.Invalid, false
}

// DatElemType returns the `.dat` elemType code of a DType (the inverse of DatDType). Note that
// the seed stores NVFP4 qdata as code 0 (uint8), not 100: to rewrite a file keep the codes of
// its entries rather than deriving them from dtypes.
func DatElemType(d tensor.DType) (int, bool) {
	for _, c := range datCodes {
		if c.dtype == d {
			return c.code, true
		}
	}
	return 0, false
}

const (
	maxDatKey  = 1 << 16 // longest key accepted (bytes)
	maxDatDims = 64      // most dimensions accepted
	datWindow  = 4 << 10 // bytes the index parser reads at a time
)

// DatEntry is one entry of a seed `.dat` file.
type DatEntry struct {
	Key      string
	ElemType int // the code as stored (see DatDType); writers keep it
	Shape    []int
	Offset   int64 // absolute payload offset in the file (ignored by WriteDat)
	Size     int64 // payload bytes (ignored by WriteDat)
}

// Dat is an opened seed `.dat` file (TorchSharp state-dict layout, reference/seed-dat.md):
//
//	file  := ULEB128 count, entry * count
//	entry := ULEB128 keyLen, key, ULEB128 elemType, ULEB128 ndim, ULEB128 dim * ndim, payload
//
// with payloads row-major little-endian and no padding, magic or footer. Entries keep their
// file order and elemType codes. Dat implements Source, reporting each elemType as a DType
// (the NVFP4 qdata the seed stores with code 0 reads as U8).
type Dat struct {
	Path    string
	Entries []DatEntry
	r       io.ReaderAt
	c       io.Closer
	byName  map[string]int
}

// OpenDat parses the index of a seed `.dat` (keys, codes, shapes, payload offsets), reading
// no payload. The whole file must be well formed: minimal ULEB128 numbers, known elemTypes,
// unique non-empty UTF-8 keys, payloads within the file and no bytes after the last one.
func OpenDat(path string) (*Dat, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, ioErr("open", path, "", -1, errors.Unwrap(err), "cannot open")
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, ioErr("open", path, "", -1, err, "stat")
	}
	d, err := parseDat(path, f, fi.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	d.c = f
	return d, nil
}

// datScanner reads a .dat index through a window, so parsing costs a few ReadAt calls per
// window rather than one per byte; payloads are skipped without reading them.
type datScanner struct {
	path   string
	r      io.ReaderAt
	size   int64
	off    int64
	entry  int // entry being parsed, for messages
	buf    []byte
	win    []byte
	winOff int64
}

func (s *datScanner) truncated(key, what string) error {
	if key == "" {
		return newErr("open", s.path, "", s.off, "truncated: the file (%d bytes) ends inside %s of entry %d", s.size, what, s.entry)
	}
	return newErr("open", s.path, key, s.off, "truncated: the file (%d bytes) ends inside %s", s.size, what)
}

// fill makes the window cover s.off.
func (s *datScanner) fill() error {
	if s.off >= s.winOff && s.off < s.winOff+int64(len(s.win)) {
		return nil
	}
	if s.buf == nil {
		s.buf = make([]byte, min(datWindow, s.size))
	}
	s.win = s.buf[:min(int64(len(s.buf)), s.size-s.off)]
	n, err := s.r.ReadAt(s.win, s.off)
	if n < len(s.win) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		s.win = nil
		return ioErr("open", s.path, "", s.off+int64(n), err, "reading the index")
	}
	s.winOff = s.off
	return nil
}

func (s *datScanner) readByte(key, what string) (byte, error) {
	if s.off >= s.size {
		return 0, s.truncated(key, what)
	}
	if err := s.fill(); err != nil {
		return 0, err
	}
	b := s.win[s.off-s.winOff]
	s.off++
	return b, nil
}

// read returns the next n bytes (n already checked against the file size).
func (s *datScanner) read(n int) ([]byte, error) {
	out := make([]byte, n)
	for i := 0; i < n; {
		if err := s.fill(); err != nil {
			return nil, err
		}
		c := copy(out[i:], s.win[s.off-s.winOff:])
		i += c
		s.off += int64(c)
	}
	return out, nil
}

// uleb reads a minimal unsigned LEB128 number of at most 63 bits.
func (s *datScanner) uleb(key, what string) (uint64, error) {
	start := s.off
	var v uint64
	for i := 0; ; i++ {
		b, err := s.readByte(key, what)
		if err != nil {
			return 0, err
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			if b == 0 && i > 0 {
				return 0, s.bad(key, start, "%s is a non-minimal ULEB128 (ends in a redundant zero group)", what)
			}
			return v, nil
		}
		if i == 8 {
			return 0, s.bad(key, start, "%s is an overlong ULEB128 (more than 63 bits)", what)
		}
	}
}

func (s *datScanner) bad(key string, off int64, format string, args ...any) error {
	e := newErr("open", s.path, key, off, format, args...)
	if key == "" {
		e.Msg = "entry " + strconv.Itoa(s.entry) + ": " + e.Msg
	}
	return e
}

// parseDat parses the index of a .dat of size bytes read through r.
func parseDat(path string, r io.ReaderAt, size int64) (*Dat, error) {
	s := &datScanner{path: path, r: r, size: size}
	count, err := s.uleb("", "the entry count")
	if err != nil {
		var fe *Error
		if errors.As(err, &fe) && size == 0 {
			fe.Msg = "truncated: empty file (a .dat starts with its entry count)"
		}
		return nil, err
	}
	// An entry takes at least 4 bytes: key length, one key byte, elemType, ndim.
	if rest := uint64(size - s.off); count > rest/4 {
		return nil, newErr("open", path, "", 0, "entry count %d cannot fit in the %d bytes that follow (an entry takes at least 4): truncated or not a .dat", count, rest)
	}
	d := &Dat{Path: path, r: r, byName: map[string]int{}}
	for i := 0; uint64(i) < count; i++ {
		s.entry = i
		at := s.off
		klen, err := s.uleb("", "the key length")
		if err != nil {
			return nil, err
		}
		switch rest := uint64(size - s.off); {
		case klen == 0:
			return nil, s.bad("", at, "empty key")
		case klen > maxDatKey:
			return nil, s.bad("", at, "key length %d exceeds %d bytes", klen, maxDatKey)
		case klen > rest:
			return nil, s.bad("", at, "truncated: key of %d bytes runs past the end of the file (%d bytes left)", klen, rest)
		}
		kb, err := s.read(int(klen))
		if err != nil {
			return nil, err
		}
		key := string(kb)
		if !utf8.Valid(kb) {
			return nil, s.bad("", at, "key %q is not valid UTF-8", key)
		}
		if j, dup := d.byName[key]; dup {
			return nil, newErr("open", path, key, at, "key appears twice (entries %d and %d)", j, i)
		}
		etAt := s.off
		et, err := s.uleb(key, "the elemType")
		if err != nil {
			return nil, err
		}
		dt, ok := DatDType(int(min(et, 1<<30)))
		if !ok {
			return nil, newErr("open", path, key, etAt, "unknown elemType %d (known: 0-7 11 15 100 101)", et)
		}
		ndimAt := s.off
		ndim, err := s.uleb(key, "ndim")
		if err != nil {
			return nil, err
		}
		if ndim > maxDatDims {
			return nil, newErr("open", path, key, ndimAt, "ndim %d exceeds %d", ndim, maxDatDims)
		}
		shape := make([]int, ndim)
		nbytes := uint64(dt.Size())
		for j := range shape {
			dimAt := s.off
			dim, err := s.uleb(key, "a dimension")
			if err != nil {
				return nil, err
			}
			if dim > 0 && nbytes > (1<<62)/dim {
				return nil, newErr("open", path, key, dimAt, "shape overflows at dimension %d (%d)", j, dim)
			}
			nbytes *= dim
			shape[j] = int(dim)
		}
		if rest := uint64(size - s.off); nbytes > rest {
			return nil, newErr("open", path, key, s.off, "truncated: payload of %d bytes (%v%v) runs past the end of the file (%d bytes left)", nbytes, dt, shape, rest)
		}
		d.byName[key] = i
		d.Entries = append(d.Entries, DatEntry{Key: key, ElemType: int(et), Shape: shape, Offset: s.off, Size: int64(nbytes)})
		s.off += int64(nbytes)
	}
	if s.off != size {
		return nil, newErr("open", path, "", s.off, "%d bytes after the last of %d entries", size-s.off, count)
	}
	return d, nil
}

func (d *Dat) info(i int) TensorInfo {
	e := d.Entries[i]
	dt, _ := DatDType(e.ElemType)
	return TensorInfo{Name: e.Key, DType: dt, Shape: append([]int{}, e.Shape...), File: d.Path, Offset: e.Offset, Size: e.Size}
}

// Tensors lists the entries in file order.
func (d *Dat) Tensors() []TensorInfo {
	out := make([]TensorInfo, len(d.Entries))
	for i := range d.Entries {
		out[i] = d.info(i)
	}
	return out
}

// Index returns the position of key in Entries, or -1.
func (d *Dat) Index(key string) int {
	if i, ok := d.byName[key]; ok {
		return i
	}
	return -1
}

// Read reads one entry as a host tensor.
func (d *Dat) Read(name string) (*tensor.Host, error) {
	i, ok := d.byName[name]
	if !ok {
		return nil, newErr("read", d.Path, name, -1, "no such entry in the file")
	}
	return readTensor(d.r, d.info(i))
}

// ReadEntry reads the payload bytes of entry i.
func (d *Dat) ReadEntry(i int) ([]byte, error) {
	if i < 0 || i >= len(d.Entries) {
		return nil, newErr("read", d.Path, "", -1, "no entry %d (the file has %d)", i, len(d.Entries))
	}
	t, err := readTensor(d.r, d.info(i))
	if err != nil {
		return nil, err
	}
	return t.Data, nil
}

// Close closes the file.
func (d *Dat) Close() error {
	if d.c == nil {
		return nil
	}
	c := d.c
	d.c = nil
	return c.Close()
}

// WriteDat writes a seed `.dat` atomically: the entries in the given order, each with its own
// ElemType code (an e4m3 scale stays 101, a uint8 qdata stays 0), minimal ULEB128 numbers, and
// payload(i) as entry i's bytes, which must match its code and shape. Offset and Size of the
// entries are ignored. Entries are validated before payload is first called. Writing the
// entries and payloads of an opened Dat reproduces the file byte for byte.
func WriteDat(path string, entries []DatEntry, payload func(i int) ([]byte, error)) error {
	if err := checkDatEntries(path, entries); err != nil {
		return err
	}
	return writeAtomic(path, func(w io.Writer) error { return writeDat(w, path, entries, payload) })
}

// checkDatEntries rejects what OpenDat would reject.
func checkDatEntries(path string, entries []DatEntry) error {
	seen := map[string]int{}
	for i, e := range entries {
		if err := checkWriteName(path, e.Key, seen, i); err != nil {
			return err
		}
		if len(e.Key) > maxDatKey {
			return newErr("write", path, e.Key, -1, "key length %d exceeds %d bytes", len(e.Key), maxDatKey)
		}
		dt, ok := DatDType(e.ElemType)
		if !ok {
			return newErr("write", path, e.Key, -1, "unknown elemType %d (known: 0-7 11 15 100 101)", e.ElemType)
		}
		if len(e.Shape) > maxDatDims {
			return newErr("write", path, e.Key, -1, "ndim %d exceeds %d", len(e.Shape), maxDatDims)
		}
		if _, err := shapeBytes(e.Shape, dt.Size()); err != nil {
			return newErr("write", path, e.Key, -1, "%v", err)
		}
	}
	return nil
}

// writeDat writes validated entries to w.
func writeDat(w io.Writer, path string, entries []DatEntry, payload func(i int) ([]byte, error)) error {
	b := binary.AppendUvarint(nil, uint64(len(entries))) // Go's uvarint is minimal ULEB128
	if _, err := w.Write(b); err != nil {
		return err
	}
	for i, e := range entries {
		dt, _ := DatDType(e.ElemType)
		want, _ := shapeBytes(e.Shape, dt.Size())
		data, err := payload(i)
		if err != nil {
			return ioErr("write", path, e.Key, -1, err, "getting the payload")
		}
		if int64(len(data)) != want {
			return newErr("write", path, e.Key, -1, "%v%v (elemType %d) needs %d bytes, payload has %d", dt, e.Shape, e.ElemType, want, len(data))
		}
		b = binary.AppendUvarint(b[:0], uint64(len(e.Key)))
		b = append(b, e.Key...)
		b = binary.AppendUvarint(b, uint64(e.ElemType))
		b = binary.AppendUvarint(b, uint64(len(e.Shape)))
		for _, d := range e.Shape {
			b = binary.AppendUvarint(b, uint64(d))
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
