package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/engine/guard"
	"github.com/qwengo/qwengo/kernel/cli"
)

func TestGuardOptions(t *testing.T) {
	tests := []struct {
		name string
		g    cli.GuardFlags
		want engine.GuardOptions
	}{
		{"defaults", cli.DefaultGuardFlags(), engine.GuardOptions{Limit: guard.Unset, PollInterval: 500 * time.Millisecond}},
		{"limit", cli.GuardFlags{LimitGB: 2, LimitSet: true, PollSecs: 0.1, OverSecs: 3}, engine.GuardOptions{Limit: 2 << 30, PollInterval: 100 * time.Millisecond, OverFor: 3 * time.Second}},
		{"no limit", cli.GuardFlags{LimitSet: true, PollSecs: 0.5}, engine.GuardOptions{Limit: 0, PollInterval: 500 * time.Millisecond}},
		{"watchdog off", cli.GuardFlags{}, engine.GuardOptions{Limit: guard.Unset, PollInterval: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := guardOptions(tc.g)
			if got.Limit != tc.want.Limit || got.PollInterval != tc.want.PollInterval || got.OverFor != tc.want.OverFor {
				t.Fatalf("%+v, want %+v", got, tc.want)
			}
		})
	}
}

// The guard flags come before the command and reach the engine of the console, scripts and
// one-liners; a limit below the weights refuses the load with the numbers.
func TestGuardFlags(t *testing.T) {
	tiny, err := filepath.Abs(filepath.Join("..", "..", "..", "engine", "qwen3", "testdata", "tiny-tied"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args   []string
		code   int
		stdout string
		errs   string
	}{
		{[]string{"--gpu-limit-gb", "0.5", "-e", "engine.MemoryGuard().Budget.Limit"}, 0, "536870912\n", ""},
		{[]string{"--gpu-limit-gb=1", "-e", "engine.MemoryGuard().Watching"}, 0, "true\n", ""},
		{[]string{"--gpu-limit-gb=1", "--gpu-poll-secs", "0", "-e", "engine.MemoryGuard().Watching"}, 0, "false\n", ""},
		{[]string{"-gpu-over-secs", "2", "-gpu-limit-gb", "1", "-e", "engine.MemoryGuard().OverFor"}, 0, "2s\n", ""},
		{[]string{"--gpu-limit-gb", "0.0001", "-e", "_, err := engine.Load(\"" + tiny + "\")\nfmt.Println(err)"}, 0, "out of memory budget", ""},
		{[]string{"--gpu-limit-gb", "1", "-e", "engine.MemoryReport()"}, 0, "memory budget 1.00 GiB (--gpu-limit-gb); watchdog on backend accounting", ""},
		{[]string{"--gpu-poll-secs", "0.01", "-e", "1"}, 2, "", "flag --gpu-poll-secs: 0.01: below the minimum"},
		{[]string{"--gpu-limit-gb"}, 2, "", "flag --gpu-limit-gb: needs a value"},
	}
	for _, c := range cases {
		r := runBin(t, "", c.args...)
		if r.code != c.code || !strings.Contains(r.stdout, c.stdout) || !strings.Contains(r.stderr, c.errs) {
			t.Errorf("qwenrepl %q: exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", c.args, r.code, c.code, r.stdout, c.stdout, r.stderr, c.errs)
		}
	}
}
