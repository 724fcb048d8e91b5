package guard

import (
	"errors"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

func TestResolveBudget(t *testing.T) {
	const total = 140 * GiB
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvLimit {
				return v
			}
			return ""
		}
	}
	totalFn := func(n int64, err error) func() (int64, error) {
		return func() (int64, error) { return n, err }
	}
	cases := []struct {
		name      string
		explicit  int64
		env       string
		total     func() (int64, error)
		want      int64
		source    string
		errSubstr string
	}{
		{name: "explicit wins", explicit: 108 * GiB, env: "50", total: totalFn(total, nil), want: 108 * GiB, source: "--gpu-limit-gb"},
		{name: "explicit zero is no limit", explicit: 0, env: "50", want: 0, source: "--gpu-limit-gb 0"},
		{name: "explicit negative", explicit: -5, errSubstr: "want ≥ 0"},
		{name: "env", explicit: Unset, env: "2.5", want: 5 * GiB / 2, source: EnvLimit},
		{name: "env zero is no limit", explicit: Unset, env: "0", want: 0, source: EnvLimit + "=0"},
		{name: "env malformed", explicit: Unset, env: "lots", errSubstr: EnvLimit + "=lots"},
		{name: "env negative", explicit: Unset, env: "-1", errSubstr: "want a finite number"},
		{name: "device minus 5 percent", explicit: Unset, total: totalFn(total, nil), want: total - total/20, source: "device total"},
		{name: "device minus 2 GiB", explicit: Unset, total: totalFn(16*GiB, nil), want: 14 * GiB, source: "margin 2.00 GiB"},
		{name: "device too small", explicit: Unset, total: totalFn(GiB, nil), errSubstr: "not more than the margin"},
		{name: "device unknown", explicit: Unset, errSubstr: "device size is unknown"},
		{name: "device read fails", explicit: Unset, total: totalFn(0, errors.New("boom")), errSubstr: "boom"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := ResolveBudget(c.explicit, env(c.env), c.total)
			if c.errSubstr != "" {
				if err == nil || !strings.Contains(err.Error(), c.errSubstr) {
					t.Fatalf("err = %v, want one containing %q", err, c.errSubstr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Limit != c.want || !strings.Contains(b.Source, c.source) {
				t.Fatalf("got %d (%s), want %d (%s)", b.Limit, b.Source, c.want, c.source)
			}
			if (c.want == 0) != b.Unlimited() {
				t.Fatalf("Unlimited() = %v for limit %d", b.Unlimited(), b.Limit)
			}
		})
	}
	if _, err := ResolveBudget(Unset, env(""), nil); !errors.Is(err, ErrNoBudget) {
		t.Fatalf("want ErrNoBudget, got %v", err)
	}
}

func TestMarginAndParse(t *testing.T) {
	if m := Margin(10 * GiB); m != 2*GiB {
		t.Fatalf("margin of 10 GiB = %d", m)
	}
	if m := Margin(100 * GiB); m != 5*GiB {
		t.Fatalf("margin of 100 GiB = %d", m)
	}
	for _, s := range []string{"x", "NaN", "Inf", "-3", "1e300"} {
		if _, err := ParseGiB(s); err == nil {
			t.Errorf("ParseGiB(%q) accepted", s)
		}
	}
	if b, err := ParseGiB(" 108 "); err != nil || b != 108*GiB {
		t.Fatalf("ParseGiB(108) = %d, %v", b, err)
	}
}

func TestBudgetCheckUsesOverBudget(t *testing.T) {
	b := Budget{Limit: 10 * GiB, Source: "test"}
	if err := b.Check(backend.Weights, 2*GiB, 8*GiB); err != nil {
		t.Fatalf("exactly at the limit refused: %v", err)
	}
	err := b.Check(backend.KVCache, 3*GiB, 8*GiB)
	var ob *backend.OverBudget
	if !errors.As(err, &ob) {
		t.Fatalf("want *backend.OverBudget, got %T %v", err, err)
	}
	if ob.Request != 3*GiB || ob.InUse != 8*GiB || ob.Budget != 10*GiB || ob.Category != backend.KVCache {
		t.Fatalf("numbers: %+v", ob)
	}
	if err := b.Check(backend.Weights, 1, 11*GiB); err == nil {
		t.Fatal("already over: 1 byte accepted")
	}
	if err := (Budget{}).Check(backend.Weights, 1<<62, 1<<62); err != nil {
		t.Fatalf("unlimited budget refused: %v", err)
	}
	var st backend.MemStats
	st.InUse[backend.Weights] = 7 * GiB
	st.InUse[backend.KVCache] = GiB
	st.Peak = 9 * GiB
	rep := Explain(err, st)
	for _, want := range []string{"3.00 GiB for kv_cache", "short by 1.00 GiB", "weights", "7.00 GiB", "peak since reset 9.00 GiB", "nothing was allocated"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	if strings.Index(rep, "weights") > strings.Index(rep, "kv_cache    ") {
		t.Errorf("categories not largest first:\n%s", rep)
	}
	if Explain(errors.New("other"), st) != "other" || Explain(nil, st) != "" {
		t.Error("Explain of a non-budget error")
	}
}
