package cuda

import (
	"reflect"
	"testing"
)

func TestL2AheadLearnsTheOrder(t *testing.T) {
	// Four launches a step, keyed 1..4, each reading one region of its own.
	reg := func(k uint64) []l2Region { return []l2Region{{k * 0x1000, 1 << 20}} }
	step := []uint64{1, 2, 3, 4}
	cases := []struct {
		name string
		dist []int
		max  int64
		// want: what each launch of the second step prefetches (the first step learns).
		want [][]l2Region
	}{
		{"off", nil, 64 << 20, [][]l2Region{nil, nil, nil, nil}},
		{"capped to zero", []int{1}, 0, [][]l2Region{nil, nil, nil, nil}},
		{"next", []int{1}, 64 << 20, [][]l2Region{reg(2), reg(3), reg(4), reg(1)}},
		{"two ahead", []int{2}, 64 << 20, [][]l2Region{reg(3), reg(4), reg(1), reg(2)}},
		{"both", []int{1, 2}, 64 << 20, [][]l2Region{
			append(reg(2), reg(3)...), append(reg(3), reg(4)...), append(reg(4), reg(1)...), append(reg(1), reg(2)...)}},
		{"both, capped", []int{1, 2}, 1 << 20, [][]l2Region{
			{{0x2000, 1 << 19}, {0x3000, 1 << 19}}, {{0x3000, 1 << 19}, {0x4000, 1 << 19}},
			{{0x4000, 1 << 19}, {0x1000, 1 << 19}}, {{0x1000, 1 << 19}, {0x2000, 1 << 19}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := l2Ahead{dist: c.dist, max: c.max}
			for _, k := range step {
				if got := a.observe(k, reg(k)); got != nil {
					t.Fatalf("first step, launch %d prefetches %v before anything was learned", k, got)
				}
			}
			for i, k := range step {
				if got := a.observe(k, reg(k)); !reflect.DeepEqual(got, c.want[i]) {
					t.Errorf("second step, launch %d: prefetches %v, want %v", k, got, c.want[i])
				}
			}
		})
	}
}

func TestL2AheadRelearnsAndForgets(t *testing.T) {
	reg := func(k uint64) []l2Region { return []l2Region{{k * 0x1000, 4096}} }
	a := l2Ahead{dist: []int{1}, max: 1 << 30}
	for _, k := range []uint64{1, 2, 1, 2} {
		a.observe(k, reg(k))
	}
	// The order changes: 1 is now followed by 3; the launch after 1 learns it.
	a.observe(1, reg(1))
	a.observe(3, reg(3))
	if got := a.observe(1, reg(1)); !reflect.DeepEqual(got, reg(3)) {
		t.Errorf("after 1 → 3: launch 1 prefetches %v, want %v", got, reg(3))
	}
	// A launch never prefetches itself (a one-launch loop).
	b := l2Ahead{dist: []int{1, 2}, max: 1 << 30}
	for i := 0; i < 3; i++ {
		if got := b.observe(7, reg(7)); got != nil {
			t.Errorf("a one-launch loop prefetches %v", got)
		}
	}
	a.forget()
	if got := a.observe(3, reg(3)); got != nil {
		t.Errorf("after forget: prefetches %v", got)
	}
	if got := a.observe(0, reg(0)); got != nil {
		t.Errorf("key 0 prefetches %v", got)
	}
}

func TestL2Cap(t *testing.T) {
	cases := []struct {
		name string
		in   []l2Region
		max  int64
		want []l2Region
	}{
		{"under", []l2Region{{1, 100}, {2, 200}}, 300, []l2Region{{1, 100}, {2, 200}}},
		{"halved, whole lines", []l2Region{{1, 1000}, {2, 3000}}, 2000, []l2Region{{1, 384}, {2, 1408}}},
		{"a region below a line is dropped", []l2Region{{1, 100}, {2, 100000}}, 50000, []l2Region{{2, 49920}}},
		{"nothing", nil, 10, nil},
	}
	for _, c := range cases {
		if got := l2Cap(c.in, c.max); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: l2Cap(%v, %d) = %v, want %v", c.name, c.in, c.max, got, c.want)
		}
	}
}

func TestParseL2Ahead(t *testing.T) {
	cases := []struct {
		ahead, mb, last string
		want            l2Ahead
		err             bool
	}{
		{"", "", "", l2AheadDefault, false},
		{"off", "", "", l2Ahead{}, false},
		{"1", "", "", l2Ahead{dist: []int{1}, max: 32 << 20}, false},
		{"1,2", "16", "1", l2Ahead{dist: []int{1, 2}, max: 16 << 20, evictLast: true}, false},
		{"2", "0.5", "0", l2Ahead{dist: []int{2}, max: 1 << 19}, false},
		{"x", "", "", l2Ahead{}, true},
		{"0,1", "", "", l2Ahead{}, true},
		{"1", "-3", "", l2Ahead{}, true},
		{"1", "", "yes", l2Ahead{}, true},
	}
	for _, c := range cases {
		got, err := parseL2Ahead(c.ahead, c.mb, c.last)
		if (err != nil) != c.err {
			t.Errorf("parseL2Ahead(%q, %q, %q): error %v, want error %v", c.ahead, c.mb, c.last, err, c.err)
			continue
		}
		if err == nil && !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseL2Ahead(%q, %q, %q) = %+v, want %+v", c.ahead, c.mb, c.last, got, c.want)
		}
	}
}
