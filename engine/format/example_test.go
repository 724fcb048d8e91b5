package format_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/tensor"
)

// Write a checkpoint, open it lazily and stream it tensor by tensor with progress.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)

	emb, _ := tensor.FromFloat32s("model.embed_tokens.weight", tensor.BF16, []int{4, 2}, []float32{1, 2, 3, 4, 5, 6, 7, 8})
	norm, _ := tensor.FromFloat32s("model.norm.weight", tensor.F32, []int{2}, []float32{1, 1})
	if err := format.WriteSharded(dir, []*tensor.Host{emb, norm}, 16, map[string]string{"format": "pt"}); err != nil {
		log.Fatal(err)
	}

	src, err := format.Open(dir) // finds model.safetensors.index.json
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	for _, ti := range src.Tensors() {
		fmt.Printf("%s %v%v in %s\n", ti.Name, ti.DType, ti.Shape, filepath.Base(ti.File))
	}
	err = format.Stream(src, func(t *tensor.Host) error {
		if err := format.CheckFinite(t); err != nil {
			return err
		}
		v, _ := t.Float32s(nil)
		fmt.Println(t.Name, v)
		return nil
	}, func(done, total int64) { fmt.Printf("%d/%d bytes\n", done, total) })
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// model.embed_tokens.weight BF16[4 2] in model-00001-of-00002.safetensors
	// model.norm.weight F32[2] in model-00002-of-00002.safetensors
	// model.embed_tokens.weight [1 2 3 4 5 6 7 8]
	// 16/24 bytes
	// model.norm.weight [1 1]
	// 24/24 bytes
}

// Rewrite a seed .dat: the same entries, order and elemType codes, with one payload changed.
func ExampleWriteDat() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "seed.dat")
	entries := []format.DatEntry{
		{Key: "lm_head.qdata", ElemType: 0, Shape: []int{1, 8}},   // uint8 packed E2M1 pairs
		{Key: "lm_head.scale", ElemType: 101, Shape: []int{1, 1}}, // e4m3 block scale
		{Key: "model.norm.weight", ElemType: 5, Shape: []int{2}},  // float16
	}
	payloads := [][]byte{make([]byte, 8), {0x38}, {0x00, 0x3c, 0x00, 0x3c}}
	if err := format.WriteDat(in, entries, func(i int) ([]byte, error) { return payloads[i], nil }); err != nil {
		log.Fatal(err)
	}

	d, err := format.OpenDat(in)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	for _, e := range d.Entries {
		dt, _ := format.DatDType(e.ElemType)
		fmt.Printf("%s elemType %d (%v) %v at offset %d\n", e.Key, e.ElemType, dt, e.Shape, e.Offset)
	}
	out := filepath.Join(dir, "trained.dat")
	norm := d.Index("model.norm.weight")
	err = format.WriteDat(out, d.Entries, func(i int) ([]byte, error) {
		if i == norm {
			return []byte{0x00, 0x40, 0x00, 0x40}, nil // trained norm: 2.0, 2.0
		}
		return d.ReadEntry(i)
	})
	if err != nil {
		log.Fatal(err)
	}
	a, _ := os.Stat(in)
	b, _ := os.Stat(out)
	fmt.Println(a.Size() == b.Size())
	// Output:
	// lm_head.qdata elemType 0 (U8) [1 8] at offset 19
	// lm_head.scale elemType 101 (F8_E4M3) [1 1] at offset 45
	// model.norm.weight elemType 5 (F16) [2] at offset 67
	// true
}

// Errors name the file, the tensor and the byte offset.
func ExampleOpenDat_error() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "bad.dat")
	os.WriteFile(p, []byte{1, 1, 'k', 99, 0}, 0o644) // elemType 99 does not exist
	_, err := format.OpenDat(p)
	fmt.Println(err.(*format.Error).Tensor, err.(*format.Error).Offset, err.(*format.Error).Msg)
	// Output:
	// k 3 unknown elemType 99 (known: 0-7 11 15 100 101)
}
