package guard

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestSampler(t *testing.T) {
	tree := func(root int) ([]int, error) { return []int{root, root + 1, root + 2}, nil }
	cases := []struct {
		name      string
		root      int
		baseline  int64
		used      int64
		procs     []Process
		procsErr  error
		noProcs   bool // a source without per-process figures
		wantTree  int64
		wantPIDs  []int
		fromTotal bool
		perProc   bool
		note      string
	}{
		{name: "device only", root: 0, used: 5 * GiB},
		{name: "tree summed", root: 100, used: 9 * GiB,
			procs:    []Process{{100, 1 * GiB}, {102, 2 * GiB}, {555, 6 * GiB}},
			wantTree: 3 * GiB, wantPIDs: []int{100, 102}, perProc: true},
		{name: "not available counts 0 and falls back", root: 100, baseline: GiB, used: 4 * GiB,
			procs:    []Process{{101, -1}},
			wantTree: 4 * GiB, wantPIDs: []int{101}, perProc: true, fromTotal: true, note: "per-process memory reads 0"},
		{name: "unified memory: zero per pid, device grew", root: 100, baseline: GiB, used: 3 * GiB,
			procs:    []Process{{100, 0}},
			wantTree: 3 * GiB, wantPIDs: []int{100}, perProc: true, fromTotal: true, note: "grew from 1.00 GiB to 3.00 GiB"},
		{name: "zero per pid, device did not grow", root: 100, baseline: 3 * GiB, used: 3 * GiB,
			procs: []Process{{100, 0}}, wantTree: 0, wantPIDs: []int{100}, perProc: true},
		{name: "growth below MinGrowth is noise", root: 100, baseline: GiB, used: GiB + MinGrowth,
			procs: []Process{{100, 0}}, wantPIDs: []int{100}, perProc: true},
		{name: "fallback disabled", root: 100, baseline: -1, used: 3 * GiB, procs: nil, perProc: true},
		{name: "unsupported", root: 100, baseline: 0, used: 2 * GiB, procsErr: ErrPerProcessUnsupported,
			wantTree: 2 * GiB, fromTotal: true, note: "no per-process memory"},
		{name: "source without processes", root: 100, baseline: 0, used: 2 * GiB, noProcs: true,
			wantTree: 2 * GiB, fromTotal: true, note: "has no per-process figures"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := NewFake(80*GiB, c.used)
			f.SetProcesses(c.procs, c.procsErr)
			var src MemorySource = f
			if c.noProcs {
				src = deviceOnly{f}
			}
			s := &Sampler{Source: src, Root: c.root, Baseline: c.baseline, Tree: tree}
			r, err := s.Sample()
			if err != nil {
				t.Fatal(err)
			}
			if r.DeviceUsed != c.used || r.DeviceTotal != 80*GiB {
				t.Fatalf("device %d/%d", r.DeviceUsed, r.DeviceTotal)
			}
			if r.Tree != c.wantTree || r.TreeFromTotal != c.fromTotal || r.PerProcess != c.perProc || !slices.Equal(r.PIDs, c.wantPIDs) {
				t.Fatalf("got tree %d fromTotal %v perProcess %v pids %v; want %d %v %v %v (note %q)",
					r.Tree, r.TreeFromTotal, r.PerProcess, r.PIDs, c.wantTree, c.fromTotal, c.perProc, c.wantPIDs, r.Note)
			}
			if !strings.Contains(r.Note, c.note) || (c.note == "" && r.Note != "") {
				t.Fatalf("note %q, want %q", r.Note, c.note)
			}
		})
	}
}

type deviceOnly struct{ f *Fake }

func (d deviceOnly) Used() (int64, error)  { return d.f.Used() }
func (d deviceOnly) Total() (int64, error) { return d.f.Total() }

func TestSamplerErrors(t *testing.T) {
	if _, err := (&Sampler{}).Sample(); err == nil {
		t.Fatal("no source accepted")
	}
	f := NewFake(GiB, 0)
	f.SetError(errors.New("driver gone"))
	if _, err := (&Sampler{Source: f}).Sample(); err == nil || !strings.Contains(err.Error(), "driver gone") {
		t.Fatalf("err = %v", err)
	}
}

func TestReadingOver(t *testing.T) {
	cases := []struct {
		r     Reading
		limit int64
		over  bool
		why   string
	}{
		{Reading{DeviceUsed: 3 * GiB}, 2 * GiB, true, "the device has 3.00 GiB in use"},
		{Reading{DeviceUsed: 2 * GiB}, 2 * GiB, false, ""},
		{Reading{DeviceUsed: 3 * GiB, Tree: 3 * GiB}, 2 * GiB, true, "the command's processes use 3.00 GiB (per-process) and the device"},
		{Reading{DeviceUsed: 3 * GiB, Tree: 3 * GiB, TreeFromTotal: true}, 2 * GiB, true, "device total attributed"},
		{Reading{DeviceUsed: 3 * GiB}, 0, false, ""},
	}
	for i, c := range cases {
		over, why := c.r.Over(c.limit)
		if over != c.over || !strings.Contains(why, c.why) {
			t.Errorf("%d: over %v %q, want %v %q", i, over, why, c.over, c.why)
		}
	}
}
