//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// withGEMV runs f with the named NVFP4 GEMV kernel, restoring the setting.
func withGEMV(g *Backend, kernel string, f func() error) error {
	return g.do(func() error {
		old := g.gemv
		g.gemv = kernel
		defer func() { g.gemv = old }()
		return f()
	})
}

var gemvKernelNames = []string{gemvV2Name, gemvStreamV, gemvPersist, gemvTC, gemvTCB, gemvTCP, gemvAuto}

// TestGEMVNVFP4 checks every NVFP4 GEMV kernel against the CPU on shapes that exercise K
// splits, partial steps (K/32 not a multiple of 32), row counts not divisible by 4, one and
// several steps per row (the persistent kernel's partial sums and counters, reused across
// launches), 1..4 token rows, and 5..15 rows for the multi-row tensor-core GEMV (two mma
// passes; more than eight rows in consecutive launches; K slices merged by the last block).
func TestGEMVNVFP4(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 2e-5 // float32 sums in another order than the CPU's
	for i, s := range []struct{ T, K, N int }{
		{1, 256, 4}, {1, 2560, 9728}, {1, 9728, 2560}, {2, 2560, 4096}, {3, 4096, 2560}, {4, 9728, 1030},
		{1, 768, 7}, {1, 2816, 130}, {4, 256, 33}, {1, 25600, 64}, {1, 1024, 3}, {2, 1280, 1},
		{8, 2560, 9728}, {5, 9728, 2560}, {8, 256, 33}, {12, 1024, 130}, {7, 4096, 1030}, {6, 128, 16}, {15, 1152, 40},
	} {
		cw, gw := weights(t, c, g, hostWeight(t, kindNVFP4, s.N, s.K, uint64(50+i)))
		cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(500+i), 1))
		co, _ := pair(t, c, g, s.T, s.N, nil)
		if err := c.MatMul(co, cx, cw); err != nil {
			t.Fatal(err)
		}
		for _, k := range gemvKernelNames {
			name := fmt.Sprintf("gemv %s T=%d K=%d N=%d", k, s.T, s.K, s.N)
			for rep := 0; rep < 2; rep++ { // twice: the counters must be back at zero
				_, gO := pair(t, c, g, s.T, s.N, nil)
				if err := withGEMV(g, k, func() error { return g.matmul(gO.(*Tensor), gx.(*Tensor), gw.(*Weight)) }); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				compare(t, name, c, g, co, gO, bound)
			}
		}
	}
}

// TestGEMVMany checks MatMulMany (q/k/v- and gate/up-like products sharing x, one launch) on
// 1..8 token rows against the CPU, for each multi-row kernel shape and forced slice lengths.
func TestGEMVMany(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 2e-5
	shapes := []struct{ K, N0, N1, N2 int }{{2560, 4096, 1024, 1024}, {1024, 300, 17, 0}, {9728, 2560, 0, 0}}
	for si, s := range shapes {
		var cws, gws []backend.Weight
		for j, N := range []int{s.N0, s.N1, s.N2} {
			if N == 0 {
				continue
			}
			cw, gw := weights(t, c, g, hostWeight(t, kindNVFP4, N, s.K, uint64(70+10*si+j)))
			cws, gws = append(cws, cw), append(gws, gw)
		}
		for _, T := range []int{1, 2, 4, 5, 8} {
			cx, gx := pair(t, c, g, T, s.K, randn(T*s.K, uint64(700+T+10*si), 1))
			var couts []backend.Tensor
			for _, w := range gws {
				co, _ := pair(t, c, g, T, w.(*Weight).out, nil)
				couts = append(couts, co)
			}
			for j := range cws {
				if err := c.MatMul(couts[j], cx, cws[j]); err != nil {
					t.Fatal(err)
				}
			}
			type variant struct{ kernel, shape string }
			var variants []variant
			for _, v := range gemvTCBVariants {
				variants = append(variants, variant{gemvTCB, v})
			}
			for _, v := range gemvTCPVariants {
				variants = append(variants, variant{gemvTCP, v})
			}
			for _, v := range variants {
				for _, slice := range []int{0, 1, 3} {
					name := fmt.Sprintf("matmul many %s %s slice %d T=%d K=%d", v.kernel, v.shape, slice, T, s.K)
					var gouts []backend.Tensor
					for _, w := range gws {
						_, o := pair(t, c, g, T, w.(*Weight).out, nil)
						gouts = append(gouts, o)
					}
					err := g.do(func() error {
						oldV, oldP, oldS, oldG := g.gemvTCBVariant, g.gemvTCPVariant, g.gemvSlice, g.gemv
						if v.kernel == gemvTCB {
							g.gemvTCBVariant = v.shape
						} else {
							g.gemvTCPVariant = v.shape
						}
						g.gemvSlice, g.gemv = slice, v.kernel
						defer func() { g.gemvTCBVariant, g.gemvTCPVariant, g.gemvSlice, g.gemv = oldV, oldP, oldS, oldG }()
						return g.MatMulMany(gouts, gx, gws)
					})
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					for j := range gouts {
						compare(t, fmt.Sprintf("%s out %d", name, j), c, g, couts[j], gouts[j], bound)
					}
				}
			}
		}
	}
}

// TestFiguresGEMV times the streaming and the older NVFP4 GEMV side by side on Qwen3-4B shapes.
func TestFiguresGEMV(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	for _, s := range []struct{ T, K, N int }{{1, 2560, 9728}, {1, 9728, 2560}, {1, 2560, 4096}, {1, 4096, 2560}, {1, 2560, 1024}, {4, 2560, 9728},
		{8, 2560, 9728}, {8, 9728, 2560}, {8, 2560, 4096}, {8, 4096, 2560}} {
		const copies = 16
		var ws []*Weight
		for i := 0; i < copies; i++ {
			w, err := g.UploadWeight(backend.HostWeight{Name: fmt.Sprintf("gemv%d", i), NVFP4: randomNVFP4(s.N, s.K, uint64(i))})
			if err != nil {
				t.Fatal(err)
			}
			ws = append(ws, w.(*Weight))
		}
		x, _ := g.Alloc(backend.Activations, s.T, s.K)
		o, _ := g.Alloc(backend.Activations, s.T, s.N)
		if err := g.Upload(x, randn(s.T*s.K, 1, 1)); err != nil {
			t.Fatal(err)
		}
		kernels := slices.Clone(gemvKernelNames)
		for _, v := range gemvTCPVariants {
			kernels = append(kernels, gemvTCP+":"+v) // each resident shape
		}
		for _, k := range kernels {
			if only := os.Getenv("QWENGO_CUDA_FIG_GEMV"); only != "" && !slices.Contains(strings.Split(only, ","), strings.Split(k, ":")[0]) {
				continue // QWENGO_CUDA_FIG_GEMV=tc,tcb times only those
			}
			kernel, shape, _ := strings.Cut(k, ":")
			var ms float64
			err := withGEMV(g, kernel, func() error {
				old := g.gemvTCPVariant
				if shape != "" {
					g.gemvTCPVariant = shape
				}
				defer func() { g.gemvTCPVariant = old }()
				var err error
				ms, err = timeOnDevice(g, 20, func() error {
					for _, w := range ws {
						if err := g.matmul(o.(*Tensor), x.(*Tensor), w); err != nil {
							return err
						}
					}
					return nil
				})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Log(figure{fmt.Sprintf("gemv %s nvfp4 T=%d %d→%d", k, s.T, s.K, s.N),
				float64(ws[0].Bytes()) + float64(4*s.T*(s.K+s.N)), float64(2 * s.T * s.K * s.N), ms / copies})
		}
		g.Free(x)
		g.Free(o)
		for _, w := range ws {
			g.FreeWeight(w)
		}
	}
}

// TestFiguresGEMVProbe times the read probes (gemv_tcp.cu) over Qwen3-4B-shaped codes matrices:
// gemv_tcp's access pattern against consecutive 1 KB pieces, at 2 and 4 resident blocks per SM —
// what the memory system gives the GEMV's loads without its decode.
func TestFiguresGEMVProbe(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	sink, err := g.Alloc(backend.Workspace, 1, 32*g.sms*4)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(sink)
	for _, s := range []struct{ K, N int }{{2560, 9728}, {9728, 2560}, {2560, 6144}} {
		w, err := g.UploadWeight(backend.HostWeight{Name: "probe", NVFP4: randomNVFP4(s.N, s.K, 1)})
		if err != nil {
			t.Fatal(err)
		}
		gw := w.(*Weight)
		for _, k := range gemvProbeKernels[:2] {
			for _, per := range []int{2, 4} {
				ms, err := timeOnDevice(g, 20, func() error {
					return launch(g.fns[k], [3]int{per * g.sms, 1, 1}, [3]int{256, 1, 1}, 0,
						ptrArg(gw.ptr), intArg(s.N), intArg(s.K/32), ptrArg(sink.(*Tensor).ptr))
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Log(figure{fmt.Sprintf("%s %d blocks/SM codes %d×%d", k, per, s.N, s.K), float64(s.N * s.K / 2), 0, ms})
			}
		}
		// gemv_tcp one row, with and without the merge of its K slices.
		x, _ := g.Alloc(backend.Activations, 1, s.K)
		o, _ := g.Alloc(backend.Activations, 1, s.N)
		for _, k := range []string{"gemv_nvfp4_tcp1_8x4", gemvProbeKernels[2]} {
			var ms float64
			err := withGEMV(g, gemvTCP, func() error {
				oldV, oldF := g.gemvTCPVariant, g.fns["gemv_nvfp4_tcp1_8x4"]
				g.gemvTCPVariant, g.fns["gemv_nvfp4_tcp1_8x4"] = "8x4", g.fns[k]
				defer func() { g.gemvTCPVariant, g.fns["gemv_nvfp4_tcp1_8x4"] = oldV, oldF }()
				var err error
				ms, err = timeOnDevice(g, 20, func() error { return g.matmul(o.(*Tensor), x.(*Tensor), gw) })
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Log(figure{fmt.Sprintf("%s T=1 %d→%d", k, s.K, s.N), float64(gw.Bytes()), float64(2 * s.K * s.N), ms})
		}
		g.Free(x)
		g.Free(o)
		g.FreeWeight(gw)
	}
}

// TestTCPTiledSameBits runs the two-pass gemv_tcp's tile-structured consume loop (the default
// for five to eight rows) and its per-step form (QWENGO_CUDA_GEMV_STEPLOOP) on the same inputs
// and wants the same bits: plain products of one to three weights and the three fused forms,
// slices of whole rings (K = 2560, 4096, 9728) and a slice the tiled loop declines (K = 768:
// its last slice has two steps); one and three rows (one pass, the per-step loop either way)
// check that the switch leaves them alone.
func TestTCPTiledSameBits(t *testing.T) {
	g := openGPU(t)
	defer g.do(func() error { g.gemvTCPStepLoop = gemvTCPStepLoopFromEnv(); return nil })
	tcpSameBits(t, g, "tiled", "per-step", func(on bool) { g.gemvTCPStepLoop = !on }, nil, []tcpShape{
		{1, 2560, 1024, 3, 0}, {3, 2560, 700, 2, 0}, {8, 2560, 4096, 1, 0}, {5, 2560, 1024, 3, 0}, {7, 2560, 9728, 2, 0},
		{8, 4096, 2560, 1, 0}, {6, 9728, 2560, 1, 0}, {8, 9728, 2560, 1, 0}, {5, 768, 300, 2, 0},
	})
}

// TestTCPBlockMergeSameBits runs gemv_tcp's block merge (QWENGO_CUDA_GEMV_BM: every K slice of
// a tile summed inside one block) and the global merge on the same inputs and wants the same
// bits: one to four rows, Qwen3-4B's shapes (K = 2560 in four slices, 4096 in eight), a product
// of several tiles a block slot (N = 9728 with two jobs), rows that end inside a tile (N = 700,
// 300), a K of one slice (640) and one of two (768). It also wants the block merge launched
// where it applies (plain, norm and acc: three launches a shape) and declined where it does
// not: K = 9728 (eight-step slices, which do not divide the block), three rows of 4096 (staged
// rows beyond gemvTCBSmem), five rows (two passes), SwiGLU (no block-merge form).
func TestTCPBlockMergeSameBits(t *testing.T) {
	g := openGPU(t)
	defer g.do(func() error { g.gemvTCPBlockMerge = gemvTCPBlockMergeFromEnv(); return nil })
	tcpSameBits(t, g, "block merge", "global merge", func(on bool) { g.gemvTCPBlockMerge = on }, &g.gemvTCPBMLaunches, []tcpShape{
		{1, 2560, 1024, 3, 3}, {1, 2560, 9728, 2, 3}, {1, 4096, 2560, 1, 3}, {1, 9728, 2560, 1, 0}, {2, 2560, 700, 2, 3},
		{3, 4096, 2560, 1, 0}, {4, 2560, 4096, 1, 3}, {1, 640, 300, 1, 3}, {1, 768, 300, 2, 3}, {5, 2560, 1024, 1, 0},
	})
}

// TestTCPMergeSameBits: the batched global merge (gemv_tcp.cuh finish: a warp's arrivals at once,
// every slice's partial and the residual loaded together) gives the bits of the per-tile merge
// it replaced (merge_per_tile, the _m0 entry points: one-row SwiGLU + down, two-pass plain
// products), on the decode's long and short K, one to three products, several tiles a warp.
func TestTCPMergeSameBits(t *testing.T) {
	g := openGPU(t)
	defer g.do(func() error { g.gemvTCPMerge0 = gemvTCPMerge0FromEnv(); return nil })
	tcpSameBits(t, g, "per-tile merge", "batched merge", func(on bool) { g.gemvTCPMerge0 = on }, &g.gemvTCPMerge0Launches, []tcpShape{
		{1, 9728, 2560, 1, 1}, {1, 2560, 1024, 2, 1}, {8, 2560, 4096, 3, 1}, {6, 9728, 2560, 1, 1}, {8, 4096, 700, 2, 1},
		{5, 2560, 300, 1, 1},
	})
}

// tcpShape is a gemv_tcp case of the same-bits tests: T rows of K inputs, jobs products of N,
// N + 16, … outputs; launches is what the counter given to tcpSameBits must grow by with the
// switch on.
type tcpShape struct{ T, K, N, jobs, launches int }

// tcpOutputs makes one GPU output [T, N+16j] for each of n products (tcpInputs' weights).
func tcpOutputs(t *testing.T, c *cpu.Backend, g *Backend, T, N, n int) []backend.Tensor {
	var o []backend.Tensor
	for j := range n {
		_, t1 := pair(t, c, g, T, N+16*j, nil)
		o = append(o, t1)
	}
	return o
}

// tcpInputs makes a same-bits test's inputs for shape i: jobs NVFP4 weights of N+16j rows and
// K inputs, x and u [T, K], norm weights [1, K] and a residual's T·N values, seeded from base
// (weights base+10i+j, the rest 10·base+i and up) so that every test keeps its own values.
func tcpInputs(t *testing.T, c *cpu.Backend, g *Backend, T, K, N, jobs, base, i int) (ws []backend.Weight, x, u, nw backend.Tensor, res []float32) {
	t.Helper()
	for j := 0; j < jobs; j++ {
		_, w := weights(t, c, g, hostWeight(t, kindNVFP4, N+16*j, K, uint64(base+10*i+j)))
		ws = append(ws, w)
	}
	_, x = pair(t, c, g, T, K, randn(T*K, uint64(10*base+i), 1))
	_, u = pair(t, c, g, T, K, randn(T*K, uint64(10*base+50+i), 1))
	_, nw = pair(t, c, g, 1, K, randn(K, uint64(10*base+80+i), 0.3))
	return ws, x, u, nw, randn(T*N, uint64(10*base+90+i), 1)
}

// tcpSameBits computes every gemv_tcp form (plain products of the shape's jobs, norm, acc,
// swiacc) with set(true) and set(false) on the owner goroutine and fails at the first output
// whose bits differ between the two (named on and off), or where counter (if not nil) did not
// grow by the shape's launches with the switch on.
func tcpSameBits(t *testing.T, g *Backend, on, off string, set func(bool), counter *int, shapes []tcpShape) {
	t.Helper()
	c := cpu.New()
	const eps = 1e-6
	for i, s := range shapes {
		name := fmt.Sprintf("T=%d K=%d N=%d jobs=%d", s.T, s.K, s.N, s.jobs)
		ws, x, u, nw, res := tcpInputs(t, c, g, s.T, s.K, s.N, s.jobs, 70, i)
		// run returns each form's outputs with the switch set to which.
		run := func(which bool) map[string][][]float32 {
			g.do(func() error { set(which); return nil })
			got := map[string][][]float32{}
			outs := func() []backend.Tensor { return tcpOutputs(t, c, g, s.T, s.N, len(ws)) }
			keep := func(form string, ts []backend.Tensor) {
				for _, o := range ts {
					got[form] = append(got[form], download(t, g, o))
				}
			}
			o := outs()
			if err := g.MatMulMany(o, x, ws); err != nil {
				t.Fatalf("%s: matmul many: %v", name, err)
			}
			keep("plain", o)
			o = outs()
			if err := g.NormMatMulMany(o, x, nw, eps, ws); err != nil {
				t.Fatalf("%s: norm+matmul: %v", name, err)
			}
			keep("norm", o)
			_, r := pair(t, c, g, s.T, s.N, res)
			if err := g.MatMulAdd(r, x, ws[0]); err != nil {
				t.Fatalf("%s: matmul+add: %v", name, err)
			}
			keep("acc", []backend.Tensor{r})
			_, r2 := pair(t, c, g, s.T, s.N, res)
			if err := g.SwiGLUMatMulAdd(r2, x, u, ws[0]); err != nil {
				t.Fatalf("%s: swiglu+matmul+add: %v", name, err)
			}
			keep("swiacc", []backend.Tensor{r2})
			return got
		}
		var before, after int
		g.do(func() error {
			if counter != nil {
				before = *counter
			}
			return nil
		})
		a := run(true)
		g.do(func() error {
			if counter != nil {
				after = *counter
			}
			return nil
		})
		if counter != nil && after-before != s.launches {
			t.Errorf("%s: %d %s launches, want %d", name, after-before, on, s.launches)
		}
		b := run(false)
		for form, outs := range b {
			for j := range outs {
				for k := range outs[j] {
					if math.Float32bits(a[form][j][k]) != math.Float32bits(outs[j][k]) {
						t.Fatalf("%s %s: output %d element %d: %s %g, %s %g", name, form, j, k, on, a[form][j][k], off, outs[j][k])
					}
				}
			}
		}
	}
}

// TestTCPColumnScales checks gemv_tcp's one-row column-scale forms (gemv_tcp.cuh CS: each
// lane's NVFP4 blocks summed apart by the mma and scaled in f32) against the CPU, beside the
// half2-scaled form they replace (QWENGO_CUDA_GEMV_CS=0), on Qwen3-4B's K (the block merge at
// 2560 and 4096, the global merge at 9728), a K of one slice, rows ending inside a tile and
// three products a launch; and that one row takes them and two rows do not. (The column-scale
// forms issue the ring's loads after each step's decode; the same forms issuing them before gave
// the same bits on every shape here and every fused form — session 20, call 5.)
func TestTCPColumnScales(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	defer g.do(func() error { g.gemvTCPCS = gemvTCPCSFromEnv(); return nil })
	const bound = 2e-5
	for i, s := range []struct{ T, K, N0, N1, N2 int }{
		{1, 2560, 4096, 1024, 1024}, {1, 2560, 9728, 9728, 0}, {1, 9728, 2560, 0, 0}, {1, 4096, 2560, 0, 0},
		{1, 640, 300, 17, 0}, {2, 2560, 1024, 0, 0},
	} {
		var cws, gws []backend.Weight
		for j, N := range []int{s.N0, s.N1, s.N2} {
			if N > 0 {
				cw, gw := weights(t, c, g, hostWeight(t, kindNVFP4, N, s.K, uint64(90+10*i+j)))
				cws, gws = append(cws, cw), append(gws, gw)
			}
		}
		cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(900+i), 1))
		var want []backend.Tensor
		for j, w := range cws {
			co, _ := pair(t, c, g, s.T, gws[j].(*Weight).out, nil)
			if err := c.MatMul(co, cx, w); err != nil {
				t.Fatal(err)
			}
			want = append(want, co)
		}
		var outs [2][][]float32
		for m, on := range []bool{true, false} {
			name := fmt.Sprintf("T=%d K=%d N=%d,%d,%d %s", s.T, s.K, s.N0, s.N1, s.N2, []string{"column scales", "half2 scales"}[m])
			var gouts []backend.Tensor
			for _, w := range gws {
				_, o := pair(t, c, g, s.T, w.(*Weight).out, nil)
				gouts = append(gouts, o)
			}
			var before, after int
			err := g.do(func() error {
				g.gemvTCPCS, before = on, g.gemvTCPCSLaunches
				err := g.MatMulMany(gouts, gx, gws)
				after = g.gemvTCPCSLaunches
				return err
			})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if wantCS := on && s.T == 1; (after > before) != wantCS {
				t.Errorf("%s: %d column-scale launches", name, after-before)
			}
			for j := range gouts {
				compare(t, fmt.Sprintf("%s out %d", name, j), c, g, want[j], gouts[j], bound)
				outs[m] = append(outs[m], download(t, g, gouts[j]))
			}
		}
		var most float64
		for j := range outs[0] {
			for k := range outs[0][j] {
				most = max(most, math.Abs(float64(outs[0][j][k]-outs[1][j][k])))
			}
		}
		t.Logf("T=%d K=%d: largest difference between the two scalings %.3g", s.T, s.K, most)
	}
}
