package cli

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Memory guard flags, shared by qwenkernel and qwenrepl (and named as the seed project's
// wrapper named them):
//
//	--gpu-limit-gb GIB    the engine's memory budget in GiB (limit × 1024 MiB); 0 = no limit;
//	                      default $QWENGO_GPU_LIMIT_GB, else the device size minus a margin
//	--gpu-poll-secs S     the watchdog's period (default 0.5, minimum 0.05; 0 = no watchdog)
//	--gpu-over-secs S     how long device memory must stay over the limit before the watchdog
//	                      cancels the running engine call (default 0 = the first sample over)
//
// `qwenrepl guard` has flags of the same names for the command it wraps; they are its own.

// MinGuardPollSecs is the smallest --gpu-poll-secs (the seed's minimum).
const MinGuardPollSecs = 0.05

// DefaultGuardPollSecs is --gpu-poll-secs's default (the seed's).
const DefaultGuardPollSecs = 0.5

// GuardFlags holds the memory guard flags. Declare them on a FlagSet with Declare, or take them
// from the front of a command line with TakeGuardFlags; then Validate.
type GuardFlags struct {
	// LimitGB is --gpu-limit-gb in GiB; meaningful when LimitSet.
	LimitGB float64
	// LimitSet reports whether --gpu-limit-gb was given.
	LimitSet bool
	// PollSecs is --gpu-poll-secs (0 = no watchdog).
	PollSecs float64
	// OverSecs is --gpu-over-secs.
	OverSecs float64
}

// DefaultGuardFlags returns the flags' defaults: no explicit limit, poll every 0.5 s, act on
// the first sample over.
func DefaultGuardFlags() GuardFlags { return GuardFlags{PollSecs: DefaultGuardPollSecs} }

// limitValue is --gpu-limit-gb: a float that records being set.
type limitValue struct{ g *GuardFlags }

func (v limitValue) Set(s string) error {
	var x floatValue
	if err := x.Set(s); err != nil {
		return err
	}
	v.g.LimitGB, v.g.LimitSet = float64(x), true
	return nil
}

func (v limitValue) String() string {
	if !v.g.LimitSet {
		return ""
	}
	x := floatValue(v.g.LimitGB)
	return x.String()
}

func (v limitValue) Type() string { return "GIB" }

// Declare adds --gpu-limit-gb, --gpu-poll-secs and --gpu-over-secs to f, stored in g (whose
// current values are the defaults).
func (g *GuardFlags) Declare(f *FlagSet) {
	f.Var(limitValue{g}, "gpu-limit-gb", "engine memory budget in GiB, 0 = no limit (default: $QWENGO_GPU_LIMIT_GB, else the device size minus max(2 GiB, 5 %))")
	f.Var((*floatValue)(&g.PollSecs), "gpu-poll-secs", "seconds between the memory watchdog's samples of device memory (minimum 0.05; 0 = no watchdog)")
	f.Var((*floatValue)(&g.OverSecs), "gpu-over-secs", "seconds device memory must stay over the limit before the watchdog cancels the running engine call (0 = the first sample over)")
}

// Validate checks the values: a finite limit ≥ 0 and below 2⁶³ bytes, a poll of 0 or at least
// MinGuardPollSecs, an over time ≥ 0. Errors name the flag.
func (g GuardFlags) Validate() error {
	if g.LimitSet {
		if _, err := g.LimitBytes(); err != nil {
			return err
		}
	}
	switch {
	case math.IsNaN(g.PollSecs) || math.IsInf(g.PollSecs, 0) || g.PollSecs < 0:
		return &Error{Flag: "gpu-poll-secs", Msg: fmt.Sprintf("%v: want seconds ≥ %g (or 0 for no watchdog)", g.PollSecs, MinGuardPollSecs)}
	case g.PollSecs > 0 && g.PollSecs < MinGuardPollSecs:
		return &Error{Flag: "gpu-poll-secs", Msg: fmt.Sprintf("%v: below the minimum %g (0 turns the watchdog off)", g.PollSecs, MinGuardPollSecs)}
	case math.IsNaN(g.OverSecs) || math.IsInf(g.OverSecs, 0) || g.OverSecs < 0:
		return &Error{Flag: "gpu-over-secs", Msg: fmt.Sprintf("%v: want seconds ≥ 0", g.OverSecs)}
	}
	return nil
}

// LimitBytes converts --gpu-limit-gb to bytes (GiB × 2³⁰, rounded).
func (g GuardFlags) LimitBytes() (int64, error) {
	x := g.LimitGB
	if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
		return 0, &Error{Flag: "gpu-limit-gb", Msg: fmt.Sprintf("%v: want a finite number of GiB ≥ 0", x)}
	}
	b := x * (1 << 30)
	if b >= math.MaxInt64 {
		return 0, &Error{Flag: "gpu-limit-gb", Msg: fmt.Sprintf("%v GiB: too large", x)}
	}
	return int64(math.Round(b)), nil
}

// Poll is --gpu-poll-secs as a duration (0: no watchdog).
func (g GuardFlags) Poll() time.Duration { return secs(g.PollSecs) }

// Over is --gpu-over-secs as a duration.
func (g GuardFlags) Over() time.Duration { return secs(g.OverSecs) }

func secs(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

// guardFlagNames are the flags TakeGuardFlags recognises.
var guardFlagNames = map[string]bool{"gpu-limit-gb": true, "gpu-poll-secs": true, "gpu-over-secs": true}

// TakeGuardFlags parses the memory guard flags at the front of args (any spelling: --k v,
// --k=v, -k v, -k=v) and returns them, validated, with the rest of args from the first other
// argument on. qwenrepl calls it before dispatching, so `qwenrepl --gpu-limit-gb 40 run x.go`
// and `qwenrepl --gpu-limit-gb 40` (the console) both apply the limit, while the flags after a
// subcommand's name stay that subcommand's.
func TakeGuardFlags(prog string, args []string) (GuardFlags, []string, error) {
	g := DefaultGuardFlags()
	n := 0
	for n < len(args) {
		a := args[n]
		if !strings.HasPrefix(a, "-") {
			break
		}
		name, _, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !guardFlagNames[name] {
			break
		}
		n++
		if !hasVal {
			if n >= len(args) {
				return g, args, &Error{Prog: prog, Flag: name, Msg: "needs a value (seconds or GiB)"}
			}
			n++
		}
	}
	f := New(prog)
	g.Declare(f)
	if err := f.Parse(args[:n]); err != nil {
		return g, args, err
	}
	if err := g.Validate(); err != nil {
		if e, ok := err.(*Error); ok {
			e.Prog = prog
		}
		return g, args, err
	}
	return g, args[n:], nil
}
