//go:build cuda

package cuda

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/optim"
)

// AdamW on 4-bit moments (engine/optim's Bit4 format, backend format "4bit"): the state's
// layout and the two launches of kernels/optim4.cu. The file comment of optim4.cu gives the
// arithmetic, why it equals engine/optim's (and so engine/cpu's) code for code, and the bytes
// and FLOPs per element.

// adam4Block is engine/optim's Bit4Block: the elements that share one float32 absmax of m (and
// of v, for a one-row parameter).
const adam4Block = 128

// vmaxRows is the number of rows one block of adamw4_vmax covers, unless the grid's 65535 row
// blocks need more.
const vmaxRows = 64

// adam4Layout returns the byte offsets of a [rows, cols] 4bit state's parts in its one
// allocation — m's codes at 0, v's codes at offV, m's per-128 absmax at offMS, v's normaliser
// at offNorm (rows row maxima then cols column maxima for a matrix; one absmax per 128 for a
// one-row parameter) — each at a 256-byte boundary, and the total. Without the alignment it is
// engine/optim's count (engine/cpu's accounting): two nibbles per element, 4 bytes per 128, and
// 4·(rows+cols) or 4 per 128: about 1.03 bytes per parameter for the model's matrices.
func adam4Layout(rows, cols int) (offV, offMS, offNorm, total int64) {
	n := int64(rows) * int64(cols)
	nb := (n + adam4Block - 1) / adam4Block
	codes := (n + 1) / 2
	norm := 4 * nb
	if rows > 1 {
		norm = 4 * (int64(rows) + int64(cols))
	}
	offV = align256(codes)
	offMS = offV + align256(codes)
	offNorm = offMS + align256(4*nb)
	return offV, offMS, offNorm, offNorm + norm
}

// adamW4 runs AdamW with 4-bit moments on checked arguments (owner goroutine). For a matrix:
// zero the new row and column maxima (training scratch), adamw4_vmax fills them from the
// gradient and the old codes, adamw_{f32,bf16}_4bit updates w, m and v (decoding v under the
// old maxima, encoding under the new), and the new maxima are copied over the old ones. A
// one-row parameter is one launch: its v is normalised per block of 128 within the warp that
// owns the block. A bf16 gradient takes the kernels' _gb forms (gradSuffix).
func (b *Backend) adamW4(w *Weight, g *Tensor, s *AdamState, k optim.CoeffScalars, gscale float32, sr int, key uint32, h backend.AdamWHyper) error {
	rows, cols := s.rows, s.cols
	n := int64(rows) * int64(cols)
	matrix := rows > 1
	var newNorm devPtr
	if matrix {
		nbytes := 4 * (int64(rows) + int64(cols))
		var err error
		if newNorm, err = b.scratch(nbytes, "adamw 4bit maxima of v"); err != nil {
			return err
		}
		if err := memsetD8(newNorm, 0, nbytes); err != nil {
			return fmt.Errorf("4bit maxima of v: %w", err)
		}
		per := max(vmaxRows, (rows+65534)/65535)
		if err := launch(b.fns["adamw4_vmax"+gradSuffix(g)], [3]int{(cols + 255) / 256, (rows + per - 1) / per, 1}, [3]int{256, 1, 1}, 0,
			ptrArg(newNorm), ptrArg(newNorm+devPtr(4*rows)), ptrArg(g.ptr), ptrArg(s.v), ptrArg(s.vs), ptrArg(s.vs+devPtr(4*rows)),
			f32Arg(k.B2), f32Arg(k.OMB2), f32Arg(gscale), intArg(rows), intArg(cols), intArg(per)); err != nil {
			return fmt.Errorf("4bit maxima of v: %w", err)
		}
	}
	name := "adamw_" + w.kind + "_4bit" + gradSuffix(g)
	grid, err := b.adamGrid(name, (n+adamChunk-1)/adamChunk)
	if err != nil {
		return fmt.Errorf("4bit update: %w", err)
	}
	mat := 0
	if matrix {
		mat = 1
	}
	args := []arg{ptrArg(w.ptr), ptrArg(g.ptr), ptrArg(s.m), ptrArg(s.v), ptrArg(s.ms), ptrArg(s.vs), ptrArg(newNorm)}
	mkey := optim.Bit4Key(h.Seed, uint64(h.Step), h.Param)
	args = append(append(args, adamScalarArgs(k, gscale)...), intArg(sr), arg(key), arg(mkey),
		sizeArg(n), sizeArg(int64(rows)), arg(uint32(cols)), intArg(mat))
	if err := launch(b.fns[name], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, 0, args...); err != nil {
		return fmt.Errorf("4bit update: %w", err)
	}
	if matrix {
		if err := memcpyDtoD(s.vs, newNorm, 4*(int64(rows)+int64(cols))); err != nil {
			return fmt.Errorf("4bit maxima of v: %w", err)
		}
	}
	return nil
}
