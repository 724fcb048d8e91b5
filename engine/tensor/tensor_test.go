package tensor

import (
	"encoding/binary"
	"math"
	"testing"
)

func TestF16RoundTripAllCodes(t *testing.T) {
	for c := 0; c < 1<<16; c++ {
		h := uint16(c)
		f := F16ToF32(h)
		back := F32ToF16(f)
		if math.IsNaN(float64(f)) {
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("NaN code %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != h {
			t.Fatalf("code %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestBF16RoundTripAllCodes(t *testing.T) {
	for c := 0; c < 1<<16; c++ {
		h := uint16(c)
		f := BF16ToF32(h)
		back := F32ToBF16(f)
		if math.IsNaN(float64(f)) {
			if !math.IsNaN(float64(BF16ToF32(back))) {
				t.Fatalf("NaN code %#04x lost", h)
			}
			continue
		}
		if back != h {
			t.Fatalf("code %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestRounding(t *testing.T) {
	cases := []struct {
		name string
		in   float32
		bf16 uint16
		f16  uint16
	}{
		{"one", 1, 0x3f80, 0x3c00},
		{"minus two", -2, 0xc000, 0xc000},
		{"f16 max", 65504, 0x4780, 0x7bff},
		{"f16 overflow", 70000, 0x4789, 0x7c00},
		{"smallest f16 subnormal", 5.960464477539063e-08, 0x3380, 0x0001},
		{"half of smallest subnormal ties to zero", 2.9802322387695312e-08, 0x3300, 0x0000},
		{"bf16 tie to even", math.Float32frombits(0x3f808000), 0x3f80, 0x3c04},
		{"bf16 tie to even up", math.Float32frombits(0x3f818000), 0x3f82, 0x3c0c},
	}
	for _, c := range cases {
		if got := F32ToBF16(c.in); got != c.bf16 {
			t.Errorf("%s: bf16(%v) = %#04x, want %#04x", c.name, c.in, got, c.bf16)
		}
		if got := F32ToF16(c.in); got != c.f16 {
			t.Errorf("%s: f16(%v) = %#04x, want %#04x", c.name, c.in, got, c.f16)
		}
	}
}

func TestHostValidateAndDecode(t *testing.T) {
	h, err := FromFloat32s("w", BF16, []int{2, 2}, []float32{1, -2, 0.5, 3})
	if err != nil {
		t.Fatal(err)
	}
	v, err := h.Float32s(nil)
	if err != nil || v[1] != -2 || v[3] != 3 {
		t.Fatalf("decode = %v, %v", v, err)
	}
	h.Data = h.Data[:6]
	if err := h.Validate(); err == nil {
		t.Fatal("short data accepted")
	}
	if _, err := ParseDType("F7"); err == nil {
		t.Fatal("unknown dtype accepted")
	}
	if d, err := ParseDType("F8_E4M3"); err != nil || d != F8E4M3 {
		t.Fatalf("ParseDType(F8_E4M3) = %v, %v", d, err)
	}
}

// TestFloat32sLarge: a tensor of several parallelPer ranges decodes on several goroutines into the same
// values as element by element, for every float type, into a fresh and a reused dst.
func TestFloat32sLarge(t *testing.T) {
	n := 4*parallelPer + 12345
	for _, dt := range []DType{F32, F16, BF16, F64} {
		h := &Host{Name: "big", DType: dt, Shape: []int{n}, Data: make([]byte, n*dt.Size())}
		want := make([]float32, n)
		for i := range n {
			x := uint64(i)*0x9e3779b97f4a7c15 + 7
			switch dt {
			case F32:
				bits := uint32(x>>32)&0x3fffffff | uint32(x&1)<<31 // finite
				binary.LittleEndian.PutUint32(h.Data[4*i:], bits)
				want[i] = math.Float32frombits(bits)
			case F16:
				bits := uint16(x>>48) & 0x7bff
				binary.LittleEndian.PutUint16(h.Data[2*i:], bits)
				want[i] = F16ToF32(bits)
			case BF16:
				bits := uint16(x>>48) & 0xbf7f
				binary.LittleEndian.PutUint16(h.Data[2*i:], bits)
				want[i] = BF16ToF32(bits)
			case F64:
				v := float64(int64(x>>20)) / 1e6
				binary.LittleEndian.PutUint64(h.Data[8*i:], math.Float64bits(v))
				want[i] = float32(v)
			}
		}
		for _, dst := range [][]float32{nil, make([]float32, 3, n+1)} {
			got, err := h.Float32s(dst)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Fatalf("%v: %d values, want %d", dt, len(got), n)
			}
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%v: element %d is %v, want %v", dt, i, got[i], want[i])
				}
			}
		}
	}
}

// BenchmarkFloat32s decodes a Qwen3-4B gate_proj-sized bf16 matrix (9728 × 2560), as the
// loader does before quantizing.
func BenchmarkFloat32s(b *testing.B) {
	n := 9728 * 2560
	h := &Host{Name: "gate", DType: BF16, Shape: []int{9728, 2560}, Data: make([]byte, 2*n)}
	for i := range n {
		binary.LittleEndian.PutUint16(h.Data[2*i:], uint16(i)&0xbf7f)
	}
	dst := make([]float32, n)
	b.SetBytes(int64(2 * n))
	for b.Loop() {
		if _, err := h.Float32s(dst); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFirstNonFinite: the first NaN or Inf wherever it lies — small tensors on the caller, large
// ones split over goroutines (bad values in several ranges, the earliest reported) — for every
// float type; -1 when all are finite or the type is not a float.
func TestFirstNonFinite(t *testing.T) {
	// An Inf and a NaN of each type (signs and payloads varied), written at element i.
	bits := map[DType][2]uint64{F32: {0x7f800000, 0x7fc00000}, BF16: {0xff80, 0x7fc1}, F16: {0x7c00, 0xfe01},
		F64: {math.Float64bits(math.Inf(1)), math.Float64bits(math.NaN())}}
	put := func(h *Host, i int, nan bool) {
		v := bits[h.DType][0]
		if nan {
			v = bits[h.DType][1]
		}
		switch h.DType.Size() {
		case 2:
			binary.LittleEndian.PutUint16(h.Data[2*i:], uint16(v))
		case 4:
			binary.LittleEndian.PutUint32(h.Data[4*i:], uint32(v))
		default:
			binary.LittleEndian.PutUint64(h.Data[8*i:], v)
		}
	}
	big := 4*parallelPer + 999
	for _, c := range []struct {
		n    int
		bads []int // where NaN / Inf go, alternating
		want int
	}{
		{10, nil, -1}, {10, []int{7, 3}, 3}, {10, []int{0}, 0},
		{big, nil, -1}, {big, []int{big - 1}, big - 1},
		{big, []int{big - 5, big / 2, big/2 + 1, 3*big/4 + 2}, big / 2}, {big, []int{big / 3, 5}, 5},
	} {
		for _, dt := range []DType{F32, F16, BF16, F64} {
			h := &Host{Name: "x", DType: dt, Shape: []int{c.n}, Data: make([]byte, c.n*dt.Size())}
			for k, i := range c.bads {
				put(h, i, k%2 == 0)
			}
			got, err := h.FirstNonFinite()
			if err != nil || got != c.want {
				t.Errorf("%v n=%d bad at %v: got %d, %v; want %d", dt, c.n, c.bads, got, err, c.want)
			}
		}
	}
	if got, err := (&Host{Name: "q", DType: U8, Shape: []int{4}, Data: []byte{0xff, 0xff, 0xff, 0xff}}).FirstNonFinite(); got != -1 || err != nil {
		t.Errorf("U8: got %d, %v; want -1", got, err)
	}
	if _, err := (&Host{Name: "short", DType: F32, Shape: []int{4}, Data: make([]byte, 3)}).FirstNonFinite(); err == nil {
		t.Error("a tensor shorter than its shape: no error")
	}
}

// BenchmarkFirstNonFinite scans a Qwen3-4B gate_proj-sized bf16 matrix (all finite: the whole
// tensor is read), as the loader does before uploading or quantizing it.
func BenchmarkFirstNonFinite(b *testing.B) {
	n := 9728 * 2560
	h := &Host{Name: "gate", DType: BF16, Shape: []int{9728, 2560}, Data: make([]byte, 2*n)}
	for i := range n {
		binary.LittleEndian.PutUint16(h.Data[2*i:], uint16(i)&0xbf7f)
	}
	b.SetBytes(int64(2 * n))
	for b.Loop() {
		if i, err := h.FirstNonFinite(); err != nil || i >= 0 {
			b.Fatal(i, err)
		}
	}
}
