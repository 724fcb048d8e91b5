package devtrain

import (
	"bufio"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/format"
)

// The optimizer file (SaveOptimizer): a gob stream of one optimizerHeader, then one
// backend.AdamWMoments per parameter in the header's order. Moments are in engine/optim's
// layout (backend.AdamWStateIO), so a file written on one backend loads on another; it is
// streamed parameter by parameter, so the host never holds more than one parameter's moments.
const (
	optimizerMagic   = "qwengo devtrain optimizer"
	optimizerVersion = 1
)

type optimizerHeader struct {
	Magic   string
	Version int
	Step    int
	State   string
	Params  []paramHeader
}

type paramHeader struct {
	Name       string
	Rows, Cols int
	Steps      int // updates applied to this parameter (its bias correction)
}

// stateIO returns the backend's AdamW state reader/writer.
func (m *Model) stateIO() (backend.AdamWStateIO, error) {
	io, ok := m.b.(backend.AdamWStateIO)
	if !ok {
		return nil, fmt.Errorf("devtrain: backend %s cannot read or write AdamW states (backend.AdamWStateIO)", m.b.Name())
	}
	return io, nil
}

// SaveOptimizer writes every parameter's AdamW moments and the step counts to path, atomically
// (a temporary file beside it, then a rename). The master weights are not in it: Export them
// (a bf16 master exported as float32 and uploaded again is the same master).
func (m *Model) SaveOptimizer(path string) error {
	if m.closed {
		return errors.New("devtrain: SaveOptimizer after Close")
	}
	sio, err := m.stateIO()
	if err != nil {
		return err
	}
	h := optimizerHeader{Magic: optimizerMagic, Version: optimizerVersion, Step: m.step, State: m.opt.State}
	for _, p := range m.params {
		h.Params = append(h.Params, paramHeader{Name: p.name, Rows: p.rows, Cols: p.cols, Steps: p.steps})
	}
	return format.WriteAtomicFunc(path, func(w io.Writer) error {
		enc := gob.NewEncoder(w)
		if err := enc.Encode(h); err != nil {
			return err
		}
		for _, p := range m.params {
			mo, err := sio.ReadAdamWState(p.st)
			if err != nil {
				return fmt.Errorf("devtrain: reading the AdamW state of %s: %w", p.name, err)
			}
			if err := enc.Encode(mo); err != nil {
				return err
			}
		}
		return nil
	})
}

// LoadOptimizer restores what SaveOptimizer wrote into this model: the same parameters (names
// and shapes, in order) and state format are required. The file is read twice — checked whole,
// then applied — so a file that does not fit, or is cut short, changes nothing.
func (m *Model) LoadOptimizer(path string) error {
	if m.closed {
		return errors.New("devtrain: LoadOptimizer after Close")
	}
	sio, err := m.stateIO()
	if err != nil {
		return err
	}
	var h optimizerHeader
	for _, apply := range []bool{false, true} {
		if h, err = m.readOptimizer(path, sio, apply); err != nil {
			return err
		}
	}
	m.step = h.Step
	for i, p := range m.params {
		p.steps = h.Params[i].Steps
	}
	return nil
}

// readOptimizer decodes the optimizer file at path and checks it against the model; with apply
// it also writes each parameter's moments to the backend.
func (m *Model) readOptimizer(path string, sio backend.AdamWStateIO, apply bool) (optimizerHeader, error) {
	var h optimizerHeader
	f, err := os.Open(path)
	if err != nil {
		return h, fmt.Errorf("devtrain: optimizer state: %w", err)
	}
	defer f.Close()
	dec := gob.NewDecoder(bufio.NewReaderSize(f, 1<<20))
	bad := func(format string, args ...any) (optimizerHeader, error) {
		return h, fmt.Errorf("devtrain: optimizer state %s: "+format, append([]any{path}, args...)...)
	}
	if err := dec.Decode(&h); err != nil {
		return bad("header: %v", err)
	}
	switch {
	case h.Magic != optimizerMagic:
		return bad("not a devtrain optimizer file (magic %q)", h.Magic)
	case h.Version != optimizerVersion:
		return bad("version %d (this build reads %d)", h.Version, optimizerVersion)
	case h.State != m.opt.State:
		return bad("%s moments, the model has %s (Options.State)", h.State, m.opt.State)
	case len(h.Params) != len(m.params):
		return bad("%d parameters, the model has %d", len(h.Params), len(m.params))
	case h.Step < 0:
		return bad("step %d", h.Step)
	}
	for i, p := range m.params {
		ph := h.Params[i]
		if ph.Name != p.name || ph.Rows != p.rows || ph.Cols != p.cols {
			return bad("parameter %d is %s [%d, %d], the model's is %s [%d, %d]", i, ph.Name, ph.Rows, ph.Cols, p.name, p.rows, p.cols)
		}
		if ph.Steps < 0 || ph.Steps > h.Step {
			return bad("parameter %s: %d updates after %d steps", ph.Name, ph.Steps, h.Step)
		}
	}
	for _, p := range m.params {
		var mo backend.AdamWMoments
		if err := dec.Decode(&mo); err != nil {
			return bad("moments of %s: %v", p.name, err)
		}
		if err := backend.CheckAdamWMoments(&mo, m.opt.State, p.rows, p.cols); err != nil {
			return bad("moments of %s: %v", p.name, err)
		}
		if apply {
			if err := sio.WriteAdamWState(p.st, &mo); err != nil {
				return h, fmt.Errorf("devtrain: restoring the AdamW state of %s: %w", p.name, err)
			}
		}
	}
	return h, nil
}
