// Command install installs the qwengo Jupyter kernelspec ("Go (qwengo)").
//
//	go run ./install                 # user data dir (~/.local/share/jupyter/kernels/qwengo)
//	go run ./install --prefix DIR    # DIR/share/jupyter/kernels/qwengo
//	go run ./install --uninstall     # remove it again (same --prefix rules)
//
// JUPYTER_DATA_DIR, when set, replaces the user data dir (as in Jupyter
// itself); on Linux XDG_DATA_HOME is honoured too. The kernel binary is built
// with `go build` (or copied from --binary) into the kernelspec directory
// itself, a stable location that the uninstaller removes with the rest, and
// kernel.json gets its absolute path. Every file is written atomically
// (temporary file in the same directory, then rename), so a kernel that is
// running while you reinstall keeps its old binary.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/qwengo/qwengo/kernels/qwengo"
)

// kernelPackage is what --binary replaces.
const kernelPackage = "github.com/qwengo/qwengo/kernel/cmd/qwenkernel"

type options struct {
	prefix    string
	uninstall bool
	binary    string // an existing qwenkernel to copy instead of building
	tags      string // build tags (e.g. cuda)
}

func main() {
	var o options
	fs := flag.NewFlagSet("install", flag.ExitOnError)
	fs.StringVar(&o.prefix, "prefix", "", "install into `DIR`/share/jupyter/kernels instead of the user data dir")
	fs.BoolVar(&o.uninstall, "uninstall", false, "remove the kernelspec instead of installing it")
	fs.StringVar(&o.binary, "binary", "", "copy this qwenkernel `binary` instead of building one")
	fs.StringVar(&o.tags, "tags", "", "build tags for the kernel binary (e.g. cuda)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./install [--prefix DIR] [--binary FILE] [--tags TAGS] [--uninstall]\n\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "install: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	dir, err := specDir(o.prefix, os.Getenv, runtime.GOOS)
	if err == nil {
		if o.uninstall {
			err = uninstall(dir, os.Stdout)
		} else {
			err = install(dir, o, os.Stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		os.Exit(1)
	}
}

// specDir returns the kernelspec directory: PREFIX/share/jupyter/kernels/qwengo
// with a prefix, else DATA/kernels/qwengo for Jupyter's user data dir.
func specDir(prefix string, getenv func(string) string, goos string) (string, error) {
	if prefix != "" {
		p, err := filepath.Abs(prefix)
		if err != nil {
			return "", fmt.Errorf("--prefix %s: %w", prefix, err)
		}
		return filepath.Join(p, "share", "jupyter", "kernels", qwengo.Name), nil
	}
	data, err := userDataDir(getenv, goos)
	if err != nil {
		return "", err
	}
	return filepath.Join(data, "kernels", qwengo.Name), nil
}

// userDataDir mirrors jupyter_core.paths.jupyter_data_dir.
func userDataDir(getenv func(string) string, goos string) (string, error) {
	if d := getenv("JUPYTER_DATA_DIR"); d != "" {
		return filepath.Abs(d)
	}
	home := getenv("HOME")
	if goos == "windows" {
		if a := getenv("APPDATA"); a != "" {
			return filepath.Join(a, "jupyter"), nil
		}
		home = getenv("USERPROFILE")
	}
	if home == "" {
		return "", errors.New("cannot find the Jupyter data dir: HOME is not set (set JUPYTER_DATA_DIR or use --prefix)")
	}
	switch goos {
	case "darwin":
		return filepath.Join(home, "Library", "Jupyter"), nil
	case "windows":
		return filepath.Join(home, "AppData", "Roaming", "jupyter"), nil
	}
	if x := getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "jupyter"), nil
	}
	return filepath.Join(home, ".local", "share", "jupyter"), nil
}

func binaryName() string {
	if runtime.GOOS == "windows" {
		return "qwenkernel.exe"
	}
	return "qwenkernel"
}

// install writes the binary, kernel.json and the logos into dir.
func install(dir string, o options, out io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	bin := filepath.Join(dir, binaryName())
	if o.binary != "" {
		if err := copyBinary(o.binary, bin); err != nil {
			return err
		}
	} else if err := build(bin, o.tags); err != nil {
		return err
	}
	// The binary must at least start.
	if v, err := exec.Command(bin, "--version").CombinedOutput(); err != nil {
		return fmt.Errorf("%s --version: %v: %s", bin, err, strings.TrimSpace(string(v)))
	}
	spec, err := qwengo.Spec(bin)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"kernel.json", spec}, {"logo-32x32.png", qwengo.Logo32}, {"logo-64x64.png", qwengo.Logo64}} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "installed kernelspec %q (Go (qwengo)) in %s\nkernel binary: %s\n", qwengo.Name, dir, bin)
	return nil
}

// build compiles the kernel into a temporary file next to bin, then renames
// it into place.
func build(bin, tags string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := filepath.Join(filepath.Dir(bin), "."+filepath.Base(bin)+".build")
	args := []string{"build", "-o", tmp}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, kernelPackage)
	cmd := exec.Command(goTool, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install %s: %w", bin, err)
	}
	return nil
}

func copyBinary(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("--binary: %w", err)
	}
	return writeAtomic(dst, data, 0o755)
}

// writeAtomic writes data to a temporary file in name's directory and
// renames it over name.
func writeAtomic(name string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Chmod(tmp.Name(), perm); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// uninstall removes the kernelspec directory if it is a qwengo kernelspec.
func uninstall(dir string, out io.Writer) error {
	if _, err := os.Stat(filepath.Join(dir, "kernel.json")); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(out, "kernelspec %q is not installed in %s\n", qwengo.Name, dir)
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	fmt.Fprintf(out, "removed kernelspec %q from %s\n", qwengo.Name, dir)
	return nil
}
