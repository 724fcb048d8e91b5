package devtrain

import "testing"

func TestAutoChunkRows(t *testing.T) {
	for _, c := range []struct{ vocab, want int }{
		{151936, 1728},   // Qwen3: 1.05 GB of float32 logits, a multiple of 64 rows
		{32000, 4096},    // smaller vocabularies: the 4096-row cap
		{512, 4096},      //
		{1 << 22, 64},    // exactly 64 rows of 1 GiB
		{3 << 21, 64},    // 42.7 rows: rounded down to 0, raised to the 64-row floor
		{10_000_000, 64}, //
	} {
		if got := autoChunkRows(c.vocab); got != c.want {
			t.Errorf("autoChunkRows(%d) = %d, want %d", c.vocab, got, c.want)
		}
	}
}
