package tensor

import (
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
