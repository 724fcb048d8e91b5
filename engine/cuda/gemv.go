//go:build cuda

package cuda

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// NVFP4 decode GEMVs (few token rows), six generations kept side by side so the figures
// test times them in one run (NOTES.md has the numbers):
//
//   - "v2": matmul.cu's gemv_nvfp4_t*: split-K within a block, loads from registers.
//   - "stream": gemv.cu's gemv_nvfp4s_t*: the same geometry with a cp.async ring.
//   - "persist": gemv.cu's gemv_nvfp4p_t*: resident warps walking (row group, K step) items,
//     up to three products per launch (MatMulMany).
//   - "tc": gemv_tc.cu: one token row on tensor cores, up to three products per launch,
//     launched with programmatic dependent launch (launchDep).
//   - "tcb": gemv_tcb.cu: 1..8 token rows on tensor cores, K sliced (gemv_tcb.go).
//   - "tcp": gemv_tcp.cu: tcb's sums from a resident grid whose warps keep four weight steps
//     in flight across tiles (gemv_tcp.go).
//
// Measured on the H200 (device runs 2, 7, 10; session 5 run 2): the CUDA-core kernels reach
// 0.6-0.9 TB/s (short blocks whose load, decode and reduction latencies do not overlap,
// NOTES.md), the tensor-core ones 1.1-1.3 TB/s at one row, the resident tcp fastest at 1-8 rows but
// for 9728-output products at eight rows (tcb 16.9 against 17.8 µs) — in the model tcp wins
// all three decode figures (session 5 run 2: 334 → 340, 228 → 241, 1,379 → 1,478 tok/s). The
// default ("auto") takes tcp for 1-15 rows when K % 128 == 0 and v2/stream otherwise;
// QWENGO_CUDA_GEMV=v2|stream|persist|tc|tcb|tcp forces one.
const (
	gemvTC      = "tc"
	gemvAuto    = "auto"
	gemvPersist = "persist"
	gemvStreamV = "stream"
	gemvV2Name  = "v2"
	gemvTCB     = "tcb"
	gemvTCP     = "tcp"
)

func gemvFromEnv() string {
	switch v := os.Getenv("QWENGO_CUDA_GEMV"); v {
	case gemvV2Name, gemvStreamV, gemvPersist, gemvTC, gemvTCB, gemvTCP:
		return v
	}
	return gemvAuto
}

// gemvNVFP4 runs an NVFP4 product of a few token rows on the selected GEMV and reports whether
// it took it (false: use matmul.cu's GEMV, cuBLASLt or the tiled kernel). By default 1 to
// gemmMinRows-1 rows take the resident tensor-core GEMV (gemv_tcp.cu, eight rows a launch).
func (b *Backend) gemvNVFP4(o, a *Tensor, w *Weight) (bool, error) {
	T, K := a.rows, a.cols
	kernel := b.gemv
	if (kernel == gemvAuto || kernel == gemvTCP) && T < gemmMinRows && b.gemvTCPShape(min(T, gemvTCBRows), K) {
		return true, b.gemvRowChunks(o, a, w, b.gemvTCPMany)
	}
	if kernel == gemvTCB && T < gemmMinRows && b.gemvTCBShape(min(T, gemvTCBRows), K) {
		return true, b.gemvRowChunks(o, a, w, b.gemvTCBMany)
	}
	if T < 1 || T > gemvMaxRows || K%256 != 0 {
		return false, nil
	}
	if kernel == gemvTC && b.tcGEMVShape(T, K) {
		return true, b.gemvTCMany([]*Tensor{o}, a, []*Weight{w})
	}
	if kernel == gemvAuto || kernel == gemvTC || kernel == gemvTCB || kernel == gemvTCP {
		kernel = gemvV2Name
		if T == 1 && w.out >= 2048 {
			kernel = gemvStreamV
		}
	}
	switch kernel {
	case gemvPersist:
		return true, b.gemvPersistLaunch(o, a, w)
	case gemvStreamV:
		return true, b.gemvStream(o, a, w)
	}
	return false, nil
}

// gemvStreamGeometry picks ksplit (warps sharing a group of 4 rows, each a slice of K) and the
// slice length in 32-element chunks (a multiple of 8): enough warps to keep ~32 resident on
// every SM, but slices of at least 64 chunks.
func gemvStreamGeometry(sms, N, K int) (ksplit, slice int) {
	chunks := K / 32
	groups := (N + gemvRows - 1) / gemvRows
	ksplit = 1
	for ksplit < gemvWarps && groups*ksplit < 32*sms && chunks/(2*ksplit) >= 64 {
		ksplit *= 2
	}
	slice = (chunks + ksplit - 1) / ksplit
	slice = (slice + 7) / 8 * 8
	return ksplit, slice
}

// gemvStream launches gemv_nvfp4s_t{T} (owner goroutine).
func (b *Backend) gemvStream(o, a *Tensor, w *Weight) error {
	T, K, N := a.rows, a.cols, w.out
	ksplit, slice := gemvStreamGeometry(b.sms, N, K)
	rowsPerBlock := gemvRows * gemvWarps / ksplit
	g, bl := [3]int{(N + rowsPerBlock - 1) / rowsPerBlock, 1, 1}, [3]int{32 * gemvWarps, 1, 1}
	return launch(b.fns[gemvStreamKernels[T-1]], g, bl, 0, ptrArg(o.ptr), ptrArg(a.ptr), ptrArg(w.ptr), ptrArg(w.scales),
		f32Arg(w.global*16384), intArg(N), intArg(K), intArg(ksplit), intArg(slice))
}

// gemvPersistWarps is the block size of gemv_nvfp4p (GS_PWARPS in gemv.cu).
const gemvPersistWarps = 4

// gemvPersistLaunch launches gemv_nvfp4p_t{T} for one product (owner goroutine).
func (b *Backend) gemvPersistLaunch(o, a *Tensor, w *Weight) error {
	return b.gemvPersistMany([]*Tensor{o}, a, []*Weight{w})
}

// gemvPersistMany launches gemv_nvfp4p_t{T} for up to three NVFP4 products sharing x (and so
// K): q/k/v, gate/up in one launch. The partial sums and per-row-group arrival counters live in
// grow-only Workspace buffers; counters are zeroed when allocated and every launch leaves them
// zero (owner goroutine; shapes checked by the caller).
func (b *Backend) gemvPersistMany(outs []*Tensor, a *Tensor, ws []*Weight) error {
	T, K := a.rows, a.cols
	if len(ws) == 0 || len(ws) > 3 || len(outs) != len(ws) {
		return fmt.Errorf("gemv: %d products (1 to 3, one output each)", len(ws))
	}
	spr := (K/32 + 31) / 32
	groups, sumN := 0, 0
	for _, w := range ws {
		groups += (w.out + gemvRows - 1) / gemvRows
		sumN += w.out
	}
	if spr > 1 {
		if err := b.gemvWorkspace(int64(4*spr*T*sumN), groups); err != nil {
			return err
		}
	}
	fn := b.fns[gemvPersistKernels[T-1]]
	per := b.gemvOccupancy[T-1]
	if per == 0 {
		n, err := occupancy(fn, 32*gemvPersistWarps, 0)
		if err != nil || n < 1 {
			return fmt.Errorf("occupancy of %s: %d, %v", gemvPersistKernels[T-1], n, err)
		}
		b.gemvOccupancy[T-1], per = n, n
	}
	items := groups * spr
	blocks := min(per*b.sms, (items+gemvPersistWarps-1)/gemvPersistWarps)
	args := []arg{ptrArg(b.gemvPartial.ptr), ptrArg(b.gemvCounters.ptr), ptrArg(a.ptr), intArg(K), intArg(len(ws))}
	args = append(args, gemvJobArgs(outs, ws)...)
	return launch(fn, [3]int{blocks, 1, 1}, [3]int{32 * gemvPersistWarps, 1, 1}, 0, args...)
}

// gemvJobArgs are the per-product kernel parameters of the multi-product GEMVs (gemv_jobs in
// kernels/gemv_tc.cuh, GEMV_JOB_PARAMS): output, codes, scales, tensor scale × 2^14 and rows for
// each of three products, null/zero for the unused ones.
func gemvJobArgs(outs []*Tensor, ws []*Weight) []arg {
	var args []arg
	for j := 0; j < 3; j++ {
		if j < len(ws) {
			w := ws[j]
			args = append(args, ptrArg(outs[j].ptr), ptrArg(w.ptr), ptrArg(w.scales), f32Arg(w.global*16384), intArg(w.out))
		} else {
			args = append(args, ptrArg(0), ptrArg(0), ptrArg(0), f32Arg(0), intArg(0))
		}
	}
	return args
}

// gemvTCWarps returns the block size, in warps, of a tensor-core GEMV variant.
func gemvTCWarps(name string) int {
	var w, d int
	if _, err := fmt.Sscanf(strings.TrimPrefix(name, "gemv_nvfp4_tc"), "%dx%d", &w, &d); err != nil && w == 0 {
		return 8
	}
	return w
}

// launchDep launches a kernel that begins with pdl_wait (common.cuh) with programmatic
// dependent launch when the driver allows it and the kernel before it was launched this way
// too, so it overlaps that kernel's end; otherwise (or once the driver has refused) plainly.
// Only decode-path kernels that write no weights go through here (driver.go: qg_prev_dep).
func (b *Backend) launchDep(f function, g, bl [3]int, shmem int, args ...arg) error {
	refused, err := launchDepKernel(f, g, bl, shmem, b.pdl, args...)
	if refused {
		b.pdl = false // a driver that refuses the attribute: plain launches from now on
		_, err = launchDepKernel(f, g, bl, shmem, false, args...)
	}
	return err
}

// pdlFromEnv reports whether programmatic dependent launch may be used (QWENGO_CUDA_PDL=0: no).
func pdlFromEnv() bool { return os.Getenv("QWENGO_CUDA_PDL") != "0" }

// gemvTCFromEnv returns the variant QWENGO_CUDA_GEMV_TC names, or "" to pick per shape.
func gemvTCFromEnv() string {
	if v := os.Getenv("QWENGO_CUDA_GEMV_TC"); v != "" && slices.Contains(gemvTCVariants, "gemv_nvfp4_tc"+v) {
		return "gemv_nvfp4_tc" + v
	}
	return ""
}

// gemvTCPick returns the tensor-core GEMV variant for K inputs. Measured on the H200 (device run
// 7, L2-cold): 4 warps × 3 steps in flight is fastest for K = 2560 (2560→9728 12.0 µs against
// 15.9 for 8×3), 8 × 3 for longer rows (9728→2560 14.7 against 19.3; 4096→2560 9.3 against 10.1).
func (b *Backend) gemvTCPick(K int) string {
	if b.gemvTCKernel != "" {
		return b.gemvTCKernel
	}
	if K <= 2560 {
		return "gemv_nvfp4_tc4x3"
	}
	return "gemv_nvfp4_tc8x3"
}

// gemvTCMaxK bounds K for the tensor-core GEMV: x is staged in shared memory as hi and lo f16,
// 4 bytes per element, within the 48 KB a block gets without opting in.
const gemvTCMaxK = 12288

// tcGEMVShape reports whether the tensor-core GEMV takes a product of T rows and K inputs.
func (b *Backend) tcGEMVShape(T, K int) bool {
	return T == 1 && K%128 == 0 && K <= gemvTCMaxK && b.fns[b.gemvTCPick(K)] != nil
}

// gemvTCMany launches the tensor-core GEMV for one to three NVFP4 products of one token row
// sharing x (q/k/v, gate/up): one block per 16 output rows of each (owner goroutine; shapes
// checked by the caller).
func (b *Backend) gemvTCMany(outs []*Tensor, a *Tensor, ws []*Weight) error {
	if len(ws) == 0 || len(ws) > 3 || len(outs) != len(ws) {
		return fmt.Errorf("gemv: %d products (1 to 3, one output each)", len(ws))
	}
	K := a.cols
	args := []arg{ptrArg(a.ptr), intArg(K), intArg(len(ws))}
	blocks := 0
	for _, w := range ws {
		blocks += (w.out + 15) / 16
	}
	args = append(args, gemvJobArgs(outs, ws)...)
	name := b.gemvTCPick(K)
	// The weights do not depend on the previous kernel: with programmatic dependent launch the
	// blocks request them while it finishes, then wait for it before staging x.
	return b.launchDep(b.fns[name], [3]int{blocks, 1, 1}, [3]int{32 * gemvTCWarps(name), 1, 1}, 4*K, args...)
}
