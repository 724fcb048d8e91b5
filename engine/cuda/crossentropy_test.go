//go:build cuda

package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// TestFiguresCrossEntropy times cross_entropy_f32 on chunks of logits of Qwen3's vocabulary, in
// place as engine/devtrain calls it: 441 rows (a 256 MiB chunk), 1,728 (devtrain's automatic
// ~1 GiB chunk) and 4,096. The kernel alone (targets uploaded once) moves 3 × R × V × 4 bytes
// (two reads of the logits, one write of the gradient); the op adds the targets' upload and the
// losses' download, and waits. After the first repetition the kernel reads the gradient it
// wrote: its cost does not depend on the values.
func TestFiguresCrossEntropy(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	const V = 151936
	// 64 rows of random logits (std 3), repeated down the tensor.
	const blockRows = 64
	block := randn(blockRows*V, 7, 3)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, R := range []int{441, 1728, 4096} {
		xt, err := g.Alloc(backend.Activations, R, V)
		if err != nil {
			t.Fatal(err)
		}
		for r0 := 0; r0 < R; r0 += blockRows {
			n := min(blockRows, R-r0)
			v, err := g.RowView(xt, r0, n)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Upload(v, block[:n*V]); err != nil {
				t.Fatal(err)
			}
		}
		targets := make([]int, R)
		tg := make([]int32, R)
		for r := range targets {
			targets[r] = rng.IntN(V)
			tg[r] = int32(targets[r])
		}
		x := xt.(*Tensor)
		var losses, tptr devPtr
		if err := g.do(func() error {
			var err error
			if losses, err = g.scratch(int64(8*R), "cross-entropy figures"); err != nil {
				return err
			}
			tptr, err = g.uploadInts(tg, "cross-entropy figures")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		bytes := 3 * float64(R) * V * 4
		for _, ls := range []float32{0, 0.1} {
			ms, err := timeOnDevice(g, 10, func() error { return g.crossEntropyLaunch(x, x, losses, tptr, ls, 1) })
			if err != nil {
				t.Fatal(err)
			}
			t.Log(figure{fmt.Sprintf("cross-entropy kernel [%d, %d] ls %g", R, V, ls), bytes, 0, ms})
		}
		ms, err := timeOnDevice(g, 10, func() error {
			_, _, err := g.CrossEntropy(x, x, targets, 0, 1)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(figure{fmt.Sprintf("cross-entropy op [%d, %d] (upload, wait)", R, V), bytes, 0, ms})
		g.Free(xt)
	}
}
