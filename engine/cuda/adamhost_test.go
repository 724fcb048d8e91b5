//go:build cuda

package cuda

import (
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// BenchmarkAdamWManyHost measures AdamWMany's host work before its first launch for a step of
// Qwen3-4B's shape (398 jobs): resolving each job, the disjointness check, the descriptors. It
// needs no GPU (hand-made device objects). Session 10, this machine: 672 µs a batch at first;
// 38 µs to resolve, 110 µs for the check and 26 µs for the descriptors once the check stopped
// building strings and the constants were reused (`go test -tags cuda -run X -bench
// AdamWManyHost -benchtime 200x ./engine/cuda`).
func BenchmarkAdamWManyHost(b *testing.B) {
	be := &Backend{}
	var jobs []backend.AdamWJob
	p := devPtr(1 << 20)
	for i := range 398 {
		rows, cols := 4096, 2560
		if i%11 > 6 {
			rows = 1 // the norms
		}
		w := &Weight{name: "w", out: rows, in: cols, kind: kindBF16, ptr: p, bytes: int64(2 * rows * cols), owner: be}
		p += devPtr(w.bytes + 256)
		g := &Tensor{rows: rows, cols: cols, ptr: p, owner: be}
		p += devPtr(4*rows*cols + 256)
		s := &AdamState{format: "int8", rows: rows, cols: cols, ptr: p, m: p, v: p, ms: p, vs: p, bytes: int64(3 * rows * cols), owner: be}
		p += devPtr(s.bytes + 256)
		jobs = append(jobs, backend.AdamWJob{W: w, Grad: g, State: s, Hyper: backend.AdamWHyper{LR: 1e-5, Beta1: 0.9,
			Beta2: 0.999, Eps: 1e-8, Step: 3, GradScale: 1, Param: uint64(i)}})
	}
	rs := make([]adamJob, len(jobs))
	resolve := func() {
		for i, j := range jobs {
			r, err := be.adamResolve(j.W, j.Grad, j.State, j.Hyper, "adamw")
			if err != nil {
				b.Fatal(err)
			}
			rs[i] = r
		}
	}
	resolve()
	b.Run("resolve", func(b *testing.B) {
		for range b.N {
			resolve()
		}
	})
	b.Run("disjoint", func(b *testing.B) {
		for range b.N {
			if err := adamDisjoint(rs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("descriptors", func(b *testing.B) {
		params := make([]byte, 8+adamManyJobs*adamJobBytes+8)
		for range b.N {
			for i, r := range rs {
				putAdamJob(params[8+(i%adamManyJobs)*adamJobBytes:], r, int64(i))
			}
		}
	})
}

// TestAdamDisjoint checks AdamWMany's race check on hand-made jobs (no GPU needed): a weight or
// state one job writes may not overlap another job's weight, state or gradient; gradients may
// be shared; a job may touch its own memory.
func TestAdamDisjoint(t *testing.T) {
	be := &Backend{}
	job := func(w, g, s devPtr) adamJob {
		return adamJob{w: &Weight{name: "w", out: 1, in: 64, kind: kindBF16, ptr: w, bytes: 128, owner: be},
			g: &Tensor{rows: 1, cols: 64, ptr: g, owner: be},
			s: &AdamState{format: "int8", rows: 1, cols: 64, ptr: s, bytes: 256, owner: be}}
	}
	for _, c := range []struct {
		name string
		jobs []adamJob
		want string // "" or a substring of the error
	}{
		{"apart", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x4000, 0x5000, 0x6000)}, ""},
		{"shared gradient", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x4000, 0x2000, 0x6000)}, ""},
		{"same weight", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x1000, 0x5000, 0x6000)}, "job 0's weight w and job 1's weight w share memory"},
		{"weights overlap by a byte", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x107F, 0x5000, 0x6000)}, "share memory"},
		{"weights touch", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x1080, 0x5000, 0x6000)}, ""},
		{"state over another's gradient", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x4000, 0x5000, 0x2010)}, "gradient of w"},
		{"gradient inside another's state", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x4000, 0x3020, 0x6000)}, "state of w"},
		{"own gradient inside own state", []adamJob{job(0x1000, 0x3010, 0x3000)}, ""},
		{"third of three", []adamJob{job(0x1000, 0x2000, 0x3000), job(0x4000, 0x5000, 0x6000), job(0x7000, 0x8000, 0x6080)}, "job 1's state of w and job 2's state of w"},
	} {
		err := adamDisjoint(c.jobs)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}
