package guard

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
)

// Reading is one sample of device memory.
type Reading struct {
	Time        time.Time
	DeviceUsed  int64 // bytes in use on the device, all processes
	DeviceTotal int64 // device size (0 when unknown)
	// Tree is the bytes attributed to the watched process tree (0 without a root). When
	// TreeFromTotal is set it is DeviceUsed.
	Tree int64
	// PerProcess reports whether per-process figures were read (false: the source has none, or
	// they were unsupported or failed — see Note).
	PerProcess bool
	// TreeFromTotal is set when the tree's per-process figures read 0 while the device's usage
	// had grown past the Baseline, so the device total was attributed to the tree (the seed's
	// unified-memory lesson).
	TreeFromTotal bool
	// PIDs are the tree's processes that the device listed.
	PIDs []int
	// Note explains a fallback or a per-process failure; empty otherwise.
	Note string
}

// Over reports whether the reading is over limit: the tree's bytes or the device's bytes in use
// above it (limit ≤ 0 is never over). why names the quantity and the numbers.
func (r Reading) Over(limit int64) (over bool, why string) {
	if limit <= 0 {
		return false, ""
	}
	var parts []string
	if r.Tree > limit {
		src := "per-process"
		if r.TreeFromTotal {
			src = "device total attributed to it"
		}
		parts = append(parts, fmt.Sprintf("the command's processes use %s (%s)", backend.Human(r.Tree), src))
	}
	if r.DeviceUsed > limit {
		parts = append(parts, fmt.Sprintf("the device has %s in use (all processes)", backend.Human(r.DeviceUsed)))
	}
	if len(parts) == 0 {
		return false, ""
	}
	return true, strings.Join(parts, " and ") + ", over the limit " + backend.Human(limit)
}

// MinGrowth is how much the device's usage must grow past the Sampler's Baseline before a tree
// whose per-process figures read 0 is attributed the device total (driver bookkeeping moves the
// device's figure by kilobytes; a CUDA context alone takes hundreds of MiB).
const MinGrowth = 64 << 20

// Sampler reads Readings from a MemorySource, attributing memory to a process tree when Root is
// set. The zero value of each optional field is a usable default.
type Sampler struct {
	Source MemorySource
	// Root is the PID whose process tree is measured (0 = device only).
	Root int
	// Baseline is the device's bytes in use before the tree started: when the tree's
	// per-process figures read 0 but DeviceUsed exceeds Baseline by more than MinGrowth, the
	// device total is attributed to the tree. A negative Baseline disables that fallback.
	Baseline int64
	// Tree lists the PIDs of Root's tree (nil = ProcessTree, reading /proc).
	Tree func(root int) ([]int, error)
	// Now is the clock (nil = time.Now).
	Now func() time.Time

	total int64
}

// Sample takes one reading. An error from the source's Used fails the sample; a failing or
// unsupported per-process listing only adds a Note.
func (s *Sampler) Sample() (Reading, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	if s.Source == nil {
		return Reading{}, errors.New("guard: sampler has no memory source")
	}
	r := Reading{Time: now()}
	used, err := s.Source.Used()
	if err != nil {
		return r, fmt.Errorf("reading device memory: %w", err)
	}
	r.DeviceUsed = used
	if s.total == 0 {
		if t, err := s.Source.Total(); err == nil {
			s.total = t
		}
	}
	r.DeviceTotal = s.total
	if s.Root <= 0 {
		return r, nil
	}
	ps, ok := s.Source.(ProcessSource)
	if !ok {
		r.Note = "the memory source has no per-process figures"
	} else if procs, err := ps.Processes(); err != nil {
		r.Note = fmt.Sprintf("per-process memory unavailable: %v", err)
	} else {
		treeFn := s.Tree
		if treeFn == nil {
			treeFn = ProcessTree
		}
		pids, terr := treeFn(s.Root)
		if terr != nil {
			r.Note = fmt.Sprintf("process tree of %d: %v (counting listed processes only)", s.Root, terr)
		}
		in := make(map[int]bool, len(pids))
		for _, p := range pids {
			in[p] = true
		}
		in[s.Root] = true
		r.PerProcess = true
		for _, p := range procs {
			if in[p.PID] {
				r.PIDs = append(r.PIDs, p.PID)
				if p.Used > 0 {
					r.Tree += p.Used
				}
			}
		}
	}
	if r.Tree == 0 && s.Baseline >= 0 && r.DeviceUsed-s.Baseline > MinGrowth {
		why := "per-process memory reads 0 for the command's processes"
		if !r.PerProcess {
			why = "no per-process memory for the command's processes (" + r.Note + ")"
		}
		r.Note = fmt.Sprintf("%s while device memory grew from %s to %s since the start: using the device total (as on unified-memory machines)",
			why, backend.Human(s.Baseline), backend.Human(r.DeviceUsed))
		r.Tree = r.DeviceUsed
		r.TreeFromTotal = true
	}
	return r, nil
}
