package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Figure statuses other than a failure text.
const (
	StatusOK = "ok"
	// StatusNoBatch is the batched-decode figure of an engine that cannot batch decode (qwengo
	// measures it through qwen3.ForwardBatch; reports from before that, or from a peer, may
	// still carry it).
	StatusNoBatch = "n/a (no batched decode)"
)

// Figure is one measured number (or why there is none).
type Figure struct {
	// Key identifies the figure across both sides: "decode_b1_ctx512", "prefill_s2048",
	// "train_s2048_b8_tps", "train_s192_b1_peak", "train_s192_b1_optim", "train_bytes_per_param".
	Key    string `json:"key"`
	Label  string `json:"label"`  // what the table prints
	Unit   string `json:"unit"`   // "tok/s", "GiB", "ms", "B/param"
	Better string `json:"better"` // "higher" or "lower"
	// Status is StatusOK, StatusNoBatch, "not run: …", "oom: …" or "error: …".
	Status  string    `json:"status"`
	Value   float64   `json:"value,omitempty"`
	Samples []float64 `json:"samples,omitempty"` // the repetitions Value is the median of
	// PeakBytes is the device memory peak during the figure (weights included).
	PeakBytes int64  `json:"peak_bytes,omitempty"`
	Note      string `json:"note,omitempty"`
	// Roofline is the best value the hardware allows, in Unit (0: none); Basis says why.
	Roofline float64 `json:"roofline,omitempty"`
	Basis    string  `json:"roofline_basis,omitempty"`
}

// OK reports whether the figure holds a measured value.
func (f *Figure) OK() bool { return f.Status == StatusOK }

// ModelInfo describes the benchmarked model.
type ModelInfo struct {
	Layers       int    `json:"layers"`
	FullLayers   int    `json:"full_layers"`
	Hidden       int    `json:"hidden"`
	Intermediate int    `json:"intermediate"`
	Heads        int    `json:"heads"`
	KVHeads      int    `json:"kv_heads"`
	HeadDim      int    `json:"head_dim"`
	Vocab        int    `json:"vocab"`
	Tied         bool   `json:"tied"`
	Params       int64  `json:"params"`
	Weights      string `json:"weights"` // precision in words
	WeightBytes  int64  `json:"weight_bytes"`
}

// Report is one side's JSON document (peer.py writes the same schema with side "pytorch").
type Report struct {
	Side         string    `json:"side"`     // "qwengo" or "pytorch"
	Device       string    `json:"device"`   // the accelerator in words
	Software     string    `json:"software"` // backend / library versions
	Quick        bool      `json:"quick"`
	Model        ModelInfo `json:"model"`
	BuildSeconds float64   `json:"build_seconds"`
	TotalSeconds float64   `json:"total_seconds"`
	Figures      []Figure  `json:"figures"`
	Notes        []string  `json:"notes,omitempty"`
}

// Figure returns the figure with key, or nil.
func (r *Report) Figure(key string) *Figure {
	if r == nil {
		return nil
	}
	for i := range r.Figures {
		if r.Figures[i].Key == key {
			return &r.Figures[i]
		}
	}
	return nil
}

// WriteFile writes r as indented JSON to path atomically (a temporary file renamed).
func (r *Report) WriteFile(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode report: %w", err)
	}
	return WriteAtomic(path, append(data, '\n'))
}

// WriteAtomic writes data to a temporary file in path's directory and renames it to path.
func WriteAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	if _, err = f.Write(data); err == nil {
		err = f.Close()
	} else {
		f.Close()
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("bench: write %s: %w", path, err)
	}
	return nil
}

// ReadReport reads a report written by WriteFile or by peer.py. A figure without key, unit or
// status, or with a non-finite value, is an error naming the file and the figure.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	if r.Side == "" {
		return nil, fmt.Errorf("bench: %s: no \"side\" (not a benchmark report)", path)
	}
	for i, f := range r.Figures {
		switch {
		case f.Key == "" || f.Status == "":
			return nil, fmt.Errorf("bench: %s: figure %d (%q) lacks a key or a status", path, i, f.Key)
		case math.IsNaN(f.Value) || math.IsInf(f.Value, 0):
			return nil, fmt.Errorf("bench: %s: figure %q has value %v", path, f.Key, f.Value)
		case f.Better != "" && f.Better != "higher" && f.Better != "lower":
			return nil, fmt.Errorf("bench: %s: figure %q: better is %q, want higher or lower", path, f.Key, f.Better)
		}
	}
	return &r, nil
}

// rooflineFraction is how much of its roofline a figure reaches: value/roofline, or
// roofline/value for a lower-is-better figure (a time: 11.5 ms of roofline in 22.1 ms is 52 %).
func rooflineFraction(f *Figure) float64 {
	if f.Better == "lower" {
		return f.Roofline / f.Value
	}
	return f.Value / f.Roofline
}

// Markdown renders our report beside the peer's (peer may be nil) as a markdown table:
// figure | qwengo | PyTorch | ratio | roofline | fraction, where ratio > 1 means qwengo is
// better (ours/peer for higher-is-better figures, peer/ours for lower-is-better ones) and the
// fraction is how much of the roofline we reach (our value over the roofline; for
// lower-is-better figures, such as a step's time, the roofline over our value), so that 100 %
// is the roofline either way. Rows follow our figures, then any the peer alone has.
func Markdown(ours, peer *Report) string {
	var b strings.Builder
	dev := func(r *Report) string {
		if r == nil {
			return "—"
		}
		return r.Device
	}
	fmt.Fprintf(&b, "Device: qwengo on %s; PyTorch on %s\n\n", dev(ours), dev(peer))
	if ours != nil {
		m := ours.Model
		shapes := "Qwen3-4B shapes"
		if ours.Quick {
			shapes = "tiny shapes (--quick)"
		}
		fmt.Fprintf(&b, "Model: %s, %d of %d layers, random weights; qwengo: %s (%.2f GiB); %s\n",
			shapes, m.Layers, m.FullLayers, m.Weights, float64(m.WeightBytes)/(1<<30), ours.Software)
	}
	if peer != nil {
		fmt.Fprintf(&b, "Peer: %s, %s (%d layers)\n", peer.Software, peer.Model.Weights, peer.Model.Layers)
		if ours != nil && (peer.Model.Layers != ours.Model.Layers || peer.Quick != ours.Quick) {
			fmt.Fprintf(&b, "\n**Warning: the sides ran different models (qwengo %d layers quick=%v, PyTorch %d layers quick=%v): ratios are not like for like.**\n",
				ours.Model.Layers, ours.Quick, peer.Model.Layers, peer.Quick)
		}
	}
	b.WriteString("\n| figure | qwengo | PyTorch | ratio (>1: qwengo better) | roofline | of roofline |\n|---|---|---|---|---|---|\n")
	var keys []string
	seen := map[string]bool{}
	for _, r := range []*Report{ours, peer} {
		if r == nil {
			continue
		}
		for _, f := range r.Figures {
			if !seen[f.Key] {
				seen[f.Key] = true
				keys = append(keys, f.Key)
			}
		}
	}
	bases := map[string]bool{}
	unselected := func(f *Figure) bool { return f == nil || strings.HasPrefix(f.Status, "not run: not selected") }
	for _, k := range keys {
		o, p := ours.Figure(k), peer.Figure(k)
		if unselected(o) && unselected(p) {
			continue
		}
		f := o
		if f == nil {
			f = p
		}
		ratio, roof, frac := "—", "—", "—"
		if o != nil && p != nil && o.OK() && p.OK() && o.Value > 0 && p.Value > 0 {
			x := o.Value / p.Value
			if f.Better == "lower" {
				x = p.Value / o.Value
			}
			ratio = fmt.Sprintf("%.2f×", x)
		}
		if o != nil && o.Roofline > 0 {
			roof = num(o.Roofline) + " " + o.Unit
			if o.OK() && o.Value > 0 {
				frac = pct(rooflineFraction(o))
			}
			bases[o.Basis] = true
		}
		fmt.Fprintf(&b, "| %s (%s) | %s | %s | %s | %s | %s |\n", f.Label, f.Unit, cell(o), cell(p), ratio, roof, frac)
	}
	if len(bases) > 0 {
		var bs []string
		for k := range bases {
			bs = append(bs, k)
		}
		sort.Strings(bs)
		b.WriteString("\nRooflines (shared/reference/anchors.md: H200 4.3 TB/s HBM, 790 TFLOP/s bf16 matmul; for the layers measured):\n")
		for _, s := range bs {
			b.WriteString("- " + s + "\n")
		}
	}
	for _, r := range []*Report{ours, peer} {
		if r == nil {
			continue
		}
		notes := r.Notes
		for _, f := range r.Figures {
			if f.Note != "" {
				notes = append(notes, f.Key+": "+f.Note)
			}
		}
		if len(notes) > 0 {
			fmt.Fprintf(&b, "\nNotes (%s):\n", r.Side)
			for _, n := range notes {
				b.WriteString("- " + n + "\n")
			}
		}
	}
	return b.String()
}

// cell is a figure's table cell: its value, or its status when it has none.
func cell(f *Figure) string {
	switch {
	case f == nil:
		return "—"
	case f.OK():
		return num(f.Value)
	}
	return strings.ReplaceAll(f.Status, "|", "/")
}

// num formats a value with three significant digits and thousands separators.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		s := fmt.Sprintf("%.0f", v)
		neg := strings.HasPrefix(s, "-")
		s = strings.TrimPrefix(s, "-")
		var out []byte
		for i := range s {
			if i > 0 && (len(s)-i)%3 == 0 {
				out = append(out, ',')
			}
			out = append(out, s[i])
		}
		if neg {
			return "-" + string(out)
		}
		return string(out)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// pct formats a fraction as a percentage (two significant digits below 1 %).
func pct(x float64) string {
	if x*100 < 1 {
		return fmt.Sprintf("%.2g %%", 100*x)
	}
	return fmt.Sprintf("%.1f %%", 100*x)
}
