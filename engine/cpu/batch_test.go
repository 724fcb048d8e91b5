package cpu

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// batchShape is one configuration of the batched ops' tests.
type batchShape struct {
	nHeads, nKV, headDim int
	capacity             int
	positions            []int // one per sequence
}

var batchShapes = []batchShape{
	{nHeads: 4, nKV: 2, headDim: 16, capacity: 9, positions: []int{0, 8, 3}},       // empty history; a full sequence
	{nHeads: 2, nKV: 2, headDim: 8, capacity: 1, positions: []int{0}},              // one sequence, one row
	{nHeads: 8, nKV: 1, headDim: 32, capacity: 40, positions: []int{39, 0, 17, 5}}, // GQA 8:1
	{nHeads: 6, nKV: 3, headDim: 4, capacity: 6, positions: []int{5, 4, 3, 2, 1, 0, 5}},
}

// rowView is RowView that fails the test on error.
func rowView(t *testing.T, b *Backend, x backend.Tensor, row0, n int) backend.Tensor {
	t.Helper()
	v, err := b.RowView(x, row0, n)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func equalBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: element %d is %v, the composition gives %v (max diff %.3g)", what, i, got[i], want[i], maxDiff(got, want))
		}
	}
}

// TestBatched checks every backend.Batched op against the composition of single-sequence ops
// its doc names, applied to row views: the results must be identical, bit for bit.
func TestBatched(t *testing.T) {
	for i, s := range batchShapes {
		t.Run(fmt.Sprintf("%dx%d/%d_cap%d_B%d", s.nHeads, s.nKV, s.headDim, s.capacity, len(s.positions)), func(t *testing.T) {
			b := New()
			b.SetWorkers(3)
			r := rand.New(rand.NewPCG(uint64(i), 5))
			B, qw, kw := len(s.positions), s.nHeads*s.headDim, s.nKV*s.headDim
			const theta = 1e6
			rows := backend.CacheRows(s.capacity, s.positions)

			t.Run("RoPEAt", func(t *testing.T) {
				xv := randVec(r, B*qw, 2)
				x := upload(t, b, B, qw, xv)
				got := upload(t, b, B, qw, nil)
				if err := b.RoPEAt(got, x, s.headDim, s.positions, theta); err != nil {
					t.Fatal(err)
				}
				want := upload(t, b, B, qw, nil)
				for r, p := range s.positions {
					if err := b.RoPE(rowView(t, b, want, r, 1), rowView(t, b, x, r, 1), s.headDim, p, theta); err != nil {
						t.Fatal(err)
					}
				}
				equalBits(t, "rope at positions", download(t, b, got), download(t, b, want))
				// In place, as the model calls it.
				if err := b.RoPEAt(x, x, s.headDim, s.positions, theta); err != nil {
					t.Fatal(err)
				}
				equalBits(t, "rope at positions in place", download(t, b, x), download(t, b, want))
			})

			t.Run("ScatterRows", func(t *testing.T) {
				src := upload(t, b, B, kw, randVec(r, B*kw, 1))
				cache := randVec(r, B*s.capacity*kw, 1)
				got, want := upload(t, b, B*s.capacity, kw, cache), upload(t, b, B*s.capacity, kw, cache)
				if err := b.ScatterRows(got, rows, src); err != nil {
					t.Fatal(err)
				}
				for r, row := range rows {
					if err := b.CopyRows(want, row, src, r, 1); err != nil {
						t.Fatal(err)
					}
				}
				equalBits(t, "scatter rows", download(t, b, got), download(t, b, want))
			})

			t.Run("AttentionBatch", func(t *testing.T) {
				q := upload(t, b, B, qw, randVec(r, B*qw, 1))
				k := upload(t, b, B*s.capacity, kw, randVec(r, B*s.capacity*kw, 1))
				v := upload(t, b, B*s.capacity, kw, randVec(r, B*s.capacity*kw, 1))
				got, want := upload(t, b, B, qw, nil), upload(t, b, B, qw, nil)
				if err := b.AttentionBatch(got, q, k, v, s.capacity, s.positions, s.nHeads, s.nKV, s.headDim); err != nil {
					t.Fatal(err)
				}
				for r, p := range s.positions {
					kr, vr := rowView(t, b, k, r*s.capacity, p+1), rowView(t, b, v, r*s.capacity, p+1)
					if err := b.Attention(rowView(t, b, want, r, 1), rowView(t, b, q, r, 1), kr, vr, p, s.nHeads, s.nKV, s.headDim); err != nil {
						t.Fatal(err)
					}
				}
				equalBits(t, "attention batch", download(t, b, got), download(t, b, want))
			})

			t.Run("QKNormRoPECacheBatch", func(t *testing.T) {
				q := upload(t, b, B, qw, randVec(r, B*qw, 3))
				k := upload(t, b, B, kw, randVec(r, B*kw, 3))
				v := upload(t, b, B, kw, randVec(r, B*kw, 3))
				qn := upload(t, b, 1, s.headDim, randVec(r, s.headDim, 1))
				kn := upload(t, b, 1, s.headDim, randVec(r, s.headDim, 1))
				cacheK, cacheV := randVec(r, B*s.capacity*kw, 1), randVec(r, B*s.capacity*kw, 1)
				const eps = 1e-6
				qr, kr := upload(t, b, B, qw, nil), upload(t, b, B, kw, nil)
				kc, vc := upload(t, b, B*s.capacity, kw, cacheK), upload(t, b, B*s.capacity, kw, cacheV)
				if err := b.QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kc, vc, s.headDim, s.capacity, s.positions, theta, eps); err != nil {
					t.Fatal(err)
				}
				// Fused.QKNormRoPECache's composition, one sequence at a time on row views.
				wqr, wkr := upload(t, b, B, qw, nil), upload(t, b, B, kw, nil)
				wkc, wvc := upload(t, b, B*s.capacity, kw, cacheK), upload(t, b, B*s.capacity, kw, cacheV)
				for r, p := range s.positions {
					qrr, krr := rowView(t, b, wqr, r, 1), rowView(t, b, wkr, r, 1)
					kcr, vcr := rowView(t, b, wkc, r*s.capacity, s.capacity), rowView(t, b, wvc, r*s.capacity, s.capacity)
					if err := firstErr(
						b.RMSNorm(qrr, rowView(t, b, q, r, 1), qn, eps),
						b.RMSNorm(krr, rowView(t, b, k, r, 1), kn, eps),
						b.RoPE(qrr, qrr, s.headDim, p, theta),
						b.RoPE(krr, krr, s.headDim, p, theta),
						b.CopyRows(kcr, p, krr, 0, 1),
						b.CopyRows(vcr, p, rowView(t, b, v, r, 1), 0, 1),
					); err != nil {
						t.Fatal(err)
					}
				}
				for _, c := range []struct {
					name      string
					got, want backend.Tensor
				}{{"qr", qr, wqr}, {"kr", kr, wkr}, {"k cache", kc, wkc}, {"v cache", vc, wvc}} {
					equalBits(t, "qk norm+rope+cache batch: "+c.name, download(t, b, c.got), download(t, b, c.want))
				}
			})
		})
	}
}

// TestBatchedErrors: every refused call names what is wrong and writes nothing.
func TestBatchedErrors(t *testing.T) {
	b := New()
	const B, capacity, nH, nKV, hd = 2, 4, 4, 2, 8
	qw, kw := nH*hd, nKV*hd
	r := rand.New(rand.NewPCG(9, 9))
	q := upload(t, b, B, qw, randVec(r, B*qw, 1))
	k := upload(t, b, B, kw, randVec(r, B*kw, 1))
	v := upload(t, b, B, kw, randVec(r, B*kw, 1))
	out := upload(t, b, B, qw, nil)
	kc := upload(t, b, B*capacity, kw, randVec(r, B*capacity*kw, 1))
	vc := upload(t, b, B*capacity, kw, randVec(r, B*capacity*kw, 1))
	qn, kn := upload(t, b, 1, hd, randVec(r, hd, 1)), upload(t, b, 1, hd, randVec(r, hd, 1))
	qr, kr := upload(t, b, B, qw, nil), upload(t, b, B, kw, nil)
	small := upload(t, b, 3*capacity, kw, nil)
	freed := upload(t, b, B, qw, nil)
	b.Free(freed)
	snapshot := func() [][]float32 {
		var s [][]float32
		for _, x := range []backend.Tensor{q, k, v, out, kc, vc, qr, kr} {
			s = append(s, download(t, b, x))
		}
		return s
	}
	before := snapshot()
	pos := []int{1, 3}
	for _, c := range []struct {
		name string
		call func() error
		want string
	}{
		{"rope: positions count", func() error { return b.RoPEAt(q, q, hd, []int{1}, 1e4) }, "1 positions for 2 rows"},
		{"rope: negative position", func() error { return b.RoPEAt(q, q, hd, []int{0, -3}, 1e4) }, "sequence 1 has position -3"},
		{"rope: odd head_dim", func() error { return b.RoPEAt(q, q, 7, pos, 1e4) }, "head_dim 7"},
		{"rope: shape", func() error { return b.RoPEAt(k, q, hd, pos, 1e4) }, "into out [2, 16]"},
		{"rope: theta", func() error { return b.RoPEAt(q, q, hd, pos, 0) }, "theta 0"},
		{"rope: shifted alias", func() error {
			three := upload(t, b, 3, qw, nil)
			return b.RoPEAt(rowView(t, b, three, 1, 2), rowView(t, b, three, 0, 2), hd, pos, 1e4)
		}, "out shares memory with x without being x"},
		{"rope: freed", func() error { return b.RoPEAt(freed, q, hd, pos, 1e4) }, "was freed"},
		{"scatter: width", func() error { return b.ScatterRows(kc, []int{0, 1}, q) }, "widths differ"},
		{"scatter: count", func() error { return b.ScatterRows(kc, []int{0}, k) }, "1 destination rows for the 2 rows"},
		{"scatter: range", func() error { return b.ScatterRows(kc, []int{0, 8}, k) }, "row 1 of src goes to row 8"},
		{"scatter: duplicate", func() error { return b.ScatterRows(kc, []int{5, 5}, k) }, "rows 0 and 1 of src both go to row 5"},
		{"scatter: overlap", func() error { return b.ScatterRows(kc, []int{0, 1}, rowView(t, b, kc, 2, 2)) }, "share memory"},
		{"attention: past capacity", func() error { return b.AttentionBatch(out, q, kc, vc, capacity, []int{1, 4}, nH, nKV, hd) }, "sequence 1 is at position 4, past its 4 cache rows"},
		{"attention: heads", func() error { return b.AttentionBatch(out, q, kc, vc, capacity, pos, nH, 3, hd) }, "KV heads must divide"},
		{"attention: cache rows", func() error { return b.AttentionBatch(out, q, small, small, capacity, pos, nH, nKV, hd) }, "for 2 sequences of 4 rows"},
		{"attention: out is q", func() error { return b.AttentionBatch(q, q, kc, vc, capacity, pos, nH, nKV, hd) }, "out and q are the same tensor"},
		{"attention: out is a view of q", func() error {
			return b.AttentionBatch(rowView(t, b, q, 0, B), q, kc, vc, capacity, pos, nH, nKV, hd)
		}, "out shares memory with q, k or v"},
		{"attention: capacity", func() error { return b.AttentionBatch(out, q, kc, vc, 0, pos, nH, nKV, hd) }, "capacity 0"},
		{"qk: norms", func() error {
			return b.QKNormRoPECacheBatch(qr, kr, q, k, v, kc, kn, kc, vc, hd, capacity, pos, 1e4, 1e-6)
		}, "q_norm has 128 and k_norm 8 elements"},
		{"qk: caches", func() error {
			return b.QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, small, vc, hd, capacity, pos, 1e4, 1e-6)
		}, "caches [12, 16] and [8, 16]"},
		{"qk: position", func() error {
			return b.QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kc, vc, hd, capacity, []int{7, 0}, 1e4, 1e-6)
		}, "sequence 0 is at position 7"},
		{"qk: aliasing", func() error {
			return b.QKNormRoPECacheBatch(q, kr, q, k, v, qn, kn, kc, vc, hd, capacity, pos, 1e4, 1e-6)
		}, "must not share memory"},
	} {
		err := c.call()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "cpu: ") {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
		after := snapshot()
		for i := range before {
			if !slices.Equal(before[i], after[i]) {
				t.Fatalf("%s: a refused call wrote tensor %d", c.name, i)
			}
		}
	}
}
