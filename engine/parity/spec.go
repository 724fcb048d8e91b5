package parity

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/qwengo/qwengo/engine/backend"
)

// Precisions a Spec may name. Stored keeps the checkpoint's own precision (F16 widened to f32).
const (
	PrecisionStored = "stored"
	PrecisionF32    = "f32"
	PrecisionBF16   = "bf16"
	PrecisionNVFP4  = "nvfp4"
)

// Spec is one numeric path through the model: where it runs, in which precision its linear
// weights are, and how the last token is computed.
type Spec struct {
	// Backend is a registered backend name: "cpu", or "cuda" in a binary built with -tags cuda.
	Backend string `json:"backend"`
	// Precision of the linear weights: "nvfp4", "bf16", "f32" or "stored" ("" means stored).
	Precision string `json:"precision"`
	// QAT runs every linear through its NVFP4 quantise-dequantise image (nvfp4.QuantizeModelOpt,
	// then decode) with dense compute, as the QAT training forward does. It needs a dense
	// precision (f32, the default with QAT, or bf16); a linear stored as NVFP4 is its own image.
	QAT bool `json:"qat"`
	// KVCache prefills all but the last token into a KV cache and then runs the last token
	// through the cache (the generation path); off, the whole sequence runs in one forward
	// (the recompute path).
	KVCache bool `json:"kv_cache"`
	// Cache is the element type of the KV caches both paths attend through (the recompute path
	// has a temporary one): "f32", "bf16", or "" for the backend's default (bf16 on CUDA, f32 on
	// the CPU; backend.KVCacheFormat). Comparing a GPU path with a CPU one on the same type
	// isolates everything else.
	Cache string `json:"cache,omitempty"`
	// ScaleBug reproduces the seed project's fp8-scale bug (E4M3 block-scale bytes read as
	// integers instead of decoded; see ScaleBugDequantize) on the NVFP4 weights of every linear
	// of layer ScaleBugLayer. A fault injection for showing what the parity report catches.
	ScaleBug      bool `json:"scale_bug"`
	ScaleBugLayer int  `json:"scale_bug_layer"`
}

// String is the spec in ParseSpec's syntax, canonical order: backend:precision[:qat][:kv]
// [:cache=T][:scalebug=N].
func (s Spec) String() string {
	n := s.normalized()
	parts := []string{n.Backend, n.Precision}
	if n.QAT {
		parts = append(parts, "qat")
	}
	if n.KVCache {
		parts = append(parts, "kv")
	}
	if n.Cache != "" {
		parts = append(parts, "cache="+n.Cache)
	}
	if n.ScaleBug {
		parts = append(parts, "scalebug="+strconv.Itoa(n.ScaleBugLayer))
	}
	return strings.Join(parts, ":")
}

// normalized fills defaults: backend cpu, precision stored (f32 under QAT).
func (s Spec) normalized() Spec {
	if s.Backend == "" {
		s.Backend = "cpu"
	}
	s.Precision = strings.ToLower(s.Precision)
	s.Cache = strings.ToLower(s.Cache)
	if s.Precision == "" {
		s.Precision = PrecisionStored
	}
	if s.QAT && s.Precision == PrecisionStored {
		s.Precision = PrecisionF32
	}
	return s
}

// Validate checks the spec on its own (a scale-bug layer is checked against the model by
// Compare).
func (s Spec) Validate() error {
	n := s.normalized()
	switch n.Precision {
	case PrecisionStored, PrecisionF32, PrecisionBF16, PrecisionNVFP4:
	default:
		return fmt.Errorf("spec %s: unknown precision %q (want nvfp4, bf16, f32 or stored)", s, s.Precision)
	}
	if n.QAT && n.Precision == PrecisionNVFP4 {
		return fmt.Errorf("spec %s: qat computes densely through the NVFP4 image; with nvfp4 the weights already are NVFP4 (use f32 or bf16 with qat)", s)
	}
	if n.Cache != "" && n.Cache != PrecisionF32 && n.Cache != PrecisionBF16 {
		return fmt.Errorf("spec %s: unknown KV cache type %q (want f32 or bf16)", s, s.Cache)
	}
	if n.ScaleBug && n.ScaleBugLayer < 0 {
		return fmt.Errorf("spec %s: scale-bug layer %d is negative", s, n.ScaleBugLayer)
	}
	if strings.ContainsAny(n.Backend, " \t:,") {
		return fmt.Errorf("spec %s: invalid backend name %q", s, n.Backend)
	}
	return nil
}

// loadKey identifies the weights a spec loads: specs with equal keys share one loaded model.
func (s Spec) loadKey() string {
	n := s.normalized()
	n.KVCache = false
	if !n.ScaleBug {
		n.ScaleBugLayer = 0
	}
	return n.String()
}

// ParseSpec parses a spec written as colon-separated tokens in any order:
//
//	cpu | cuda | <registered backend>   the backend (default cpu)
//	nvfp4 | bf16 | f32 | stored         weight precision (default stored; f32 with qat)
//	kv | nokv                           KV cache path on / off (default off)
//	qat                                 linears through their NVFP4 image, dense compute
//	cache=f32 | cache=bf16              KV cache element type (default: the backend's)
//	scalebug=N                          the seed's fp8-scale bug on layer N's NVFP4 weights
//
// e.g. "cpu:nvfp4:kv", "kv:f32", "cuda:bf16:qat", "cuda:nvfp4:kv:cache=f32",
// "cpu:nvfp4:scalebug=3". Tokens are
// case-insensitive. "cuda" parses in every build; Compare says when the binary lacks it.
func ParseSpec(text string) (Spec, error) {
	var s Spec
	if strings.TrimSpace(text) == "" {
		return s, fmt.Errorf("spec: empty (want e.g. cpu:nvfp4:kv)")
	}
	seen := map[string]string{}
	set := func(kind, tok string) error {
		if prev, dup := seen[kind]; dup {
			return fmt.Errorf("spec %q: %s given twice (%q and %q)", text, kind, prev, tok)
		}
		seen[kind] = tok
		return nil
	}
	for _, raw := range strings.Split(text, ":") {
		tok := strings.ToLower(strings.TrimSpace(raw))
		var err error
		switch {
		case tok == "":
			err = fmt.Errorf("spec %q: empty token (two colons in a row?)", text)
		case tok == PrecisionNVFP4 || tok == PrecisionBF16 || tok == PrecisionF32 || tok == PrecisionStored:
			if err = set("precision", tok); err == nil {
				s.Precision = tok
			}
		case tok == "kv" || tok == "nokv":
			if err = set("kv cache", tok); err == nil {
				s.KVCache = tok == "kv"
			}
		case tok == "qat":
			if err = set("qat", tok); err == nil {
				s.QAT = true
			}
		case strings.HasPrefix(tok, "cache"):
			typ, ok := strings.CutPrefix(tok, "cache=")
			if !ok || (typ != PrecisionF32 && typ != PrecisionBF16) {
				err = fmt.Errorf("spec %q: %q: want cache=f32 or cache=bf16", text, raw)
			} else if err = set("cache", tok); err == nil {
				s.Cache = typ
			}
		case strings.HasPrefix(tok, "scalebug"):
			num, ok := strings.CutPrefix(tok, "scalebug=")
			n, perr := strconv.Atoi(num)
			switch {
			case !ok || perr != nil:
				err = fmt.Errorf("spec %q: %q: want scalebug=LAYER with a layer number, e.g. scalebug=1", text, raw)
			case n < 0:
				err = fmt.Errorf("spec %q: %q: the layer must be 0 or more", text, raw)
			default:
				if err = set("scalebug", tok); err == nil {
					s.ScaleBug, s.ScaleBugLayer = true, n
				}
			}
		case tok == "cpu" || tok == "cuda" || backend.Registered(tok):
			if err = set("backend", tok); err == nil {
				s.Backend = tok
			}
		default:
			backends := map[string]bool{"cpu": true, "cuda": true}
			for _, n := range backend.Names() {
				backends[n] = true
			}
			var names []string
			for n := range backends {
				names = append(names, n)
			}
			sort.Strings(names)
			err = fmt.Errorf("spec %q: unknown token %q (want a backend %s, a precision nvfp4|bf16|f32|stored, kv, nokv, qat, cache=f32|bf16 or scalebug=N)",
				text, raw, strings.Join(names, "|"))
		}
		if err != nil {
			return Spec{}, err
		}
	}
	s = s.normalized()
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// MustParseSpec is ParseSpec for literals in examples and tests; it panics on a bad spec.
func MustParseSpec(text string) Spec {
	s, err := ParseSpec(text)
	if err != nil {
		panic(err)
	}
	return s
}
