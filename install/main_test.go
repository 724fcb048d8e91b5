package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestSpecDir(t *testing.T) {
	tests := []struct {
		name   string
		prefix string
		env    map[string]string
		goos   string
		want   string
		err    string
	}{
		{"linux default", "", map[string]string{"HOME": "/home/u"}, "linux", "/home/u/.local/share/jupyter/kernels/qwengo", ""},
		{"xdg", "", map[string]string{"HOME": "/home/u", "XDG_DATA_HOME": "/x"}, "linux", "/x/jupyter/kernels/qwengo", ""},
		{"JUPYTER_DATA_DIR wins", "", map[string]string{"HOME": "/home/u", "XDG_DATA_HOME": "/x", "JUPYTER_DATA_DIR": "/jd"}, "linux", "/jd/kernels/qwengo", ""},
		{"prefix wins", "/opt/p", map[string]string{"JUPYTER_DATA_DIR": "/jd"}, "linux", "/opt/p/share/jupyter/kernels/qwengo", ""},
		{"darwin", "", map[string]string{"HOME": "/Users/u"}, "darwin", "/Users/u/Library/Jupyter/kernels/qwengo", ""},
		{"no home", "", map[string]string{}, "linux", "", "HOME is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := specDir(tt.prefix, env(tt.env), tt.goos)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("specDir = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// fakeKernel is a shell script standing in for qwenkernel (install runs
// `binary --version`).
func fakeKernel(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "qwenkernel")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho qwenkernel test\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInstallUninstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "share", "jupyter", "kernels", "qwengo")
	var out bytes.Buffer
	if err := install(dir, options{binary: fakeKernel(t)}, &out); err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	argv := spec["argv"].([]any)
	bin := filepath.Join(dir, "qwenkernel")
	if argv[0] != bin || argv[1] != "--connection-file" || argv[2] != "{connection_file}" {
		t.Errorf("argv %v", argv)
	}
	if spec["display_name"] != "Go (qwengo)" || spec["language"] != "go" || spec["interrupt_mode"] != "message" {
		t.Errorf("spec %v", spec)
	}
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("binary %v %v", st, err)
	}
	for _, f := range []string{"logo-32x32.png", "logo-64x64.png"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// No temporary files are left behind; reinstalling works.
	if err := install(dir, options{binary: fakeKernel(t)}, &out); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files %v", names)
	}
	if err := uninstall(dir, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir still there: %v", err)
	}
	out.Reset()
	if err := uninstall(dir, &out); err != nil || !strings.Contains(out.String(), "not installed") {
		t.Errorf("second uninstall: %v %q", err, out.String())
	}
}

func TestInstallRejectsBrokenBinary(t *testing.T) {
	p := filepath.Join(t.TempDir(), "qwenkernel")
	os.WriteFile(p, []byte("#!/bin/sh\nexit 3\n"), 0o755)
	dir := filepath.Join(t.TempDir(), "k")
	err := install(dir, options{binary: p}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--version") {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "kernel.json")); !os.IsNotExist(err) {
		t.Error("kernel.json written for a broken binary")
	}
	if err := install(dir, options{binary: filepath.Join(t.TempDir(), "missing")}, &bytes.Buffer{}); err == nil {
		t.Error("missing --binary accepted")
	}
}
