package format

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

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

// Source is a set of named tensors read lazily (a safetensors file, a sharded checkpoint, a
// seed .dat). Implementations in this package allow concurrent Reads.
type Source interface {
	// Tensors lists the tensors in storage order (file by file, ascending offset).
	Tensors() []TensorInfo
	// Read reads one tensor; its byte length is checked against dtype and shape.
	Read(name string) (*tensor.Host, error)
	// Close releases the files.
	Close() error
}

// Open opens a checkpoint for lazy reading. path may be:
//   - a directory holding model.safetensors.index.json (sharded), else model.safetensors, else
//     exactly one *.safetensors or *.dat file;
//   - an index .json (OpenSharded), a .safetensors file (OpenSafetensors) or a seed .dat
//     (OpenDat);
//   - any other file whose content starts like a safetensors file.
func Open(path string) (Source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, ioErr("open", path, "", -1, errors.Unwrap(err), "cannot open checkpoint")
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
		return nil, newErr("open", path, "", -1,
			"directory has no model.safetensors.index.json or model.safetensors and %d other .safetensors/.dat files %v: name the file", len(cands), baseNames(cands))
	}
	switch {
	case strings.HasSuffix(path, ".json"):
		return OpenSharded(path)
	case strings.HasSuffix(path, ".dat"):
		return OpenDat(path)
	case strings.HasSuffix(path, ".safetensors"):
		return OpenSafetensors(path)
	}
	if looksLikeSafetensors(path) {
		return OpenSafetensors(path)
	}
	return nil, newErr("open", path, "", -1, "unknown weight file type (want a directory, .safetensors, .safetensors.index.json or .dat)")
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// looksLikeSafetensors reports whether the file starts with a plausible header length
// followed by '{'.
func looksLikeSafetensors(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [9]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return false
	}
	return b[8] == '{' && b[6] == 0 && b[7] == 0
}

// Stream reads every tensor of src once, in the order of src.Tensors() (storage order: file by
// file, ascending offset), and calls fn with each. Only one tensor is held at a time, so host
// memory is bounded by the largest tensor as long as fn does not keep them. After each tensor
// progress(doneBytes, totalBytes) is called when progress is non-nil. The first error from a
// read or from fn stops the stream and is returned as it is.
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

// readTensor reads the bytes ti describes from r (its size was validated at open).
func readTensor(r io.ReaderAt, ti TensorInfo) (*tensor.Host, error) {
	if ti.Size < 0 || ti.Size != int64(tensor.Numel(ti.Shape))*int64(ti.DType.Size()) {
		return nil, newErr("read", ti.File, ti.Name, ti.Offset, "%v%v cannot occupy %d bytes", ti.DType, ti.Shape, ti.Size)
	}
	buf := make([]byte, ti.Size)
	if len(buf) > 0 {
		n, err := r.ReadAt(buf, ti.Offset)
		if n < len(buf) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, ioErr("read", ti.File, ti.Name, ti.Offset+int64(n), err,
				"got %d of %d bytes (file truncated or changed since it was opened?)", n, len(buf))
		}
	}
	return &tensor.Host{Name: ti.Name, DType: ti.DType, Shape: append([]int{}, ti.Shape...), Data: buf}, nil
}

// copyInfos returns a copy of infos whose Shape slices are not shared.
func copyInfos(infos []TensorInfo) []TensorInfo {
	out := make([]TensorInfo, len(infos))
	for i, ti := range infos {
		ti.Shape = append([]int{}, ti.Shape...)
		out[i] = ti
	}
	return out
}

// writeAtomic writes through a temporary file in path's directory, fsyncs it and renames it to
// path. On any error the temporary file is removed and path is left untouched.
func writeAtomic(path string, write func(w io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return ioErr("write", path, "", -1, err, "cannot create a temporary file")
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o644); err != nil {
		return ioErr("write", path, "", -1, err, "chmod")
	}
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err = write(bw); err != nil {
		var fe *Error
		if errors.As(err, &fe) {
			return err
		}
		return ioErr("write", path, "", -1, err, "writing %s", tmp.Name())
	}
	if err = bw.Flush(); err != nil {
		return ioErr("write", path, "", -1, err, "writing %s", tmp.Name())
	}
	if err = tmp.Sync(); err != nil {
		return ioErr("write", path, "", -1, err, "fsync %s", tmp.Name())
	}
	if err = tmp.Close(); err != nil {
		return ioErr("write", path, "", -1, err, "closing %s", tmp.Name())
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return ioErr("write", path, "", -1, err, "renaming the temporary file into place")
	}
	if d, derr := os.Open(dir); derr == nil { // make the rename durable; best effort
		d.Sync()
		d.Close()
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file in the same directory and a
// rename, so readers see the old content or the new one, never a partial file.
func WriteFileAtomic(path string, data []byte) error {
	return writeAtomic(path, func(w io.Writer) error { _, err := w.Write(data); return err })
}

// WriteAtomicFunc streams a file's content through write into a temporary file in path's
// directory, then renames it into place (WriteFileAtomic for content too large to hold in
// memory): readers see the old file or the complete new one.
func WriteAtomicFunc(path string, write func(w io.Writer) error) error {
	return writeAtomic(path, write)
}

// ReplaceDirAtomic builds a directory's new content with fill in a temporary directory beside it,
// then swaps it into place (the old content kept as dir.old until the swap has succeeded), so
// dir holds either its old content or the complete new one, never a mix.
func ReplaceDirAtomic(dir string, fill func(tmp string) error) error {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := fill(tmp); err != nil {
		return err
	}
	old := dir + ".old"
	os.RemoveAll(old)
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.Rename(old, dir)
		return err
	}
	return os.RemoveAll(old)
}

// checkWriteName validates a tensor name for writing (safetensors or .dat).
func checkWriteName(path, name string, seen map[string]int, i int) error {
	switch {
	case name == "":
		return newErr("write", path, "", -1, "tensor %d has an empty name", i)
	case !utf8.ValidString(name):
		return newErr("write", path, name, -1, "name is not valid UTF-8")
	}
	if j, dup := seen[name]; dup {
		return newErr("write", path, name, -1, "name used twice (tensors %d and %d)", j, i)
	}
	seen[name] = i
	return nil
}

// shapeBytes returns numel(shape)*elem, or an error for negative dims or overflow past 2^62.
func shapeBytes(shape []int, elem int) (int64, error) {
	n := int64(elem)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d > 0 && n > (1<<62)/int64(d) {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= int64(d)
	}
	return n, nil
}
