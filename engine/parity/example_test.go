package parity_test

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/parity"
)

// Compare the generation path (KV cache) with NVFP4 weights against the dense recompute path,
// then inject the seed's fp8-scale bug into layer 1 and let the report find it.
func ExampleCompare() {
	ctx := context.Background()
	model := "../qwen3/testdata/tiny-tied"
	ids := []int{1, 17, 250, 3, 499}

	a, _ := parity.ParseSpec("cpu:f32")
	b, _ := parity.ParseSpec("cpu:nvfp4:kv")
	r, err := parity.Compare(ctx, model, a, b, ids, parity.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.A.Name, "vs", r.B.Name, "→ first diverging:", r.FirstDivergingName)

	bug, _ := parity.ParseSpec("cpu:nvfp4:scalebug=1")
	r, err = parity.Compare(ctx, model, parity.MustParseSpec("cpu:nvfp4"), bug, ids, parity.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.B.Name, "→ first diverging:", r.FirstDivergingName, "; layer 0 max_abs:", r.Layers[1].MaxAbs)

	_, err = parity.Compare(ctx, model, a, parity.MustParseSpec("cuda:bf16"), ids, parity.Options{})
	fmt.Println(err != nil)
	// Output:
	// cpu:f32 vs cpu:nvfp4:kv → first diverging: layer 0
	// cpu:nvfp4:scalebug=1 → first diverging: layer 1 ; layer 0 max_abs: 0
	// true
}
