//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/cpu"
)

// TestGEMMHiLo: 2..8 rows times a vocabulary-sized bf16 weight go through cuBLASLt with x split
// into bf16 hi and lo parts (one product, gemm_hilo.go) and match the CPU's float32 product to
// the split's 2^-17 (the bound is float32 sums' plus that), and the GEMV they replace; one row
// and a small weight keep the GEMV.
func TestGEMMHiLo(t *testing.T) {
	g := openGEMM(t)
	c := cpu.New()
	const K, N = 320, gemmHiLoMinN + 48
	cw, gw := weights(t, c, g, hostWeight(t, kindBF16, N, K, 91))
	for _, T := range []int{1, 2, 5, 8} {
		cx, gx := pair(t, c, g, T, K, randn(T*K, uint64(900+T), 1))
		co, _ := pair(t, c, g, T, N, nil)
		if err := c.MatMul(co, cx, cw); err != nil {
			t.Fatal(err)
		}
		for _, off := range []bool{false, true} {
			name := fmt.Sprintf("lm_head-like T=%d K=%d N=%d hilo off=%v", T, K, N, off)
			_, gO := pair(t, c, g, T, N, nil)
			var calls0, calls1 int64
			err := g.do(func() error {
				old := gemmHiLoOff
				gemmHiLoOff = off
				defer func() { gemmHiLoOff = old }()
				calls0 = g.gemm.calls
				err := g.matmul(gO.(*Tensor), gx.(*Tensor), gw.(*Weight))
				calls1 = g.gemm.calls
				return err
			})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if want := !off && T >= 2; (calls1 > calls0) != want {
				t.Errorf("%s: cuBLASLt products %d → %d (split product expected: %v)", name, calls0, calls1, want)
			}
			compare(t, name, c, g, co, gO, 3e-5)
		}
	}
}
