package train

import (
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/qwengo/qwengo/engine/data"
)

// HeldOut is the loss and perplexity on held-out samples.
type HeldOut struct {
	Loss       float64 `json:"loss"`
	Perplexity float64 `json:"perplexity"`
	Targets    int     `json:"targets"`
}

// EvalLoss scores samples in batches of b without changing the model.
func EvalLoss(ctx context.Context, m Differentiable, samples []*data.Sample, b, pad int, loss Loss) (HeldOut, error) {
	if loss == nil {
		loss = CrossEntropy{}
	}
	var sum float64
	var n int
	for i := 0; i < len(samples); i += b {
		batch := data.MakeBatch(samples[i:min(i+b, len(samples))], pad)
		var s float64
		var c int
		var err error
		if ev, ok := m.(Evaluator); ok {
			s, c, err = ev.LossOnly(ctx, batch, loss)
		} else {
			s, c, _, err = m.Grad(ctx, batch, loss)
		}
		if err != nil {
			return HeldOut{}, err
		}
		sum += s
		n += c
	}
	if n == 0 {
		return HeldOut{}, fmt.Errorf("eval: no target tokens in %d samples", len(samples))
	}
	l := sum / float64(n)
	return HeldOut{Loss: l, Perplexity: math.Exp(l), Targets: n}, nil
}

// RepN is the share of repeated n-grams in ids: 1 - distinct/total (0 = no repetition). The
// seed's collapsed model ("我是 F# 之神之神之神…") scores near 1.
func RepN(ids []int, n int) float64 {
	total := len(ids) - n + 1
	if n <= 0 || total <= 0 {
		return 0
	}
	seen := map[string]bool{}
	for i := 0; i < total; i++ {
		seen[fmt.Sprint(ids[i:i+n])] = true
	}
	return 1 - float64(len(seen))/float64(total)
}

// DistinctN is the number of distinct n-grams over all outputs divided by their total count
// (diversity across answers: low when every prompt gets the same reply).
func DistinctN(outputs [][]int, n int) float64 {
	seen := map[string]bool{}
	total := 0
	for _, ids := range outputs {
		for i := 0; i+n <= len(ids); i++ {
			seen[fmt.Sprint(ids[i:i+n])] = true
			total++
		}
	}
	if total == 0 {
		return 0
	}
	return float64(len(seen)) / float64(total)
}

// HitRate is the share of outputs containing target (after trimming spaces).
func HitRate(outputs []string, target string) float64 {
	if len(outputs) == 0 {
		return 0
	}
	target = strings.TrimSpace(target)
	hits := 0
	for _, o := range outputs {
		if strings.Contains(o, target) {
			hits++
		}
	}
	return float64(hits) / float64(len(outputs))
}
