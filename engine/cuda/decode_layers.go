//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
)

// backend.LayerDecoder: a one-token decode step's decoder layers in one persistent launch
// (kernels/decode_layers.cu explains the phases and why). The host side builds the kernel's
// descriptor — per-layer weight, norm and cache pointers — uploads it when it changed (a new
// cache, other weights), sizes the work buffers and launches one block per SM cooperatively.
//
// It is off unless QWENGO_CUDA_DECODE_LAYERS=1: it agrees with the per-op path (TestDecodeLayers)
// but measured slower on the H200 — 220-233 tok/s (259 for an earlier version) against 366 at context 512 (NOTES.md,
// session 7: its phases are serial, the weight ring cannot run ahead across attention and the
// barriers, and the tensor-core decode of the weights bounds each SM at ~14 GB/s).
// QWENGO_CUDA_DECODE_STAGES caps its weight stages (an experiment's knob, figures in the notes).

const (
	dlThreads  = 544 // 16 consumer warps and the producer warp
	dlHeadDim  = 128
	dlMaxLoc   = 32 // most GEMV items a block may take (its partial sums live in shared memory)
	dlMaxC     = 64 // most attention key chunks
	dlMaxNS    = 8  // weight stages
	dlWarps    = 16
	dlHdrSlots = 23 // dl_args: 10 pointers, 11 integers, 2 doubles
	dlLaySlots = 34 // dl_layer: 7 matrices × 4 slots, 4 norms, 2 caches
)

// dlState is the decoder's descriptor and work buffers (worker goroutine).
type dlState struct {
	desc    devBuf   // dl_args then the dl_layer table
	host    []uint64 // what desc holds
	work    devBuf   // qkv, attention records, o and down partials, gate|up, barrier
	barAt   int64    // byte offset of the barrier words in work
	smemSet map[string]int
	// clocks, when a test gives it room (dlClocksFor), receives each block's clock64 at every
	// grid barrier's arrival and departure: [barriers][grid][2].
	clocks devBuf
	// launches counts the kernel's launches (tests check that the decoder ran).
	launches int
}

// dlBarriers is the number of grid barriers a launch over n layers passes.
func dlBarriers(n int) int { return 5 * n }

// decodeLayersFromEnv reports whether the persistent decoder may run (QWENGO_CUDA_DECODE_LAYERS=1).
func decodeLayersFromEnv() bool { return os.Getenv("QWENGO_CUDA_DECODE_LAYERS") == "1" }

// dlSplit picks a K split for a product of tiles 16-row tiles and steps 128-wide steps over a
// grid of blocks: the fewest slices (a divisor of steps) whose items spread over the blocks
// within 10 % of even, else the most even; and never more items a block than DL_MAXLOC.
func dlSplit(tiles, steps, blocks int) int {
	best, bestImb := 0, math.Inf(1)
	for s := 1; s <= steps; s++ {
		if steps%s != 0 {
			continue
		}
		n := tiles * s
		per := (n + blocks - 1) / blocks
		if per > dlMaxLoc {
			break
		}
		imb := float64(per) * float64(blocks) / float64(n)
		if imb <= 1.1 {
			return s
		}
		if imb < bestImb {
			best, bestImb = s, imb
		}
	}
	return best
}

// dlItemsFit reports whether a product of tiles tiles split s ways gives no block more than
// DL_MAXLOC items.
func dlItemsFit(tiles, s, blocks int) bool { return s > 0 && (tiles*s+blocks-1)/blocks <= dlMaxLoc }

// dlStageBytes is one weight stage for items of up to ss steps (decode_layers.cu's dl_ring:
// 16 rows of codes at a pitch of ss·64 + 16 bytes, then 16 rows of scales at ss·8 rounded up to 16).
func dlStageBytes(ss int) int { return 16 * (ss*64 + 16 + (ss*8+15)&^15) }

// dlFloats is the kernel's shared memory after the ring, in floats (decode_layers.cu's layout).
func dlFloats(H, I, nH, G, C, maxloc int) int {
	kmax := max(H, nH*dlHeadDim, I)
	return H + max(kmax+maxloc*dlWarps*16, dlWarps*G*(dlHeadDim+2), 2*nH*dlHeadDim) + (G+1)*dlHeadDim + nH*(C+1) + dlHeadDim
}

// DecodeLayers implements backend.LayerDecoder.
func (b *Backend) DecodeLayers(x backend.Tensor, layers []backend.DecodeLayer, pos int, p backend.DecodeParams) (bool, error) {
	if !b.decodeLayers || len(layers) == 0 {
		return false, nil
	}
	ok := false
	err := b.do(func() error {
		var err error
		ok, err = b.decodeLayersRun(x, layers, pos, p)
		return err
	})
	return ok, err
}

// decodeLayersRun checks what the kernel takes (false, nil when it does not), then launches it
// (worker goroutine).
func (b *Backend) decodeLayersRun(x backend.Tensor, layers []backend.DecodeLayer, pos int, p backend.DecodeParams) (bool, error) {
	const op = "decode layers"
	if b.capturing || !b.launchEx {
		return false, nil
	}
	xt, err := b.ten(x, op, "x")
	if err != nil {
		return false, err
	}
	H, nH, nKV, hd := xt.cols, p.NumHeads, p.NumKVHeads, p.HeadDim
	if xt.rows != 1 || hd != dlHeadDim || nH <= 0 || nKV <= 0 || nH%nKV != 0 || H%128 != 0 || pos < 0 || pos >= math.MaxInt32 {
		return false, nil
	}
	G := nH / nKV
	name := fmt.Sprintf("decode_layers_g%d", G)
	fn := b.fns[name]
	if fn == nil {
		return false, nil
	}
	Nq, Nk := nH*hd, nKV*hd
	// Every layer: NVFP4 products of the expected shapes, norms and caches that fit.
	var I int
	slots := make([]uint64, dlHdrSlots, dlHdrSlots+dlLaySlots*len(layers))
	for li, l := range layers {
		ws := [7]backend.Weight{l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down}
		var cw [7]*Weight
		for i, w := range ws {
			if w == nil {
				return false, nil
			}
			if cw[i], err = b.weight(w, op); err != nil {
				return false, fmt.Errorf("cuda: %s: layer %d: %w", op, li, err)
			}
			if cw[i].kind != kindNVFP4 {
				return false, nil
			}
		}
		if li == 0 {
			I = cw[4].out
		}
		want := [7][2]int{{Nq, H}, {Nk, H}, {Nk, H}, {H, Nq}, {I, H}, {I, H}, {H, I}}
		for i, w := range cw {
			if w.out != want[i][0] || w.in != want[i][1] {
				return false, nil
			}
		}
		ts := [6]backend.Tensor{l.InputNorm, l.PostNorm, l.QNorm, l.KNorm, l.KCache, l.VCache}
		var ct [6]*Tensor
		for i, t := range ts {
			if t == nil {
				return false, nil
			}
			if ct[i], err = b.tenKV(t, op, "layer tensor"); err != nil {
				return false, fmt.Errorf("cuda: %s: layer %d: %w", op, li, err)
			}
			if ct[i].bf16 { // the whole-stack kernel reads float32 caches only: the per-op path runs
				return false, nil
			}
		}
		if ct[0].n() != H || ct[1].n() != H || ct[2].n() != hd || ct[3].n() != hd ||
			ct[4].cols != Nk || ct[5].cols != Nk || ct[4].rows <= pos || ct[5].rows <= pos {
			return false, nil
		}
		for _, w := range cw {
			slots = append(slots, uint64(w.ptr), uint64(w.scales), math.Float64bits(float64(w.global*16384)), uint64(w.out))
		}
		for _, t := range ct {
			slots = append(slots, uint64(t.ptr))
		}
	}
	if I%128 != 0 {
		return false, nil
	}
	grid := b.sms
	C := min(grid/nKV, dlMaxC)
	So := dlSplit((H+15)/16, Nq/128, grid)
	Sd := dlSplit((H+15)/16, I/128, grid)
	if C < 1 || So > 8 || Sd > 8 || !dlItemsFit((Nq+2*Nk+15)/16, 1, grid) || !dlItemsFit((2*I+15)/16, 1, grid) ||
		!dlItemsFit((H+15)/16, So, grid) || !dlItemsFit((H+15)/16, Sd, grid) {
		return false, nil
	}
	// The ring gets what shared memory the rest leaves, up to dlMaxNS stages of the largest item.
	items := func(tiles, s int) int { return (tiles*s + grid - 1) / grid }
	maxloc := max(items((Nq+2*Nk+15)/16, 1), items((2*I+15)/16, 1), items((H+15)/16, So), items((H+15)/16, Sd))
	ssmax := max(H/128, Nq/128/So, I/128/Sd)
	rest := 4*dlFloats(H, I, nH, G, C, maxloc) + 256 // + the kernel's static shared memory
	NS := min(dlMaxNS, (b.smemOptin-rest)/(dlStageBytes(ssmax)+16))
	if n, err := strconv.Atoi(os.Getenv("QWENGO_CUDA_DECODE_STAGES")); err == nil && n >= 2 {
		NS = min(NS, n)
	}
	if NS < 2 {
		return false, nil
	}
	smem := NS*(dlStageBytes(ssmax)+16) + rest - 256
	if b.dl.smemSet[name] < smem {
		if err := setMaxDynamicShared(fn, smem); err != nil {
			return false, nil // more shared memory than this GPU gives a block
		}
		if n, err := occupancy(fn, dlThreads, smem); err != nil || n < 1 {
			return false, nil
		}
		if b.dl.smemSet == nil {
			b.dl.smemSet = map[string]int{}
		}
		b.dl.smemSet[name] = smem
	}

	// Work buffers (floats, each piece 16-byte aligned), then the two barrier words.
	al := func(n int) int64 { return int64((n + 3) &^ 3) }
	offQKV := int64(0)
	offAtt := offQKV + al(Nq+2*Nk)
	offPo := offAtt + al(C*nH*(hd+2))
	offPd := offPo + al(So*H)
	offGU := offPd + al(Sd*H)
	offBar := offGU + al(2*I)
	workBytes := 4 * (offBar + 4)
	if b.dl.work.bytes < workBytes {
		if err := b.grow(&b.dl.work, backend.Workspace, workBytes, "decode layers work"); err != nil {
			return false, fmt.Errorf("cuda: %s: %w", op, err)
		}
		b.dl.barAt = -1
	}
	if b.dl.barAt != 4*offBar {
		if err := memsetD8(b.dl.work.ptr+devPtr(4*offBar), 0, 16); err != nil {
			return false, fmt.Errorf("cuda: %s: %w", op, err)
		}
		b.dl.barAt = 4 * offBar
	}
	inv, err := b.invFreq(hd, p.RopeTheta)
	if err != nil {
		return false, fmt.Errorf("cuda: %s: %w", op, err)
	}
	w := b.dl.work.ptr
	if b.dl.desc.bytes < int64(8*len(slots)) {
		if err := b.grow(&b.dl.desc, backend.Workspace, int64(8*len(slots)), "decode layers descriptor"); err != nil {
			return false, fmt.Errorf("cuda: %s: %w", op, err)
		}
		b.dl.host = nil // a new allocation holds nothing yet, even at the old address
	}
	hdr := []uint64{
		uint64(b.dl.desc.ptr) + 8*dlHdrSlots, uint64(xt.ptr), uint64(w + devPtr(4*offQKV)), uint64(w + devPtr(4*offAtt)),
		uint64(w + devPtr(4*offPo)), uint64(w + devPtr(4*offPd)), uint64(w + devPtr(4*offGU)), uint64(w + devPtr(4*offBar)), uint64(inv), uint64(b.dl.clocks.ptr),
		uint64(len(layers)), uint64(H), uint64(I), uint64(nH), uint64(nKV), uint64(C), uint64(So), uint64(Sd),
		uint64(NS), uint64(ssmax), uint64(maxloc),
		math.Float64bits(float64(p.RMSNormEps)), math.Float64bits(float64(float32(1 / math.Sqrt(float64(hd))))),
	}
	copy(slots, hdr)
	if !slices.Equal(slots, b.dl.host) {
		if err := memcpyHtoD(b.dl.desc.ptr, unsafe.Pointer(&slots[0]), int64(8*len(slots))); err != nil {
			return false, fmt.Errorf("cuda: %s: descriptor: %w", op, err)
		}
		b.dl.host = slots
	}
	if err := launchCooperative(fn, grid, dlThreads, smem, ptrArg(b.dl.desc.ptr), intArg(pos)); err != nil {
		return false, fmt.Errorf("cuda: %s: %w", op, err)
	}
	b.dl.launches++
	return true, nil
}
