// Package train is full-parameter fine-tuning: losses over logits, the trainer (atomic steps,
// cancellation between steps, callbacks), evaluation metrics, checkpoints that resume
// bit-identically, and the one-step probe with per-phase time and memory.
//
// The trainer drives any Differentiable model — one that can run forward and backward over a
// batch and hand back gradients per parameter — and keeps the master weights and moments in
// engine/optim. Losses see one sequence's logits at a time, so a model can compute them in
// chunks and never materialise [tokens × vocab] for the whole batch.
package train

import (
	"fmt"
	"math"
)

// Loss scores one sequence. logits holds T rows of V; ids are the sequence's tokens and
// mask[j] says ids[j] is a target, predicted from row j-1. Value returns the summed loss over
// targets, the number of targets, and writes d(sum)/d(logits) into dlogits (same shape).
type Loss interface {
	Name() string
	Value(logits []float32, T, V int, ids []int, mask []bool, dlogits []float32) (sum float64, count int)
}

// CrossEntropy is the mean negative log-likelihood of the target tokens: with chat data the
// reply plus <|im_end|> (prompt masked), with plain text every token (LM loss).
type CrossEntropy struct {
	// LabelSmoothing mixes the one-hot target with the uniform distribution (0 = off).
	LabelSmoothing float64
}

// Name implements Loss.
func (CrossEntropy) Name() string { return "ce" }

// Value implements Loss.
func (c CrossEntropy) Value(logits []float32, T, V int, ids []int, mask []bool, dlogits []float32) (float64, int) {
	clear(dlogits[:T*V])
	var sum float64
	n := 0
	eps := c.LabelSmoothing
	for j := 1; j < T; j++ {
		if !mask[j] {
			continue
		}
		row := logits[(j-1)*V : j*V]
		d := dlogits[(j-1)*V : j*V]
		lse := logSumExp(row)
		tgt := ids[j]
		nll := lse - float64(row[tgt])
		if eps > 0 {
			var mean float64
			for _, x := range row {
				mean += lse - float64(x)
			}
			nll = (1-eps)*nll + eps*mean/float64(V)
		}
		sum += nll
		n++
		for k, x := range row {
			p := math.Exp(float64(x) - lse)
			g := p - eps/float64(V)
			if k == tgt {
				g -= 1 - eps
			}
			d[k] = float32(g)
		}
	}
	return sum, n
}

func logSumExp(row []float32) float64 {
	m := math.Inf(-1)
	for _, x := range row {
		m = math.Max(m, float64(x))
	}
	var s float64
	for _, x := range row {
		s += math.Exp(float64(x) - m)
	}
	return m + math.Log(s)
}

// KLToReference adds Weight × KL(p_ref ‖ p_model) at the target positions to a base loss, so a
// fine-tune keeps the reference (base) model's distribution where it does not need to change.
// Ref returns the reference model's logits for a sequence (T rows of V).
type KLToReference struct {
	Base   Loss
	Weight float64
	Ref    func(ids []int) ([]float32, error)
	// Err records the first error from Ref (the loss interface has no error return).
	Err error
}

// Name implements Loss.
func (k *KLToReference) Name() string { return fmt.Sprintf("%s+%.3g·kl", k.Base.Name(), k.Weight) }

// Value implements Loss.
func (k *KLToReference) Value(logits []float32, T, V int, ids []int, mask []bool, dlogits []float32) (float64, int) {
	sum, n := k.Base.Value(logits, T, V, ids, mask, dlogits)
	ref, err := k.Ref(ids[:T])
	if err != nil || len(ref) < T*V {
		if k.Err == nil {
			k.Err = fmt.Errorf("kl reference: %v (%d values for %d×%d)", err, len(ref), T, V)
		}
		return sum, n
	}
	for j := 1; j < T; j++ {
		if !mask[j] {
			continue
		}
		row := logits[(j-1)*V : j*V]
		rr := ref[(j-1)*V : j*V]
		lm, lr := logSumExp(row), logSumExp(rr)
		var kl float64
		d := dlogits[(j-1)*V : j*V]
		for i := range row {
			pr := math.Exp(float64(rr[i]) - lr)
			pm := math.Exp(float64(row[i]) - lm)
			if pr > 0 {
				kl += pr * ((float64(rr[i]) - lr) - (float64(row[i]) - lm))
			}
			d[i] += float32(k.Weight * (pm - pr))
		}
		sum += k.Weight * kl
	}
	return sum, n
}

// L1Debug is the seed project's scalar debug loss: the mean absolute logit at the target
// positions. It trains nothing useful; it exists to reproduce the seed's plumbing checks.
type L1Debug struct{}

// Name implements Loss.
func (L1Debug) Name() string { return "l1-debug" }

// Value implements Loss.
func (L1Debug) Value(logits []float32, T, V int, ids []int, mask []bool, dlogits []float32) (float64, int) {
	clear(dlogits[:T*V])
	var sum float64
	n := 0
	for j := 1; j < T; j++ {
		if !mask[j] {
			continue
		}
		n++
		for i, x := range logits[(j-1)*V : j*V] {
			sum += math.Abs(float64(x)) / float64(V)
			s := float32(1) / float32(V)
			if x < 0 {
				s = -s
			}
			dlogits[(j-1)*V+i] = s
		}
	}
	return sum, n
}
