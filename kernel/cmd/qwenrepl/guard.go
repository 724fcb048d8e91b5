package main

import (
	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel/cli"
)

// configureGuard hands the memory guard flags to the engine; the budget is applied when the
// backend opens (at the console's banner, or the first model load).
func configureGuard(g cli.GuardFlags) error {
	if err := g.Validate(); err != nil {
		return err
	}
	return engine.ConfigureGuard(guardOptions(g))
}

// guardOptions converts validated flags to the engine's options: an explicit limit only when
// --gpu-limit-gb was given, and --gpu-poll-secs 0 turns the watchdog off.
func guardOptions(g cli.GuardFlags) engine.GuardOptions {
	opt := engine.DefaultGuardOptions()
	if g.LimitSet {
		opt.Limit, _ = g.LimitBytes() // checked by Validate
	}
	opt.PollInterval, opt.OverFor = g.Poll(), g.Over()
	if g.PollSecs == 0 {
		opt.PollInterval = -1
	}
	return opt
}
