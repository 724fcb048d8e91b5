package nvfp4_test

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/nvfp4"
)

// Quantise a small matrix the ModelOpt way, look at its storage and decode one row.
func ExampleQuantizeModelOpt() {
	w := make([]float32, 2*32)
	for i := range w {
		w[i] = float32(i%7-3)*0.01 + float32(i%5)*0.001
	}
	m, err := nvfp4.QuantizeModelOpt(w, 2, 32)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("[%d, %d]: %d packed bytes, %d scales, %d bytes in all\n", m.Rows, m.Cols, len(m.Packed), len(m.Scales), m.Bytes())
	row := make([]float32, m.Cols)
	m.DecodeRow(row, 0)
	fmt.Println(row[:7])
	fmt.Printf("relative RMSE %.3f\n", nvfp4.RelRMSE(w, m))
	// Output:
	// [2, 32]: 32 packed bytes, 4 scales, 40 bytes in all
	// [-0.033999998 -0.016999999 -0.0084999995 0.002833333 0.011333332 0.022666665 0.033999998]
	// relative RMSE 0.110
}

// The seed variant has no tensor scale, so a block with amax below about 0.0059 decodes to
// zeros (-0 where the input was negative); ModelOpt keeps it.
func ExampleQuantizeSeed() {
	w := []float32{0.004, -0.002, 0.001, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	s, _ := nvfp4.QuantizeSeed(w, 1, 16)
	m, _ := nvfp4.QuantizeModelOpt(w, 1, 16)
	fmt.Println("seed:    ", s.Dequantize()[:3], "scale byte", s.Scales[0])
	fmt.Println("modelopt:", m.Dequantize()[:3])
	// Output:
	// seed:     [0 -0 0] scale byte 0
	// modelopt: [0.004 -0.002 0.001]
}

// Decode E4M3 bytes, including the exponent-15 codes that are finite.
func ExampleDecodeE4M3() {
	for _, b := range []byte{0x01, 0x08, 0x38, 0x78, 0x7e, 0x7f} {
		fmt.Printf("%#02x = %v\n", b, nvfp4.DecodeE4M3(b))
	}
	fmt.Printf("encode 500 -> %#02x (saturates)\n", nvfp4.EncodeE4M3(500))
	// Output:
	// 0x01 = 0.001953125
	// 0x08 = 0.015625
	// 0x38 = 1
	// 0x78 = 256
	// 0x7e = 448
	// 0x7f = NaN
	// encode 500 -> 0x7e (saturates)
}
