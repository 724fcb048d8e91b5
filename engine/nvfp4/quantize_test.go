package nvfp4

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func gaussian(n int, seed uint64, std float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	w := make([]float32, n)
	for i := range w {
		w[i] = float32(r.NormFloat64() * std)
	}
	return w
}

// refQuantize is an element-by-element restatement of both quantisers, written without the
// package's tables: the comparison-based E2M1 specification and the brute-force E4M3 encoder.
func refQuantize(w []float32, rows, cols int, seed bool) (packed, scales []byte, g float32) {
	g = 1
	if !seed {
		var amax float32
		for _, x := range w {
			amax = max(amax, float32(math.Abs(float64(x))))
		}
		g = amax / 2688
		if g == 0 {
			g = 1
		}
	}
	packed = make([]byte, rows*cols/2)
	scales = make([]byte, rows*cols/16)
	for b := range scales {
		blk := w[b*16 : b*16+16]
		var bmax float32
		for _, x := range blk {
			bmax = max(bmax, float32(math.Abs(float64(x))))
		}
		var denom float32
		if seed {
			s := e4m3Nearest(min(max(bmax/6, 1.0/65536), 448))
			scales[b] = s
			denom = float32(e4m3FromFields(s)) + 1e-12
		} else {
			bs := bmax / (6 * g)
			if bs == 0 {
				bs = 1
			}
			s := e4m3Nearest(bs)
			if s == 0 {
				s = 1
			}
			scales[b] = s
			denom = float32(e4m3FromFields(s)) * g
		}
		for j, x := range blk {
			v := x / denom
			var q byte
			if seed {
				q = encodeE2M1Slow(min(max(v, -6), 6), true)
			} else {
				q = encodeE2M1Slow(v, false)
			}
			packed[(b*16+j)/2] |= q << (4 * (j & 1))
		}
	}
	return
}

func TestQuantizeMatchesSpecification(t *testing.T) {
	spiky := gaussian(512*256, 4, 1)
	for i := range spiky {
		if i%97 == 0 {
			spiky[i] *= 50
		}
	}
	tiny := gaussian(64*32, 5, 1e-3)
	zeroRow := gaussian(8*64, 6, 0.5)
	clear(zeroRow[64:128])
	cases := []struct {
		name       string
		w          []float32
		rows, cols int
	}{
		{"gaussian", gaussian(32*128, 1, 0.02), 32, 128},
		{"spiky large (parallel)", spiky, 512, 256},
		{"small values", tiny, 64, 32},
		{"zero row", zeroRow, 8, 64},
		{"all zero", make([]float32, 2*16), 2, 16},
		{"one block", []float32{6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5, -1e-9}, 1, 16},
	}
	for _, c := range cases {
		for _, seed := range []bool{false, true} {
			name := c.name + map[bool]string{false: "/modelopt", true: "/seed"}[seed]
			t.Run(name, func(t *testing.T) {
				quant := QuantizeModelOpt
				if seed {
					quant = QuantizeSeed
				}
				m, err := quant(c.w, c.rows, c.cols)
				if err != nil {
					t.Fatal(err)
				}
				if err := m.Validate(); err != nil {
					t.Fatal(err)
				}
				p, s, g := refQuantize(c.w, c.rows, c.cols, seed)
				if m.Global != g {
					t.Errorf("tensor scale %v, want %v", m.Global, g)
				}
				if i := firstDiff(m.Scales, s); i >= 0 {
					t.Errorf("scale [%d,%d] = %#02x, want %#02x", i/(c.cols/16), i%(c.cols/16), m.Scales[i], s[i])
				}
				if i := firstDiff(m.Packed, p); i >= 0 {
					t.Errorf("packed [%d,%d] = %#02x, want %#02x", i/(c.cols/2), i%(c.cols/2), m.Packed[i], p[i])
				}
			})
		}
	}
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// gridMatrix builds a matrix whose values are exactly representable: random codes (no -0),
// random block scales with a ±6 in every block, g a power of two and one block at scale 448.
func gridMatrix(rows, cols int, g float32, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 9))
	w := make([]float32, rows*cols)
	for b := 0; b < rows*cols/16; b++ {
		s := byte(0x08 + r.IntN(0x7e-0x08+1)) // normal scales, so the seed's 1e-12 cannot matter
		if b == 0 {
			s = 0x7e
		}
		f := DecodeE4M3(s) * g
		for j := range 16 {
			c := byte(r.IntN(15) + 1) // codes 1..15: no -0, which decodes to 0 and re-encodes as 0
			if j == r.IntN(16) || j == 15 {
				c = 7 | byte(r.IntN(2))<<3
			}
			w[b*16+j] = DecodeE2M1(c) * f
		}
	}
	return w
}

func TestRoundTripOnGrid(t *testing.T) {
	// ModelOpt: dequantise(quantise(W)) == W when W lies on the grid and g = amax/2688 exactly.
	w := gridMatrix(16, 64, 1.0/1024, 1)
	m, err := QuantizeModelOpt(w, 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if m.Global != 1.0/1024 {
		t.Fatalf("tensor scale %v, want 2^-10", m.Global)
	}
	if d := m.Dequantize(); !slices.Equal(d, w) {
		t.Fatalf("grid values did not survive ModelOpt quantisation (relative RMSE %v)", RelRMSE(w, m))
	}
	// And quantise(dequantise(q)) == q, for both quantisers.
	m2, _ := QuantizeModelOpt(m.Dequantize(), 16, 64)
	if !slices.Equal(m2.Packed, m.Packed) || !slices.Equal(m2.Scales, m.Scales) || m2.Global != m.Global {
		t.Fatal("ModelOpt re-quantisation of its own output changed it")
	}
	ws := gridMatrix(16, 64, 1, 2)
	s, _ := QuantizeSeed(ws, 16, 64)
	if d := s.Dequantize(); !slices.Equal(d, ws) {
		t.Fatalf("grid values did not survive seed quantisation (relative RMSE %v)", RelRMSE(ws, s))
	}
	s2, _ := QuantizeSeed(s.Dequantize(), 16, 64)
	if !slices.Equal(s2.Packed, s.Packed) || !slices.Equal(s2.Scales, s.Scales) {
		t.Fatal("seed re-quantisation of its own output changed it")
	}
}

func TestErrorBound(t *testing.T) {
	// Every element lands within one grid step of the block's scale: |x - x̂| <= s*g (the
	// widest half-gap is 1 between 4 and 6; saturation after E4M3 rounding of the scale adds at
	// most 6/16).
	w := gaussian(64*256, 7, 0.05)
	m, _ := QuantizeModelOpt(w, 64, 256)
	d := m.Dequantize()
	for i, x := range w {
		f := float64(DecodeE4M3(m.Scales[i/16]) * m.Global)
		if e := math.Abs(float64(x) - float64(d[i])); e > f*(1+1e-6) {
			t.Fatalf("element [%d,%d] = %v decoded %v: error %v exceeds step %v", i/256, i%256, x, d[i], e, f)
		}
		if q := m.Code(i/256, i%256); DecodeE2M1(q)*float32(f) != d[i] {
			t.Fatalf("Code(%d,%d) = %d disagrees with the decoded value", i/256, i%256, q)
		}
	}
}

func TestRelRMSEGaussian(t *testing.T) {
	w := gaussian(256*512, 1, 0.02)
	m, err := QuantizeModelOpt(w, 256, 512)
	if err != nil {
		t.Fatal(err)
	}
	e := RelRMSE(w, m)
	if e < 0.085 || e > 0.10 {
		t.Fatalf("relative RMSE %.4f, expected about 0.09", e)
	}
	s, _ := QuantizeSeed(w, 256, 512)
	es := RelRMSE(w, s)
	if es < 0.085 || es > 0.11 {
		t.Fatalf("seed relative RMSE %.4f, expected about 0.09", es)
	}
	t.Logf("relative RMSE on N(0, 0.02) [256, 512]: ModelOpt %.4f, seed variant %.4f", e, es)
}

func TestRelRMSEEdges(t *testing.T) {
	z, _ := QuantizeModelOpt(make([]float32, 16), 1, 16)
	if e := RelRMSE(make([]float32, 16), z); e != 0 {
		t.Errorf("zeros vs zeros: %v", e)
	}
	if e := RelRMSE(make([]float32, 15), z); !math.IsNaN(e) {
		t.Errorf("length mismatch: %v, want NaN", e)
	}
	one := &Matrix{Rows: 1, Cols: 16, Packed: []byte{0x02, 0, 0, 0, 0, 0, 0, 0}, Scales: []byte{0x38}, Global: 1}
	if e := RelRMSE(make([]float32, 16), one); !math.IsInf(e, 1) {
		t.Errorf("zeros vs nonzero: %v, want +Inf", e)
	}
}

func TestAllZeroTensor(t *testing.T) {
	m, err := QuantizeModelOpt(make([]float32, 4*32), 4, 32)
	if err != nil {
		t.Fatal(err)
	}
	if m.Global != 1 {
		t.Errorf("all-zero tensor scale %v, want 1", m.Global)
	}
	for i, s := range m.Scales {
		if s != 0x38 {
			t.Fatalf("scale %d = %#02x, want 1.0 (0x38)", i, s)
		}
	}
	for _, x := range m.Dequantize() {
		if x != 0 {
			t.Fatal("all-zero tensor decoded to nonzero")
		}
	}
}

func TestModelOptScaleUnderflow(t *testing.T) {
	// A block far below the tensor's amax would get an E4M3 scale of 0 (ModelOpt then divides
	// by zero); it gets the smallest scale instead and keeps some of its values.
	w := make([]float32, 32)
	w[0] = 1000
	for j := 16; j < 32; j++ {
		w[j] = 1e-4 * float32(j-15) // block amax 1.6e-3: amax_block/(6g) = 7.2e-4 < 2^-10
	}
	m, err := QuantizeModelOpt(w, 1, 32)
	if err != nil {
		t.Fatal(err)
	}
	if m.Scales[1] != 0x01 {
		t.Fatalf("underflowing block scale %#02x, want 0x01", m.Scales[1])
	}
	if d := m.Dequantize(); d[31] == 0 {
		t.Fatal("underflowing block decoded to zero")
	}
}

func TestSeedUnderflow(t *testing.T) {
	// Known seed behaviour (seed-lessons.md): its scale clamp floor 2^-16 is below E4M3's
	// smallest subnormal 2^-9, so a block with amax <= 6*2^-10 (~0.0059) gets scale 0 and
	// decodes to all zeros. ModelOpt's tensor scale keeps such a block.
	for _, amax := range []float32{0.005, 0.0058, 6.0 / 1024} {
		w := gaussian(16, 2, 1)
		var a float32
		for _, x := range w {
			a = max(a, float32(math.Abs(float64(x))))
		}
		for i := range w {
			w[i] *= amax / a
		}
		s, err := QuantizeSeed(w, 1, 16)
		if err != nil {
			t.Fatal(err)
		}
		if s.Scales[0] != 0 {
			t.Errorf("amax %v: seed scale %#02x, want 0", amax, s.Scales[0])
		}
		for _, x := range s.Dequantize() {
			if x != 0 {
				t.Fatalf("amax %v: seed variant kept %v; expected the documented underflow to zero", amax, x)
			}
		}
		m, _ := QuantizeModelOpt(w, 1, 16)
		if e := RelRMSE(w, m); e > 0.2 {
			t.Errorf("amax %v: ModelOpt lost the small block: relative RMSE %v", amax, e)
		}
	}
	// Just above the threshold the seed keeps the block.
	w := []float32{0.006, -0.003, 0.001, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	s, _ := QuantizeSeed(w, 1, 16)
	if s.Scales[0] != 0x01 || s.Dequantize()[0] == 0 {
		t.Errorf("amax 0.006: scale %#02x, decoded %v", s.Scales[0], s.Dequantize()[0])
	}
}

func TestQuantizeErrors(t *testing.T) {
	nan := make([]float32, 32)
	nan[17] = float32(math.NaN())
	inf := make([]float32, 32)
	inf[5] = float32(math.Inf(-1))
	cases := []struct {
		name       string
		w          []float32
		rows, cols int
		want       string
	}{
		{"cols not multiple of 16", make([]float32, 30), 2, 15, "multiple of 16"},
		{"zero rows", nil, 0, 16, "[0, 16]"},
		{"negative cols", make([]float32, 16), 1, -16, "[1, -16]"},
		{"too few values", make([]float32, 31), 2, 16, "31 values for shape [2, 16]"},
		{"too many values", make([]float32, 33), 2, 16, "33 values"},
		{"NaN", nan, 2, 16, "row 1, column 1"},
		{"Inf", inf, 1, 32, "-Inf at row 0, column 5"},
	}
	for _, c := range cases {
		for name, quant := range map[string]func([]float32, int, int) (*Matrix, error){"modelopt": QuantizeModelOpt, "seed": QuantizeSeed} {
			m, err := quant(c.w, c.rows, c.cols)
			if err == nil || !strings.Contains(err.Error(), c.want) || m != nil {
				t.Errorf("%s/%s: err %v, want one mentioning %q", c.name, name, err, c.want)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	good := func() *Matrix {
		return &Matrix{Rows: 2, Cols: 32, Packed: make([]byte, 32), Scales: []byte{0x38, 0x38, 0x38, 0x38}, Global: 1}
	}
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(m *Matrix)
		want string
	}{
		{"cols", func(m *Matrix) { m.Cols = 24 }, "not a multiple of the block size"},
		{"rows", func(m *Matrix) { m.Rows = 0 }, "must be positive"},
		{"short packed", func(m *Matrix) { m.Packed = m.Packed[:31] }, "packed data has 31 bytes, want 32"},
		{"long scales", func(m *Matrix) { m.Scales = append(m.Scales, 0) }, "block scales have 5 bytes, want 4"},
		{"NaN scale", func(m *Matrix) { m.Scales[3] = 0xff }, "row 1, block 1 (columns 16..31) is NaN"},
		{"NaN global", func(m *Matrix) { m.Global = float32(math.NaN()) }, "tensor scale NaN"},
		{"Inf global", func(m *Matrix) { m.Global = float32(math.Inf(1)) }, "tensor scale +Inf"},
		{"negative global", func(m *Matrix) { m.Global = -1 }, "tensor scale -1"},
	}
	for _, c := range cases {
		m := good()
		c.edit(m)
		if err := m.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	var nilm *Matrix
	if err := nilm.Validate(); err == nil {
		t.Error("nil matrix accepted")
	}
}

func TestDecodeRows(t *testing.T) {
	w := gaussian(20*48, 8, 1)
	m, _ := QuantizeModelOpt(w, 20, 48)
	all := m.Dequantize()
	// Every element is E2M1[code] * (scale * g), in that order of rounding.
	for i := range all {
		r, c := i/48, i%48
		want := DecodeE2M1(m.Code(r, c)) * (DecodeE4M3(m.Scales[r*3+c/16]) * m.Global)
		if all[i] != want {
			t.Fatalf("[%d,%d] = %v, want %v", r, c, all[i], want)
		}
	}
	dst := make([]float32, 5*48+7)
	for i := range dst {
		dst[i] = -99
	}
	m.DecodeRows(dst, 3, 8)
	if !slices.Equal(dst[:5*48], all[3*48:8*48]) {
		t.Error("DecodeRows(3, 8) differs from Dequantize")
	}
	if dst[5*48] != -99 {
		t.Error("DecodeRows wrote past its rows")
	}
	m.DecodeRow(dst, 19)
	if !slices.Equal(dst[:48], all[19*48:]) {
		t.Error("DecodeRow(19) differs from Dequantize")
	}
	m.DecodeRows(dst, 4, 4) // empty range: no-op
	if n := testing.AllocsPerRun(10, func() { m.DecodeRows(dst, 0, 5) }); n != 0 {
		t.Errorf("DecodeRows allocates %v times", n)
	}
	for _, bad := range [][2]int{{-1, 2}, {5, 4}, {0, 21}, {0, 6}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("DecodeRows(%d, %d) did not panic", bad[0], bad[1])
				}
			}()
			m.DecodeRows(dst, bad[0], bad[1])
		}()
	}
}

func BenchmarkQuantizeModelOpt(b *testing.B) {
	w := gaussian(9728*2560, 3, 0.02)
	b.SetBytes(int64(len(w) * 4))
	for b.Loop() {
		if _, err := QuantizeModelOpt(w, 9728, 2560); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQuantizeSeed(b *testing.B) {
	w := gaussian(9728*2560, 3, 0.02)
	b.SetBytes(int64(len(w) * 4))
	for b.Loop() {
		if _, err := QuantizeSeed(w, 9728, 2560); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeRows decodes the whole [2560, 9728] matrix (a down_proj of Qwen3-4B) in
// 64-row tiles, as the CPU matmul does; bytes/s counts the float32 output.
func BenchmarkDecodeRows(b *testing.B) {
	const rows, cols, tile = 2560, 9728, 64
	m, _ := QuantizeModelOpt(gaussian(rows*cols, 3, 0.02), rows, cols)
	dst := make([]float32, tile*cols)
	b.SetBytes(rows * cols * 4)
	for b.Loop() {
		for r := 0; r < rows; r += tile {
			m.DecodeRows(dst, r, r+tile)
		}
	}
}
