package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// BenchmarkMatMul measures x[T, K]·Wᵀ for a Qwen3-0.6B MLP shape (K 1024, N 3072) with f32,
// bf16 and NVFP4 weights, one token (decode) and 64 (prefill); reports GFLOP/s.
func BenchmarkMatMul(b *testing.B) {
	const K, N = 1024, 3072
	r := rand.New(rand.NewPCG(1, 2))
	w := randVec(r, N*K, 0.05)
	h, _ := tensor.FromFloat32s("w", tensor.F32, []int{N, K}, w)
	q, _ := nvfp4.QuantizeModelOpt(w, N, K)
	for _, T := range []int{1, 64} {
		for _, kind := range []string{"f32", "bf16", "nvfp4"} {
			b.Run(fmt.Sprintf("T%d/%s", T, kind), func(b *testing.B) {
				be := New()
				hw := backend.HostWeight{Name: "w", Dense: h, Keep: kind}
				if kind == "nvfp4" {
					hw = backend.HostWeight{Name: "w", NVFP4: q}
				}
				wt, err := be.UploadWeight(hw)
				if err != nil {
					b.Fatal(err)
				}
				x, _ := be.Alloc(backend.Activations, T, K)
				be.Upload(x, randVec(r, T*K, 1))
				out, _ := be.Alloc(backend.Activations, T, N)
				for b.Loop() {
					if err := be.MatMul(out, x, wt); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(2*T*K*N)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
