package embedded

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Name is what engine.Load accepts for the embedded model.
const Name = "qwengo-mini"

// ErrNotEmbedded is returned by Dir in builds without the model (tag qwengo_noembed).
var ErrNotEmbedded = errors.New("embedded: this binary was built without the embedded model (tag qwengo_noembed)")

var (
	once   sync.Once
	dir    string
	dirErr error
)

// Dir returns a directory holding the embedded model's files (config.json, model.safetensors,
// hf_quant_config.json, MODEL_CARD.md, loss_curve.csv), writing them on first use. The write
// goes to a temporary directory beside the target, renamed into place, so a crash or a
// concurrent process never leaves a partial model; an existing directory is checked against the
// weights' hash and rewritten when it does not match.
func Dir() (string, error) {
	once.Do(func() { dir, dirErr = materialise(cacheRoot()) })
	return dir, dirErr
}

// cacheRoot is $QWENGO_CACHE/models, else <user cache dir>/qwengo/models.
func cacheRoot() string {
	if c := os.Getenv("QWENGO_CACHE"); c != "" {
		return filepath.Join(c, "models")
	}
	if c, err := os.UserCacheDir(); err == nil {
		return filepath.Join(c, "qwengo", "models")
	}
	return filepath.Join(os.TempDir(), "qwengo", "models")
}

func materialise(root string) (string, error) {
	src, err := modelFS()
	if err != nil {
		return "", err
	}
	sum, err := hashFile(src, "model.safetensors")
	if err != nil {
		return "", fmt.Errorf("embedded: %w", err)
	}
	target := filepath.Join(root, Name+"-"+sum[:12])
	if ok, _ := matches(target, sum); ok {
		return target, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("embedded: %w", err)
	}
	tmp, err := os.MkdirTemp(root, "."+Name+"-*")
	if err != nil {
		return "", fmt.Errorf("embedded: %w", err)
	}
	defer os.RemoveAll(tmp) // after a successful rename this is already gone
	entries, err := fs.ReadDir(src, ".")
	if err != nil {
		return "", fmt.Errorf("embedded: %w", err)
	}
	for _, e := range entries {
		if err := copyOut(src, e.Name(), filepath.Join(tmp, e.Name())); err != nil {
			return "", fmt.Errorf("embedded: writing %s: %w", e.Name(), err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("embedded: %w", err)
	}
	if err := os.Rename(tmp, target); err != nil {
		// Another process may have finished first: accept its copy when it is complete.
		if ok, _ := matches(target, sum); ok {
			return target, nil
		}
		os.RemoveAll(target)
		if err := os.Rename(tmp, target); err != nil {
			return "", fmt.Errorf("embedded: %w", err)
		}
	}
	return target, nil
}

func hashFile(fsys fs.FS, name string) (string, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// matches reports whether dir holds the model whose weights hash to sum.
func matches(dir, sum string) (bool, error) {
	got, err := hashFile(os.DirFS(dir), "model.safetensors")
	if err != nil {
		return false, err
	}
	if got != sum {
		return false, nil
	}
	_, err = os.Stat(filepath.Join(dir, "config.json"))
	return err == nil, err
}

func copyOut(fsys fs.FS, name, dst string) error {
	in, err := fsys.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
