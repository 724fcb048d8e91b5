package parity

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Float is a float64 that survives JSON when it is not finite: NaN, +Inf and -Inf (what a
// broken path produces) are written as the strings "NaN", "+Inf" and "-Inf" and read back;
// finite values are plain JSON numbers.
type Float float64

// MarshalJSON implements json.Marshaler.
func (f Float) MarshalJSON() ([]byte, error) {
	v := float64(f)
	switch {
	case math.IsNaN(v):
		return []byte(`"NaN"`), nil
	case math.IsInf(v, 1):
		return []byte(`"+Inf"`), nil
	case math.IsInf(v, -1):
		return []byte(`"-Inf"`), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *Float) UnmarshalJSON(b []byte) error {
	s := string(b)
	switch s {
	case `"NaN"`:
		*f = Float(math.NaN())
		return nil
	case `"+Inf"`, `"Inf"`:
		*f = Float(math.Inf(1))
		return nil
	case `"-Inf"`:
		*f = Float(math.Inf(-1))
		return nil
	case "null":
		return nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("parity: %s is not a number, \"NaN\", \"+Inf\" or \"-Inf\"", s)
	}
	*f = Float(v)
	return nil
}

// String formats the value compactly (%.4g).
func (f Float) String() string { return fmt.Sprintf("%.4g", float64(f)) }

// e formats a difference in the table: exact zeros as 0, others in %.3e.
func e(f Float) string {
	if f == 0 {
		return "0"
	}
	return fmt.Sprintf("%.3e", float64(f))
}

// cosText formats a cosine with enough digits to see 0.9999 vs 0.999999.
func cosText(f Float) string {
	if f == 1 {
		return "1"
	}
	return fmt.Sprintf("%.7f", float64(f))
}

// clip shortens s to n runes for a table cell, quoting it so whitespace shows.
func clip(s string, n int) string {
	q := strconv.Quote(s)
	if utf8.RuneCountInString(q) <= n {
		return q
	}
	r := []rune(q)
	return string(r[:n-2]) + "…\""
}

// pad right-pads s to n display runes (tables align on rune count).
func pad(s string, n int) string {
	if k := utf8.RuneCountInString(s); k < n {
		return s + strings.Repeat(" ", n-k)
	}
	return s
}

// String prints the layer table (marking the first diverging layer), the logits comparison
// and both next-token lists side by side.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "parity: a = %s   b = %s\n", r.A.Name, r.B.Name)
	fmt.Fprintf(&b, "model %s: %d tokens, compared at position %d", r.Model, len(r.IDs), r.Position)
	if r.AllPositions {
		b.WriteString(" (and every position)")
	}
	fmt.Fprintf(&b, "; diverging when cosine < %g", r.CosineThreshold)
	if r.RelThreshold >= 0 {
		fmt.Fprintf(&b, " or rel_err > %g", r.RelThreshold)
	}
	b.WriteString("\n")
	for _, s := range []struct {
		tag  string
		side *Side
	}{{"a", &r.A}, {"b", &r.B}} {
		fmt.Fprintf(&b, "  %s: %s; load %.0f ms, forward %.0f ms; weights %s; kv cache %s\n", s.tag, s.side.Device, s.side.LoadMs, s.side.ForwardMs, s.side.Weights, s.side.Cache)
		for _, n := range s.side.Notes {
			fmt.Fprintf(&b, "     %s\n", n)
		}
	}
	header := fmt.Sprintf("%-12s %11s %11s %11s %11s", "layer", "max_abs", "mean_abs", "cosine", "rel_err")
	if r.AllPositions {
		header += fmt.Sprintf("  %18s", "worst cos @pos")
	}
	b.WriteString(header + "\n")
	for _, l := range r.Layers {
		name := l.Name
		if l.Layer >= 0 && l.Layer < r.NumLayers {
			name = strconv.Itoa(l.Layer)
		}
		line := fmt.Sprintf("%-12s %11s %11s %11s %11s", name, e(l.MaxAbs), e(l.MeanAbs), cosText(l.Cosine), e(l.RelErr))
		if r.AllPositions {
			line += fmt.Sprintf("  %12s @%-5d", cosText(l.WorstCosine), l.WorstPosition)
		}
		if l.Layer == r.FirstDiverging {
			line += "  ← first diverging"
		} else if l.Diverges {
			line += "  ×"
		}
		b.WriteString(line + "\n")
	}
	fmt.Fprintf(&b, "%-12s %11s %11s %11s %11s\n", "logits", e(r.Logits.MaxAbs), e(r.Logits.MeanAbs), cosText(r.Logits.Cosine), e(r.Logits.RelErr))
	if r.Diverges() {
		fmt.Fprintf(&b, "first diverging: %s\n", r.FirstDivergingName)
	} else {
		b.WriteString("no layer diverges\n")
	}
	agree := "agree"
	if !r.ArgmaxAgree {
		agree = "DIFFER"
	}
	fmt.Fprintf(&b, "next token: KL(a‖b) = %.3e nats; argmax a %d, b %d (%s); top-%d overlap %d\n",
		float64(r.KL), r.A.Argmax, r.B.Argmax, agree, max(len(r.A.Top), len(r.B.Top)), r.TopOverlap)
	const cell = 38
	fmt.Fprintf(&b, "%3s  %s  %s\n", "#", pad("a: "+r.A.Name, cell), "b: "+r.B.Name)
	for i := 0; i < max(len(r.A.Top), len(r.B.Top)); i++ {
		cells := [2]string{}
		for k, t := range [][]Token{r.A.Top, r.B.Top} {
			if i < len(t) {
				c := fmt.Sprintf("%6d %8.5f", t[i].ID, float64(t[i].Prob))
				if t[i].Text != "" {
					c += " " + clip(t[i].Text, cell-16)
				}
				cells[k] = c
			}
		}
		fmt.Fprintf(&b, "%3d  %s  %s\n", i+1, pad(cells[0], cell), cells[1])
	}
	return b.String()
}
