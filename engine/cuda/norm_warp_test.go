//go:build cuda

package cuda

import (
	"fmt"
	"testing"
)

// TestNormWarpMatchesBlock: the warp-per-group norm kernels (norm_warp.cu) give the block
// kernels' results bit for bit for every group size they take (n = 32·k ≤ 256), group counts
// that leave a block partly empty, and the backward's accumulate and in-place forms.
func TestNormWarpMatchesBlock(t *testing.T) {
	g := openGPU(t)
	for _, n := range []int{32, 64, 96, 128, 256} {
		if !normWarpGroups(n) {
			t.Fatalf("n=%d does not take the warp kernels", n)
		}
		for _, groups := range []int{1, 7, 9, 1000} {
			name := fmt.Sprintf("n=%d groups=%d", n, groups)
			x, dy, w := randTensor(t, g, groups, n), randTensor(t, g, groups, n), randTensor(t, g, 1, n)
			// A wide spread of magnitudes: the sums must agree to the bit, not approximately.
			hx := randn(groups*n, uint64(n+groups), 1)
			for i := range hx {
				hx[i] *= float32(int(1) << (i % 13))
			}
			if err := g.Upload(x, hx); err != nil {
				t.Fatal(err)
			}
			outs := make([]*Tensor, 6)
			for i := range outs {
				outs[i] = randTensor(t, g, groups, n)
			}
			threads := normThreads(n)
			blocks := (groups + 7) / 8
			const eps = 1e-6
			err := g.do(func() error {
				return firstErr(
					launch(g.fns["rmsnorm_f32"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
						ptrArg(outs[0].ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(n), f32Arg(eps)),
					launch(g.fns["rmsnorm_warp_f32"], [3]int{blocks, 1, 1}, [3]int{256, 1, 1}, 0,
						ptrArg(outs[1].ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(groups), intArg(n), f32Arg(eps)),
					launch(g.fns["rmsnorm_rstd"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
						ptrArg(outs[2].ptr), ptrArg(x.ptr), intArg(n), f32Arg(eps)),
					launch(g.fns["rmsnorm_rstd_warp"], [3]int{blocks, 1, 1}, [3]int{256, 1, 1}, 0,
						ptrArg(outs[3].ptr), ptrArg(x.ptr), intArg(groups), intArg(n), f32Arg(eps)),
				)
			})
			if err != nil {
				t.Fatal(err)
			}
			sameBits(t, name+" rmsnorm", download(t, g, outs[1]), download(t, g, outs[0]))
			sameBits(t, name+" rstd", download(t, g, outs[3])[:groups], download(t, g, outs[2])[:groups])
			for _, acc := range []int{0, 1} {
				start := randn(groups*n, 99, 1)
				for _, o := range outs[4:] {
					if err := g.Upload(o, start); err != nil {
						t.Fatal(err)
					}
				}
				err := g.do(func() error {
					return firstErr(
						launch(g.fns["rmsnorm_bwd_dx"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
							ptrArg(outs[4].ptr), ptrArg(dy.ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(n), f32Arg(eps), intArg(acc)),
						launch(g.fns["rmsnorm_bwd_dx_warp"], [3]int{blocks, 1, 1}, [3]int{256, 1, 1}, 0,
							ptrArg(outs[5].ptr), ptrArg(dy.ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(groups), intArg(n), f32Arg(eps), intArg(acc)))
				})
				if err != nil {
					t.Fatal(err)
				}
				sameBits(t, fmt.Sprintf("%s rmsnorm backward dx (accumulate %d)", name, acc), download(t, g, outs[5]), download(t, g, outs[4]))
			}
			// In place (dx = dy, not accumulating), as RMSNormBackward allows.
			d1, d2 := randTensor(t, g, groups, n), randTensor(t, g, groups, n)
			hd := randn(groups*n, 5, 1)
			if err := firstErr(g.Upload(d1, hd), g.Upload(d2, hd)); err != nil {
				t.Fatal(err)
			}
			err = g.do(func() error {
				return firstErr(
					launch(g.fns["rmsnorm_bwd_dx"], [3]int{groups, 1, 1}, [3]int{threads, 1, 1}, 0,
						ptrArg(d1.ptr), ptrArg(d1.ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(n), f32Arg(eps), intArg(0)),
					launch(g.fns["rmsnorm_bwd_dx_warp"], [3]int{blocks, 1, 1}, [3]int{256, 1, 1}, 0,
						ptrArg(d2.ptr), ptrArg(d2.ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(groups), intArg(n), f32Arg(eps), intArg(0)))
			})
			if err != nil {
				t.Fatal(err)
			}
			sameBits(t, name+" rmsnorm backward dx in place", download(t, g, d2), download(t, g, d1))
		}
	}
}
