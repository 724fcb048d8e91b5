package cli

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTakeGuardFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    GuardFlags
		rest    []string
		wantErr string
	}{
		{name: "none", args: []string{"run", "x.go"}, want: DefaultGuardFlags(), rest: []string{"run", "x.go"}},
		{name: "empty", args: nil, want: DefaultGuardFlags(), rest: nil},
		{name: "all spellings", args: []string{"--gpu-limit-gb", "40", "-gpu-poll-secs=0.25", "--gpu-over-secs=2", "generate", "--gpu-limit-gb", "1"},
			want: GuardFlags{LimitGB: 40, LimitSet: true, PollSecs: 0.25, OverSecs: 2}, rest: []string{"generate", "--gpu-limit-gb", "1"}},
		{name: "limit zero is set", args: []string{"-gpu-limit-gb", "0"}, want: GuardFlags{LimitSet: true, PollSecs: 0.5}, rest: []string{}},
		{name: "stops at another flag", args: []string{"--gpu-over-secs", "1", "-e", "1+1"}, want: GuardFlags{PollSecs: 0.5, OverSecs: 1}, rest: []string{"-e", "1+1"}},
		{name: "poll off", args: []string{"--gpu-poll-secs", "0"}, want: GuardFlags{}, rest: []string{}},
		{name: "missing value", args: []string{"--gpu-limit-gb"}, wantErr: "flag --gpu-limit-gb: needs a value"},
		{name: "bad number", args: []string{"--gpu-limit-gb", "lots"}, wantErr: `flag --gpu-limit-gb: invalid value "lots"`},
		{name: "negative limit", args: []string{"--gpu-limit-gb=-3"}, wantErr: "flag --gpu-limit-gb: -3: want a finite number"},
		{name: "poll below minimum", args: []string{"--gpu-poll-secs", "0.01"}, wantErr: "flag --gpu-poll-secs: 0.01: below the minimum 0.05"},
		{name: "negative over", args: []string{"--gpu-over-secs=-1"}, wantErr: "flag --gpu-over-secs: -1: want seconds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, rest, err := TakeGuardFlags("qwenrepl", tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "qwenrepl: ") {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g != tc.want || !slices.Equal(rest, tc.rest) {
				t.Fatalf("got %+v rest %q, want %+v rest %q", g, rest, tc.want, tc.rest)
			}
		})
	}
}

func TestGuardFlagsDeclare(t *testing.T) {
	g := DefaultGuardFlags()
	f := New("qwenkernel")
	g.Declare(f)
	if err := f.Parse([]string{"--gpu-limit-gb=1.5", "--gpu-over-secs", "0.5"}); err != nil {
		t.Fatal(err)
	}
	if err := g.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := g.LimitBytes()
	if err != nil || b != 3<<29 || !g.LimitSet || g.Poll() != 500*time.Millisecond || g.Over() != 500*time.Millisecond {
		t.Fatalf("%+v: %d bytes, poll %s, over %s, %v", g, b, g.Poll(), g.Over(), err)
	}
	u := f.Usage()
	for _, want := range []string{"--gpu-limit-gb GIB", "--gpu-poll-secs FLOAT", "(default 0.5)", "QWENGO_GPU_LIMIT_GB"} {
		if !strings.Contains(u, want) {
			t.Errorf("usage lacks %q:\n%s", want, u)
		}
	}
}
