package qwengo

import (
	"bytes"
	"encoding/json"
	"image/png"
	"testing"
)

func TestTemplate(t *testing.T) {
	ks, err := Template()
	if err != nil {
		t.Fatal(err)
	}
	if ks.DisplayName != "Go (qwengo)" || ks.Language != "go" || ks.InterruptMode != "message" {
		t.Errorf("template %+v", ks)
	}
	want := []string{"qwenkernel", "--connection-file", "{connection_file}"}
	if len(ks.Argv) != 3 || ks.Argv[0] != want[0] || ks.Argv[1] != want[1] || ks.Argv[2] != want[2] {
		t.Errorf("argv %q", ks.Argv)
	}
}

func TestSpec(t *testing.T) {
	b, err := Spec("/opt/q/qwenkernel")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	argv := m["argv"].([]any)
	if argv[0] != "/opt/q/qwenkernel" || argv[2] != "{connection_file}" {
		t.Errorf("argv %v", argv)
	}
	if m["metadata"].(map[string]any)["debugger"] != false {
		t.Errorf("metadata %v", m["metadata"])
	}
	// The template itself is not modified.
	ks, _ := Template()
	if ks.Argv[0] != "qwenkernel" {
		t.Error("Spec changed the template")
	}
}

func TestLogos(t *testing.T) {
	for _, l := range []struct {
		data []byte
		size int
	}{{Logo32, 32}, {Logo64, 64}} {
		img, err := png.Decode(bytes.NewReader(l.data))
		if err != nil {
			t.Fatal(err)
		}
		if b := img.Bounds(); b.Dx() != l.size || b.Dy() != l.size {
			t.Errorf("logo %d is %v", l.size, b)
		}
	}
}
