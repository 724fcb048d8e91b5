package format

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

func TestCheckFinite(t *testing.T) {
	f32 := func(shape []int, v ...float32) *tensor.Host {
		h, err := tensor.FromFloat32s("w", tensor.F32, shape, v)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	conv := func(dt tensor.DType, shape []int, v ...float32) *tensor.Host {
		h, err := tensor.FromFloat32s("w", dt, shape, v)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	f64 := func(shape []int, v ...float64) *tensor.Host {
		h := &tensor.Host{Name: "w", DType: tensor.F64, Shape: shape, Data: make([]byte, 8*len(v))}
		for i, x := range v {
			binary.LittleEndian.PutUint64(h.Data[8*i:], math.Float64bits(x))
		}
		return h
	}
	raw := func(dt tensor.DType, shape []int, b ...byte) *tensor.Host {
		return &tensor.Host{Name: "w", DType: dt, Shape: shape, Data: b}
	}
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	cases := []struct {
		name string
		t    *tensor.Host
		want string // "" for no error
	}{
		{"f32 finite", f32([]int{3}, 1, -2, math.MaxFloat32), ""},
		{"f32 NaN", f32([]int{2, 3}, 1, 2, 3, 4, nan, 6), `tensor "w": F32[2 3] element 4 [1 1] is NaN`},
		{"f32 -Inf", f32([]int{2}, -inf, 0), "element 0 [0] is -Inf"},
		{"f32 count", f32([]int{2, 2}, 0, inf, nan, inf), "element 1 [0 1] is +Inf (3 non-finite elements in all)"},
		{"f32 scalar", f32([]int{}, nan), "F32[] element 0 [] is NaN"},
		{"f16 finite", conv(tensor.F16, []int{2}, 65504, -1e-7), ""},
		{"f16 overflow to Inf", conv(tensor.F16, []int{3}, 1, 1e6, 0), "F16[3] element 1 [1] is +Inf"},
		{"f16 NaN", conv(tensor.F16, []int{1, 1, 2}, 0, nan), "element 1 [0 0 1] is NaN"},
		{"bf16 finite", conv(tensor.BF16, []int{2}, 3e38, -3e38), ""},
		{"bf16 -Inf", conv(tensor.BF16, []int{3, 2}, 0, 0, 0, 0, 0, -inf), "BF16[3 2] element 5 [2 1] is -Inf"},
		{"bf16 NaN", conv(tensor.BF16, []int{2}, nan, 1), "element 0 [0] is NaN"},
		{"f64 large finite", f64([]int{2}, 1e300, -1e300), ""},
		{"f64 NaN", f64([]int{2}, 0, math.NaN()), "F64[2] element 1 [1] is NaN"},
		{"f64 Inf", f64([]int{1}, math.Inf(-1)), "is -Inf"},
		{"e4m3 max", raw(tensor.F8E4M3, []int{3}, 0x7e, 0xfe, 0x00), ""},
		{"e4m3 NaN", raw(tensor.F8E4M3, []int{2, 2}, 0x38, 0x38, 0x38, 0xff), "F8_E4M3[2 2] element 3 [1 1] is NaN (e4m3 code 0xFF)"},
		{"u8 passes", raw(tensor.U8, []int{2}, 0xff, 0x7f), ""},
		{"packed e2m1 passes", raw(tensor.F4E2M1x2, []int{1}, 0xff), ""},
		{"wrong length", raw(tensor.F32, []int{2}, 0, 0, 0), "needs 8 bytes, have 3"},
	}
	for _, c := range cases {
		err := CheckFinite(c.t)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}
