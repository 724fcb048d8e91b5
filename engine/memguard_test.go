package engine

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/guard"
)

// resetGuard puts the default guard back after a test.
func resetGuard(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		if err := ConfigureGuard(DefaultGuardOptions()); err != nil {
			t.Errorf("restoring the default guard: %v", err)
		}
		StopGuard()
	})
}

func loadTiny(t *testing.T) *Model {
	t.Helper()
	m, err := Load(filepath.Join("qwen3", "testdata", "tiny-tied"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// settle returns the backend's cached blocks (engine/cuda keeps freed tensors for reuse,
// accounted under workspace) so in-use figures compare.
func settle(t *testing.T) {
	t.Helper()
	if rc, ok := Backend().(cacheReleaser); ok {
		if err := rc.ReleaseCache(); err != nil {
			t.Fatal(err)
		}
	}
}

func seqIDs(n int) []int {
	ids := make([]int, n)
	for i := range ids {
		ids[i] = (i*37 + 5) % 512
	}
	return ids
}

// TestBudgetRefusesAndRecovers: a budget too small for a long prefill refuses it with a
// *MemoryError naming the numbers; nothing leaks, a short generation still runs under it, and
// after the limit is raised the long prefill works and the model answers as before.
func TestBudgetRefusesAndRecovers(t *testing.T) {
	resetGuard(t)
	m := loadTiny(t)
	prompt := []int{5, 17, 300, 2, 99}
	before, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	settle(t)
	used := Memory().Used()
	if err := SetMemoryLimit(used + 256<<10); err != nil {
		t.Fatal(err)
	}
	if st := MemoryGuard(); st.Budget.Limit != used+256<<10 || !st.Applied || st.Budget.Source != "--gpu-limit-gb" {
		t.Fatalf("guard status after SetMemoryLimit: %+v", st)
	}
	if got := Memory().Budget; got != used+256<<10 {
		t.Fatalf("backend budget %d, want %d", got, used+256<<10)
	}

	_, err = m.LogitsIDs(seqIDs(900), true)
	var me *MemoryError
	var ob *backend.OverBudget
	if !errors.As(err, &me) || !errors.As(err, &ob) {
		t.Fatalf("long prefill under a tight budget: %v (%T), want *MemoryError wrapping *backend.OverBudget", err, err)
	}
	if ob.Budget != used+256<<10 || ob.Request <= 0 || ob.InUse < used {
		t.Fatalf("OverBudget numbers: %+v (in use before %d)", ob, used)
	}
	msg := err.Error()
	t.Logf("refused:\n%s", msg)
	for _, want := range []string{"out of memory budget", "short by", "in use by category", "weights", "kv_cache", "nothing was allocated", "failed in: forward"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	settle(t)
	if after := Memory().Used(); after != used {
		t.Fatalf("the refused call leaked: %d bytes in use, %d before", after, used)
	}

	// The resident model still works inside the budget: a short cached generation.
	again, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 8})
	if err != nil {
		t.Fatalf("short generation under the tight budget: %v", err)
	}
	if !slices.Equal(again.IDs, before.IDs) {
		t.Fatalf("after the refusal: %v, before %v", again.IDs, before.IDs)
	}
	if !strings.Contains(MemoryReport(), "memory budget") {
		t.Fatalf("report:\n%s", MemoryReport())
	}

	if err := SetMemoryLimit(0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.LogitsIDs(seqIDs(900), true); err != nil {
		t.Fatalf("after removing the limit: %v", err)
	}
	if st := MemoryGuard(); !st.Budget.Unlimited() || st.Watching || Memory().Budget != 0 {
		t.Fatalf("limit 0: %+v, backend budget %d", st, Memory().Budget)
	}
}

// TestWatchdogCancelsRunawayCall: with a fake device going over the limit while a long
// generation runs, the watchdog cancels it; the error names the guard and the numbers, the
// report reaches the user, and the next call works and answers as before.
func TestWatchdogCancelsRunawayCall(t *testing.T) {
	resetGuard(t)
	m := loadTiny(t)
	prompt := []int{5, 17, 300, 2, 99}
	want, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	dev := guard.NewFake(16*guard.GiB, guard.GiB)
	events := make(chan guard.Event, 4)
	err = ConfigureGuard(GuardOptions{Limit: 8 * guard.GiB, PollInterval: 5 * time.Millisecond, OverFor: 20 * time.Millisecond,
		Source: dev, SourceName: "fake device", Report: func(ev guard.Event) { events <- ev }})
	if err != nil {
		t.Fatal(err)
	}
	st := MemoryGuard()
	if !st.Watching || st.Source != "fake device" || !strings.Contains(st.String(), "watchdog on fake device every 5ms") {
		t.Fatalf("status: %+v / %s", st, st)
	}

	type result struct {
		g   *Generation
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Without the KV cache each token recomputes the sequence: ~a minute for 1000 tokens.
		g, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 1000, NoKVCache: true})
		done <- result{g, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for inFlight.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the generation never started")
		}
		time.Sleep(time.Millisecond)
	}
	dev.SetUsed(12 * guard.GiB)

	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the watchdog did not stop the generation within 60 s")
	}
	t.Logf("cancelled after %d tokens: %v", len(r.g.IDs), r.err)
	var ev *guard.Event
	if !errors.As(r.err, &ev) || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled generation: %v (%T), want an error wrapping *guard.Event and context.Canceled", r.err, r.err)
	}
	for _, want := range []string{"memory guard", "12.00 GiB", "8.00 GiB", "cancelled 1 running call"} {
		if !strings.Contains(r.err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, r.err)
		}
	}
	if r.g == nil || len(r.g.IDs) >= 1000 {
		t.Fatalf("the generation ran to the end: %+v", r.g)
	}
	select {
	case rep := <-events:
		if rep.Cancelled != 1 || rep.Accounting == nil || !strings.Contains(rep.Report(), "engine accounting") {
			t.Fatalf("event: %+v\n%s", rep, rep.Report())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event reported")
	}
	if st := MemoryGuard(); st.Events != 1 || st.Last == nil || !strings.Contains(MemoryReport(), "last intervention: memory guard") {
		t.Fatalf("status after the event: %+v\n%s", st, MemoryReport())
	}

	dev.SetUsed(guard.GiB)
	time.Sleep(20 * time.Millisecond) // a sample under the limit ends the episode
	got, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 8})
	if err != nil {
		t.Fatalf("the call after the intervention: %v", err)
	}
	if !slices.Equal(got.IDs, want.IDs) {
		t.Fatalf("after the intervention: %v, before %v", got.IDs, want.IDs)
	}
	if u, tot, err := DeviceMemory(); err != nil || u != guard.GiB || tot != 16*guard.GiB {
		t.Fatalf("DeviceMemory: %d %d %v", u, tot, err)
	}
}

func TestConfigureGuard(t *testing.T) {
	resetGuard(t)
	// On a device backend (a -tags cuda build on a GPU machine) the default is the device size
	// minus the margin, watched through the backend's cuMemGetInfo.
	total := Backend().Memory().Total
	defLimit, defSource, defWatch, watchSource := int64(0), "none given", false, "backend accounting"
	if total > 0 {
		defLimit, defSource, defWatch = total-guard.Margin(total), "device total", true
		if _, ok := Backend().(deviceUser); ok {
			watchSource = "cuMemGetInfo"
		} else {
			watchSource = "NVML"
		}
	}
	tests := []struct {
		name    string
		env     string
		opt     GuardOptions
		wantErr string
		limit   int64
		source  string
		watch   bool
	}{
		{name: "default", opt: DefaultGuardOptions(), limit: defLimit, source: defSource, watch: defWatch},
		{name: "environment", env: "0.5", opt: DefaultGuardOptions(), limit: guard.GiB / 2, source: guard.EnvLimit, watch: true},
		{name: "environment zero", env: "0", opt: DefaultGuardOptions(), source: guard.EnvLimit + "=0"},
		{name: "flag beats environment", env: "0.5", opt: GuardOptions{Limit: guard.GiB}, limit: guard.GiB, source: "--gpu-limit-gb", watch: true},
		{name: "watchdog off", opt: GuardOptions{Limit: guard.GiB, PollInterval: -1}, limit: guard.GiB, source: "--gpu-limit-gb"},
		{name: "malformed environment", env: "lots", opt: DefaultGuardOptions(), wantErr: "QWENGO_GPU_LIMIT_GB=lots"},
		{name: "negative limit", opt: GuardOptions{Limit: -5}, wantErr: "want ≥ 0"},
		{name: "negative over-for", opt: GuardOptions{Limit: guard.GiB, OverFor: -time.Second}, wantErr: "want ≥ 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(guard.EnvLimit, tc.env)
			err := ConfigureGuard(tc.opt)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := MemoryGuard()
			if st.Budget.Limit != tc.limit || !strings.Contains(st.Budget.Source, tc.source) || st.Watching != tc.watch {
				t.Fatalf("status %+v, want limit %d from %q, watching %v", st, tc.limit, tc.source, tc.watch)
			}
			if st.Watching && !strings.HasPrefix(st.Source, watchSource) {
				t.Fatalf("the watchdog polls %q, want %q", st.Source, watchSource)
			}
			if Memory().Budget != tc.limit {
				t.Fatalf("backend budget %d, want %d", Memory().Budget, tc.limit)
			}
		})
	}
}

// TestWatchdogOnDevice runs where the engine's backend is a GPU (a -tags cuda build on a GPU
// machine; skipped elsewhere): the watchdog polls the real device memory (cuMemGetInfo), a
// runaway allocation pushes the device past the limit while a long generation runs, and the
// generation is cancelled with the device's numbers; after the runaway memory is freed the next
// call works.
func TestWatchdogOnDevice(t *testing.T) {
	b := Backend()
	if b.Memory().Total <= 0 {
		t.Skipf("the engine's backend is %s: no device memory to watch", b.Name())
	}
	resetGuard(t)
	m := loadTiny(t)
	prompt := []int{5, 17, 300, 2, 99}
	want, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	settle(t)
	used0, total, err := DeviceMemory()
	if err != nil {
		t.Fatal(err)
	}
	limit := used0 + 256<<20
	events := make(chan guard.Event, 4)
	if err := ConfigureGuard(GuardOptions{Limit: limit, PollInterval: 10 * time.Millisecond, OverFor: 30 * time.Millisecond,
		Report: func(ev guard.Event) { events <- ev }}); err != nil {
		t.Fatal(err)
	}
	st := MemoryGuard()
	t.Logf("device %s in use of %s; %s", backend.Human(used0), backend.Human(total), st)
	if !st.Watching {
		t.Fatalf("no watchdog: %s", st)
	}
	done := make(chan error, 1)
	go func() {
		_, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 1000, NoKVCache: true})
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); inFlight.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the generation never started")
		}
	}
	// The runaway: as much as the budget still allows, which the device's other memory (the
	// context, other processes) pushes over the limit.
	room := limit - Memory().Used() - 16<<20
	cols := 1 << 20 // elements per row (≥ 2 MiB per row at any element size)
	runaway, err := b.Alloc(backend.Workspace, int(room/int64(cols*4)), cols)
	if err != nil {
		t.Fatalf("runaway allocation of ~%s: %v", backend.Human(room), err)
	}
	freed := false
	defer func() {
		if !freed {
			b.Free(runaway)
		}
	}()
	var cerr error
	select {
	case cerr = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the watchdog did not stop the generation within 60 s")
	}
	b.Free(runaway)
	freed = true
	t.Logf("generation: %v", cerr)
	var ev *guard.Event
	if !errors.As(cerr, &ev) || !strings.Contains(cerr.Error(), "memory guard: the device has") {
		t.Fatalf("generation under a runaway allocation: %v, want the watchdog's cancellation", cerr)
	}
	select {
	case rep := <-events:
		t.Logf("report:\n%s", rep.Report())
		if rep.Reading.DeviceUsed <= limit {
			t.Fatalf("event below the limit: %+v", rep.Reading)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event reported")
	}
	settle(t)
	time.Sleep(50 * time.Millisecond) // a sample under the limit ends the episode
	got, err := m.GenerateIDs(prompt, GenerateOptions{MaxTokens: 8})
	if err != nil {
		t.Fatalf("the call after the intervention: %v", err)
	}
	if !slices.Equal(got.IDs, want.IDs) {
		t.Fatalf("after the intervention: %v, before %v", got.IDs, want.IDs)
	}
}

func TestGuardError(t *testing.T) {
	ob := &backend.OverBudget{Category: backend.Activations, Request: 3 << 20, InUse: 9 << 20, Budget: 10 << 20}
	ev := &guard.Event{Limit: 8 * guard.GiB, Why: "the device has 12.00 GiB in use (all processes), over the limit 8.00 GiB", Cancelled: 1}
	cancelled, cancel := context.WithCancelCause(context.Background())
	cancel(ev)
	plain, stop := context.WithCancel(context.Background())
	stop()
	other := errors.New("disk full")
	tests := []struct {
		name  string
		ctx   context.Context
		err   error
		want  []string
		isMem bool
		isEv  bool
	}{
		{name: "nil", ctx: context.Background(), err: nil},
		{name: "other error passes", ctx: context.Background(), err: other, want: []string{"disk full"}},
		{name: "over budget", ctx: context.Background(), err: ob, want: []string{"engine: out of memory budget", "short by 2.00 MiB"}, isMem: true},
		{name: "over budget wrapped", ctx: context.Background(), err: errors.Join(errors.New("forward: layer 1"), ob), want: []string{"failed in: forward: layer 1"}, isMem: true},
		{name: "watchdog cancel", ctx: cancelled, err: context.Canceled, want: []string{"stopped by the memory guard", "12.00 GiB", "context canceled"}, isEv: true},
		{name: "plain cancel", ctx: plain, err: context.Canceled, want: []string{"context canceled"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := guardError(tc.ctx, tc.err)
			if tc.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var me *MemoryError
			var got *guard.Event
			if errors.As(err, &me) != tc.isMem || errors.As(err, &got) != tc.isEv || !errors.Is(err, tc.err) {
				t.Fatalf("%v (%T): MemoryError %v, Event %v", err, err, tc.isMem, tc.isEv)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err.Error(), w)
				}
			}
		})
	}
}

func TestGuardStatusText(t *testing.T) {
	ev := &guard.Event{Why: "the device has 12.00 GiB in use (all processes), over the limit 8.00 GiB"}
	tests := []struct {
		st          GuardStatus
		long, short string
	}{
		{GuardStatus{Budget: guard.Budget{Source: "none given"}},
			"memory budget no limit (none given); no watchdog", "no memory budget"},
		{GuardStatus{Budget: guard.Budget{Limit: 8 * guard.GiB, Source: "--gpu-limit-gb"}, Applied: true, Watching: true, Source: "cuMemGetInfo", PollInterval: 500 * time.Millisecond, OverFor: 2 * time.Second, Events: 1, Last: ev},
			"memory budget 8.00 GiB (--gpu-limit-gb); watchdog on cuMemGetInfo every 500ms, acts after 2s over; 1 intervention(s)",
			"memory budget 8.00 GiB (--gpu-limit-gb), watchdog every 500ms acting after 2s over"},
		{GuardStatus{Budget: guard.Budget{Limit: guard.GiB, Source: guard.EnvLimit}, Note: "NVML missing"},
			"memory budget 1.00 GiB (QWENGO_GPU_LIMIT_GB) (not enforced: the backend takes no budget); no watchdog [NVML missing]",
			"memory budget 1.00 GiB (QWENGO_GPU_LIMIT_GB) not enforced, no watchdog"},
	}
	for _, tc := range tests {
		if got := tc.st.String(); got != tc.long {
			t.Errorf("String:\n got %q\nwant %q", got, tc.long)
		}
		if got := tc.st.Short(); got != tc.short {
			t.Errorf("Short:\n got %q\nwant %q", got, tc.short)
		}
	}
}
