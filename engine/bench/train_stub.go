//go:build !devtrain

package bench

// train marks the training figures: engine/devtrain, the GPU training step, has not landed.
// When it has, train_devtrain.go (build tag devtrain today) becomes the implementation.
func (r *runner) train() {
	for i := range r.rep.Figures {
		f := &r.rep.Figures[i]
		if f.Status == "not run" && (len(f.Key) > 6 && f.Key[:6] == "train_") {
			f.Status = "not run: no engine/devtrain in this build"
		}
	}
}
