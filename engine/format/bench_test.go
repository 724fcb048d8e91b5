package format

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

// benchDir holds files shared by benchmark runs; TestMain removes it.
var (
	benchDir     string
	benchOnce    sync.Once
	benchFile    string
	benchBytes   int64
	benchTensors int
	benchErr     error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// qwen3Layer lists the tensors of one Qwen3-4B decoder layer (hidden 2560, 32 query and 8
// key/value heads of 128, intermediate 9728).
func qwen3Layer(i int) []TensorInfo {
	p := fmt.Sprintf("model.layers.%d.", i)
	mk := func(name string, shape ...int) TensorInfo {
		return TensorInfo{Name: p + name, DType: tensor.BF16, Shape: shape}
	}
	return []TensorInfo{
		mk("input_layernorm.weight", 2560),
		mk("self_attn.q_proj.weight", 4096, 2560),
		mk("self_attn.k_proj.weight", 1024, 2560),
		mk("self_attn.v_proj.weight", 1024, 2560),
		mk("self_attn.o_proj.weight", 2560, 4096),
		mk("self_attn.q_norm.weight", 128),
		mk("self_attn.k_norm.weight", 128),
		mk("post_attention_layernorm.weight", 2560),
		mk("mlp.gate_proj.weight", 9728, 2560),
		mk("mlp.up_proj.weight", 9728, 2560),
		mk("mlp.down_proj.weight", 2560, 9728),
	}
}

// benchSetup writes a ~1 GB BF16 safetensors file of Qwen3-4B layers once, holding only one
// tensor's worth of data in memory while writing.
func benchSetup() {
	benchDir, benchErr = os.MkdirTemp("", "format-bench")
	if benchErr != nil {
		return
	}
	var infos []TensorInfo
	for i := 0; benchBytes < 1<<30; i++ {
		for _, ti := range qwen3Layer(i) {
			infos = append(infos, ti)
			benchBytes += int64(tensor.Numel(ti.Shape) * 2)
		}
	}
	benchTensors = len(infos)
	buf := make([]byte, 9728*2560*2)
	for i := range buf {
		buf[i] = byte(i*131 + i>>9)
	}
	benchFile = filepath.Join(benchDir, "model.safetensors")
	benchErr = WriteSafetensorsFrom(benchFile, infos, func(i int) (*tensor.Host, error) {
		ti := infos[i]
		return &tensor.Host{Name: ti.Name, DType: ti.DType, Shape: ti.Shape, Data: buf[:tensor.Numel(ti.Shape)*2]}, nil
	}, map[string]string{"format": "pt"})
}

// BenchmarkLoad1GB measures Stream throughput over a 1 GB BF16 checkpoint shaped like Qwen3-4B
// layers (open, parse, read every tensor once). The file is written once per test binary and
// is likely in the page cache, so this measures the reader rather than the disk.
func BenchmarkLoad1GB(b *testing.B) {
	if testing.Short() {
		b.Skip("writes a 1 GB file")
	}
	benchOnce.Do(benchSetup)
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	b.SetBytes(benchBytes)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src, err := Open(benchFile)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		var sum byte
		err = Stream(src, func(h *tensor.Host) error {
			n++
			sum += h.Data[len(h.Data)-1]
			return nil
		}, nil)
		src.Close()
		if err != nil {
			b.Fatal(err)
		}
		if n != benchTensors {
			b.Fatalf("streamed %d tensors, want %d", n, benchTensors)
		}
	}
	b.ReportMetric(float64(benchTensors), "tensors/op")
}
