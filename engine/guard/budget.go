package guard

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/qwengo/qwengo/engine/backend"
)

// EnvLimit is the environment variable that sets the budget in GiB when no explicit limit is
// given ("0" = no limit).
const EnvLimit = "QWENGO_GPU_LIMIT_GB"

// GiB is 1024³ bytes, the unit of --gpu-limit-gb and QWENGO_GPU_LIMIT_GB.
const GiB = int64(1) << 30

// Unset is the explicit limit that means "not given": ResolveBudget falls back to the
// environment, then to the device size.
const Unset int64 = -1

// MinMargin is the smallest margin left free below the device total when the budget is derived
// from it; the margin is max(MinMargin, 5 % of the total).
const MinMargin = 2 * GiB

// ErrNoBudget is returned (wrapped) by ResolveBudget when no limit was given and the device's
// total memory is unknown.
var ErrNoBudget = errors.New("no memory budget")

// Budget is a resolved device-memory limit.
type Budget struct {
	// Limit is the limit in bytes; 0 means no limit.
	Limit int64
	// Source says where the limit came from: "--gpu-limit-gb", "QWENGO_GPU_LIMIT_GB", or
	// "device total … minus margin …".
	Source string
	// Total is the device's total memory when it was read (0 when it was not needed).
	Total int64
}

// Unlimited reports whether the budget sets no limit.
func (b Budget) Unlimited() bool { return b.Limit <= 0 }

// String formats the limit and where it came from.
func (b Budget) String() string {
	if b.Unlimited() {
		return "no limit (" + b.Source + ")"
	}
	return fmt.Sprintf("%s (%s)", backend.Human(b.Limit), b.Source)
}

// Check returns a *backend.OverBudget error when allocating request bytes of category cat, with
// inUse bytes already allocated, would exceed the budget; nil otherwise (and always for an
// unlimited budget). A negative request is never over budget.
func (b Budget) Check(cat backend.Category, request, inUse int64) error {
	if b.Unlimited() || request <= 0 {
		return nil
	}
	if inUse > b.Limit || request > b.Limit-inUse {
		return &backend.OverBudget{Category: cat, Request: request, InUse: inUse, Budget: b.Limit}
	}
	return nil
}

// Margin is the memory left free below a device's total when the budget is derived from it:
// max(2 GiB, 5 % of total).
func Margin(total int64) int64 {
	return max(MinMargin, total/20)
}

// GiBToBytes converts a limit in GiB (as --gpu-limit-gb takes it) to bytes. It rejects negative,
// NaN and infinite values and values past 2⁶³ bytes.
func GiBToBytes(gib float64) (int64, error) {
	if math.IsNaN(gib) || math.IsInf(gib, 0) || gib < 0 {
		return 0, fmt.Errorf("memory limit %v GiB: want a finite number ≥ 0", gib)
	}
	b := gib * float64(GiB)
	if b >= math.MaxInt64 {
		return 0, fmt.Errorf("memory limit %v GiB: too large", gib)
	}
	return int64(math.Round(b)), nil
}

// ParseGiB parses a limit in GiB ("108", "2.5", "0") into bytes.
func ParseGiB(s string) (int64, error) {
	x, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, fmt.Errorf("memory limit %q: want a number of GiB", s)
	}
	return GiBToBytes(x)
}

// ResolveBudget picks the memory budget:
//
//  1. explicit (bytes, from --gpu-limit-gb) when it is not Unset: 0 means no limit;
//  2. else the environment variable QWENGO_GPU_LIMIT_GB (GiB; "0" means no limit), read with
//     getenv (nil = os.Getenv); an empty value counts as not set, a malformed one is an error;
//  3. else the device total, from total (nil = unknown), minus Margin(total).
//
// total is called only in case 3, so an explicit limit needs no GPU library. With neither a
// limit nor a known total it returns an error wrapping ErrNoBudget.
func ResolveBudget(explicit int64, getenv func(string) string, total func() (int64, error)) (Budget, error) {
	switch {
	case explicit == 0:
		return Budget{Source: "--gpu-limit-gb 0"}, nil
	case explicit > 0:
		return Budget{Limit: explicit, Source: "--gpu-limit-gb"}, nil
	case explicit != Unset:
		return Budget{}, fmt.Errorf("memory limit %d bytes: want ≥ 0", explicit)
	}
	if getenv == nil {
		getenv = os.Getenv
	}
	if s := strings.TrimSpace(getenv(EnvLimit)); s != "" {
		b, err := ParseGiB(s)
		if err != nil {
			return Budget{}, fmt.Errorf("%s=%s: %w", EnvLimit, s, err)
		}
		if b == 0 {
			return Budget{Source: EnvLimit + "=0"}, nil
		}
		return Budget{Limit: b, Source: EnvLimit}, nil
	}
	if total == nil {
		return Budget{}, fmt.Errorf("%w: no --gpu-limit-gb, no %s and the device size is unknown", ErrNoBudget, EnvLimit)
	}
	t, err := total()
	if err != nil {
		return Budget{}, fmt.Errorf("%w: no --gpu-limit-gb, no %s, and reading the device size failed: %v", ErrNoBudget, EnvLimit, err)
	}
	if t <= 0 {
		return Budget{}, fmt.Errorf("%w: no --gpu-limit-gb, no %s and the device reports %d bytes", ErrNoBudget, EnvLimit, t)
	}
	m := Margin(t)
	if m >= t {
		return Budget{}, fmt.Errorf("%w: the device's %s is not more than the margin %s; pass --gpu-limit-gb", ErrNoBudget, backend.Human(t), backend.Human(m))
	}
	return Budget{Limit: t - m, Total: t, Source: fmt.Sprintf("device total %s minus margin %s", backend.Human(t), backend.Human(m))}, nil
}

// Explain formats an allocation refused for its budget with the backend's accounting: the
// request, the bytes in use by category (largest first) and the peak. st may be the zero value
// when no accounting is available. It returns err.Error() for errors that are not a
// *backend.OverBudget.
func Explain(err error, st backend.MemStats) string {
	var ob *backend.OverBudget
	if !errors.As(err, &ob) {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	var b strings.Builder
	b.WriteString(ob.Error())
	free := ob.Budget - ob.InUse
	fmt.Fprintf(&b, "\n  short by %s (%s free under the budget)", backend.Human(ob.Request-max(0, free)), backend.Human(max(0, free)))
	type cons struct {
		c backend.Category
		n int64
	}
	var cs []cons
	for c, n := range st.InUse {
		if n > 0 {
			cs = append(cs, cons{backend.Category(c), n})
		}
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].n > cs[j].n })
	if len(cs) > 0 {
		b.WriteString("\n  in use by category (largest first):")
		for _, x := range cs {
			fmt.Fprintf(&b, "\n    %-12s %10s", x.c, backend.Human(x.n))
		}
	}
	if st.Peak > 0 {
		fmt.Fprintf(&b, "\n  peak since reset %s", backend.Human(st.Peak))
	}
	if st.Total > 0 {
		fmt.Fprintf(&b, ", device %s", backend.Human(st.Total))
	}
	b.WriteString("\n  nothing was allocated; what is resident stays resident")
	return b.String()
}
