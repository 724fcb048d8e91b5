package backend

import "fmt"

// AdamWMoments is an AdamW state in host memory, in engine/optim's layout for its format, so
// that a checkpoint written from one backend loads on any other:
//
//   - "fp32": M and V hold the n moments as little-endian float32s; no scales.
//   - "int8": M holds m's int8 codes and V √v's uint8 codes, one byte an element; MScale and
//     VScale the absmax of m and of √v per block of AdamWInt8Block elements.
//   - "4bit": M and V hold the codes two to a byte (element i in the low nibble of byte i/2 when
//     i is even, the high one when odd); MScale is m's absmax per block of AdamW4bitBlock
//     elements; VScale is v's normaliser: for a matrix (Rows > 1) the Rows row maxima then the
//     Cols column maxima, for one row the absmax per block of AdamW4bitBlock.
type AdamWMoments struct {
	Format         string
	Rows, Cols     int
	M, V           []byte
	MScale, VScale []float32
}

// Block sizes of engine/optim's compressed moments (optim.Int8Block, optim.Bit4Block).
const (
	AdamWInt8Block = 64
	AdamW4bitBlock = 128
)

// AdamWStateIO is implemented by training backends whose AdamW states can be read out and
// written back (checkpoints; engine/devtrain's SaveOptimizer and LoadOptimizer).
type AdamWStateIO interface {
	// ReadAdamWState copies st to host memory.
	ReadAdamWState(st AdamWState) (*AdamWMoments, error)
	// WriteAdamWState replaces st's contents with m, which must have st's format and shape
	// (CheckAdamWMoments); nothing is written when it does not.
	WriteAdamWState(st AdamWState, m *AdamWMoments) error
}

// AdamWMomentLens returns the lengths of an AdamWMoments' four slices for a format and shape.
func AdamWMomentLens(format string, rows, cols int) (m, v, mScale, vScale int, err error) {
	if rows <= 0 || cols <= 0 {
		return 0, 0, 0, 0, fmt.Errorf("adamw moments: shape [%d, %d]", rows, cols)
	}
	n := rows * cols
	switch format {
	case "fp32":
		return 4 * n, 4 * n, 0, 0, nil
	case "int8":
		nb := (n + AdamWInt8Block - 1) / AdamWInt8Block
		return n, n, nb, nb, nil
	case "4bit":
		nb := (n + AdamW4bitBlock - 1) / AdamW4bitBlock
		norm := nb
		if rows > 1 {
			norm = rows + cols
		}
		return (n + 1) / 2, (n + 1) / 2, nb, norm, nil
	}
	return 0, 0, 0, 0, fmt.Errorf("adamw moments: format %q (want fp32, int8 or 4bit)", format)
}

// CheckAdamWMoments checks that m is a complete state of the given format and shape, naming
// the first part that is not.
func CheckAdamWMoments(m *AdamWMoments, format string, rows, cols int) error {
	if m == nil {
		return fmt.Errorf("adamw moments: none")
	}
	if m.Format != format || m.Rows != rows || m.Cols != cols {
		return fmt.Errorf("adamw moments: %s [%d, %d] for a %s [%d, %d] state", m.Format, m.Rows, m.Cols, format, rows, cols)
	}
	lm, lv, lms, lvs, err := AdamWMomentLens(format, rows, cols)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		name      string
		got, want int
	}{{"m", len(m.M), lm}, {"v", len(m.V), lv}, {"m scales", len(m.MScale), lms}, {"v scales", len(m.VScale), lvs}} {
		if c.got != c.want {
			return fmt.Errorf("adamw moments %s [%d, %d]: %s has %d entries, want %d", format, rows, cols, c.name, c.got, c.want)
		}
	}
	return nil
}
