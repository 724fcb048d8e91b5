package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/guard"
	"github.com/qwengo/qwengo/kernel/cli"
)

// runGuardCmd runs `qwenrepl guard ARGS…` in process.
func runGuardCmd(t *testing.T, args ...string) (code int, stdout, stderr string, took time.Duration) {
	t.Helper()
	var out, errb bytes.Buffer
	start := time.Now()
	code = cli.Dispatch("qwenrepl", append([]string{"guard"}, args...), &out, &errb)
	return code, out.String(), errb.String(), time.Since(start)
}

// withGuardDevice makes the guard poll src (or fail to open with err) instead of NVML.
func withGuardDevice(t *testing.T, src guard.MemorySource, err error) {
	t.Helper()
	old := openGuardDevice
	openGuardDevice = func(int) (*guardDevice, error) {
		if err != nil {
			return nil, err
		}
		return &guardDevice{src: src, name: "fake GPU", close: func() error { return nil }}, nil
	}
	t.Cleanup(func() { openGuardDevice = old })
	t.Setenv(guard.EnvLimit, "")
}

// seqSource returns used[i] on the i-th read (the last one after that).
type seqSource struct {
	mu    sync.Mutex
	used  []int64
	reads int
}

func (s *seqSource) Used() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.used[min(s.reads, len(s.used)-1)]
	s.reads++
	return v, nil
}

func (s *seqSource) Total() (int64, error) { return 80 * guard.GiB, nil }

// Processes lists a process that is not the command's, so its tree reads 0.
func (s *seqSource) Processes() ([]guard.Process, error) {
	return []guard.Process{{PID: 1, Used: guard.GiB}}, nil
}

func decodeGuardJSON(t *testing.T, stdout string) guardReport {
	t.Helper()
	var r guardReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("--json output is not one JSON document: %v\n%s", err, stdout)
	}
	return r
}

func TestGuardKillsOverLimit(t *testing.T) {
	withGuardDevice(t, guard.NewFake(80*guard.GiB, 3*guard.GiB), nil)
	code, out, errs, took := runGuardCmd(t, "--gpu-limit-gb", "2", "--gpu-over-secs", "0", "--gpu-poll-secs", "0.05", "--json", "--", "sleep", "30")
	if code != 124 {
		t.Fatalf("exit %d, want 124\n%s", code, errs)
	}
	if took > 3*time.Second {
		t.Fatalf("took %s to kill", took)
	}
	r := decodeGuardJSON(t, out)
	if !r.Killed || r.Kill == nil || r.Kill.DeviceUsed != 3*guard.GiB || r.LimitBytes != 2*guard.GiB || r.ExitCode != 124 ||
		r.ChildSignal != "SIGTERM" || r.Kill.Escalated || r.PeakDevice != 3*guard.GiB || r.Samples < 1 {
		t.Fatalf("summary %+v kill %+v", r, r.Kill)
	}
	for _, want := range []string{"KILLING the command", "the device has 3.00 GiB in use", "over the limit 2.00 GiB", "exit 124", "peak GPU memory 3.00 GiB"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	t.Logf("killed in %s\n%s", took, errs)
}

// TestGuardOverFor: usage rises after the start, the command's per-process figure reads 0 (the
// unified-memory fallback is reported), and the kill waits until usage has been over for
// --gpu-over-secs.
func TestGuardOverFor(t *testing.T) {
	src := &seqSource{used: []int64{guard.GiB, guard.GiB, 3 * guard.GiB}} // baseline, first poll, then over
	withGuardDevice(t, src, nil)
	code, out, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "2", "--gpu-over-secs", "0.3", "--gpu-poll-secs", "0.05", "--json", "--", "sleep", "30")
	if code != 124 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	r := decodeGuardJSON(t, out)
	if r.Kill == nil || r.Kill.OverSecs < 0.3 || r.Kill.CommandUsed != 3*guard.GiB || !r.TreeTotal || !r.PerProcess {
		t.Fatalf("summary %+v kill %+v", r, r.Kill)
	}
	if !strings.Contains(errs, "per-process memory reads 0") || !strings.Contains(errs, "using the device total") || len(r.Notes) != 1 {
		t.Fatalf("fallback not reported once:\n%s\nnotes %q", errs, r.Notes)
	}
}

func TestGuardEscalatesToSIGKILL(t *testing.T) {
	fake := guard.NewFake(80*guard.GiB, guard.GiB)
	withGuardDevice(t, fake, nil)
	ready := filepath.Join(t.TempDir(), "ready")
	go func() { // go over the limit once the shell ignores SIGTERM
		for i := 0; i < 500; i++ {
			if _, err := os.Stat(ready); err == nil {
				fake.SetUsed(3 * guard.GiB)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	code, out, errs, took := runGuardCmd(t, "--gpu-limit-gb", "2", "--gpu-poll-secs", "0.05", "--kill-grace-secs", "0.3", "--json",
		"--", "sh", "-c", `trap "" TERM; touch `+ready+`; sleep 30`)
	if code != 124 || took > 5*time.Second {
		t.Fatalf("exit %d after %s\n%s", code, took, errs)
	}
	r := decodeGuardJSON(t, out)
	if !r.Kill.Escalated || r.ChildSignal != "SIGKILL" || !strings.Contains(errs, "sent SIGKILL") {
		t.Fatalf("summary %+v kill %+v\n%s", r, r.Kill, errs)
	}
}

func TestGuardChildStatus(t *testing.T) {
	cases := []struct {
		name   string
		script string
		code   int
		signal string
	}{
		{"exit 0", "exit 0", 0, ""},
		{"exit 3", "exit 3", 3, ""},
		{"killed by SIGKILL", "kill -KILL $$", 137, "SIGKILL"},
		{"killed by SIGUSR1", "kill -USR1 $$", 138, "SIGUSR1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			withGuardDevice(t, guard.NewFake(80*guard.GiB, guard.GiB), nil)
			code, out, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "2", "--gpu-poll-secs", "0.05", "--json", "--", "sh", "-c", c.script)
			if code != c.code {
				t.Fatalf("exit %d, want %d\n%s", code, c.code, errs)
			}
			r := decodeGuardJSON(t, out)
			if r.Killed || r.ChildStatus != c.code || r.ChildSignal != c.signal || (r.Samples > 0 && r.PeakDevice != guard.GiB) {
				t.Fatalf("summary %+v", r)
			}
			if !strings.Contains(errs, "never killed") {
				t.Fatalf("stderr:\n%s", errs)
			}
		})
	}
}

func TestGuardOutputPassesThrough(t *testing.T) {
	withGuardDevice(t, guard.NewFake(80*guard.GiB, guard.GiB), nil)
	code, out, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "2", "--", "sh", "-c", "echo out; echo err >&2")
	if code != 0 || out != "out\n" || !strings.Contains(errs, "err\n") {
		t.Fatalf("exit %d stdout %q stderr %q", code, out, errs)
	}
}

func TestGuardCommandNotFound(t *testing.T) {
	withGuardDevice(t, guard.NewFake(80*guard.GiB, guard.GiB), nil)
	code, _, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "2", "--", "qwengo-no-such-command-xyz")
	if code != 127 || !strings.Contains(errs, "command not found") {
		t.Fatalf("exit %d\n%s", code, errs)
	}
}

func TestGuardUsageErrors(t *testing.T) {
	withGuardDevice(t, guard.NewFake(80*guard.GiB, guard.GiB), nil)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--gpu-limit-gb", "2"}, "no command"},
		{[]string{"--gpu-limit-gb", "2", "--"}, "no command"},
		{[]string{"--gpu-poll-secs", "-1", "--", "true"}, "--gpu-poll-secs"},
		{[]string{"--gpu-over-secs", "NaN", "--", "true"}, "--gpu-over-secs"},
		{[]string{"--kill-grace-secs", "-2", "--", "true"}, "--kill-grace-secs"},
		{[]string{"--gpu-limit-gb", "-3", "--", "true"}, "--gpu-limit-gb"},
		{[]string{"--gpu-limit-gb", "lots", "--", "true"}, "--gpu-limit-gb"},
		{[]string{"--device", "-1", "--", "true"}, "--device"},
		{[]string{"--gpu-limt-gb", "2", "--", "true"}, "did you mean --gpu-limit-gb"},
		{[]string{"ls", "-l"}, "put -- before the command"},
		{[]string{"extra", "--", "true"}, `unexpected argument "extra" before --`},
	}
	for _, c := range cases {
		code, _, errs, _ := runGuardCmd(t, c.args...)
		if code != cli.ExitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errs, c.want)
		}
	}
	code, out, errs, _ := runGuardCmd(t, "--help")
	if code != 0 || !strings.Contains(out+errs, "usage: guard [flags] -- CMD [ARGS...]") {
		t.Fatalf("--help exit %d\n%s%s", code, out, errs)
	}
}

func TestGuardHelp(t *testing.T) {
	var out, errb bytes.Buffer
	code := cli.Dispatch("qwenrepl", []string{"help", "guard"}, &out, &errb)
	help := out.String() + errb.String()
	if code != 0 || !strings.Contains(help, "--gpu-limit-gb") || !strings.Contains(help, "exits 124") || !strings.Contains(help, "no limit") {
		t.Fatalf("exit %d\n%s", code, help)
	}
}

func TestGuardPollMinimum(t *testing.T) {
	withGuardDevice(t, guard.NewFake(80*guard.GiB, guard.GiB), nil)
	code, out, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "2", "--gpu-poll-secs", "0.001", "--json", "--", "true")
	if code != 0 || !strings.Contains(errs, "raised to the minimum 0.05") || decodeGuardJSON(t, out).PollSecs != 0.05 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
}

// TestGuardNoNVML: without NVML any limit fails at once with exit 2, before running the
// command; --gpu-limit-gb 0 and QWENGO_GPU_LIMIT_GB=0 run it unwatched.
func TestGuardNoNVML(t *testing.T) {
	missing := fmt.Errorf("%w: libnvidia-ml.so.1 not found (cannot open shared object file)", guard.ErrNVMLUnavailable)
	withGuardDevice(t, nil, missing)
	marker := filepath.Join(t.TempDir(), "ran")
	for _, args := range [][]string{
		{"--gpu-limit-gb", "108", "--", "touch", marker},
		{"--", "touch", marker}, // the default budget needs the device size
	} {
		code, out, errs, _ := runGuardCmd(t, append([]string{"--json"}, args...)...)
		if code != 2 || !strings.Contains(errs, "NVML not available: libnvidia-ml.so.1 not found") || !strings.Contains(errs, "--gpu-limit-gb 0") {
			t.Fatalf("%q: exit %d\n%s", args, code, errs)
		}
		if r := decodeGuardJSON(t, out); !strings.Contains(r.Error, "NVML not available") || r.ExitCode != 2 {
			t.Fatalf("summary %+v", r)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the command ran although the guard could not watch it")
		}
	}
	code, _, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "0", "--", "sh", "-c", "exit 5")
	if code != 5 || !strings.Contains(errs, "no GPU memory limit") {
		t.Fatalf("--gpu-limit-gb 0: exit %d\n%s", code, errs)
	}
	t.Setenv(guard.EnvLimit, "0")
	if code, _, errs, _ := runGuardCmd(t, "--", "sh", "-c", "exit 6"); code != 6 {
		t.Fatalf("%s=0: exit %d\n%s", guard.EnvLimit, code, errs)
	}
	t.Setenv(guard.EnvLimit, "many")
	if code, _, errs, _ := runGuardCmd(t, "--", "true"); code != 2 || !strings.Contains(errs, guard.EnvLimit+"=many") {
		t.Fatalf("bad env: exit %d\n%s", code, errs)
	}
}

// TestGuardRealNVMLUnavailable runs the real NVML path on machines without a usable NVML.
func TestGuardRealNVMLUnavailable(t *testing.T) {
	n, err := guard.OpenNVML(0)
	if err == nil {
		n.Close()
		t.Skip("NVML works here")
	}
	t.Setenv(guard.EnvLimit, "")
	code, _, errs, _ := runGuardCmd(t, "--gpu-limit-gb", "1", "--", "true")
	if code != 2 || !strings.Contains(errs, "NVML not available") {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	t.Logf("%s", errs)
}

func TestGuardDefaultBudget(t *testing.T) {
	withGuardDevice(t, guard.NewFake(100*guard.GiB, guard.GiB), nil)
	code, out, _, _ := runGuardCmd(t, "--json", "--", "true")
	r := decodeGuardJSON(t, out)
	if code != 0 || r.LimitBytes != 95*guard.GiB || !strings.Contains(r.LimitSource, "minus margin") {
		t.Fatalf("exit %d summary %+v", code, r)
	}
	t.Setenv(guard.EnvLimit, "7")
	code, out, _, _ = runGuardCmd(t, "--json", "--", "true")
	if r := decodeGuardJSON(t, out); code != 0 || r.LimitBytes != 7*guard.GiB || r.LimitSource != guard.EnvLimit {
		t.Fatalf("exit %d summary %+v", code, r)
	}
}

// TestGuardForwardsSIGINT sends SIGINT to this process while the guard runs a command: the
// guard forwards it to the command's process group.
func TestGuardForwardsSIGINT(t *testing.T) {
	if testing.Short() {
		t.Skip("signals this test process")
	}
	withGuardDevice(t, guard.NewFake(80*guard.GiB, guard.GiB), nil)
	ready := filepath.Join(t.TempDir(), "ready")
	go func() {
		for i := 0; i < 500; i++ {
			if _, err := os.Stat(ready); err == nil {
				syscall.Kill(os.Getpid(), syscall.SIGINT)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	code, out, errs, took := runGuardCmd(t, "--gpu-limit-gb", "2", "--json", "--", "sh", "-c", "touch "+ready+"; exec sleep 30")
	if code != 130 || took > 5*time.Second {
		t.Fatalf("exit %d after %s\n%s", code, took, errs)
	}
	if r := decodeGuardJSON(t, out); len(r.Forwarded) != 1 || r.Forwarded[0] != "SIGINT" || r.ChildSignal != "SIGINT" || r.Killed {
		t.Fatalf("summary %+v", r)
	}
}

// TestGuardGPU runs on a GPU machine (QWENGO_GPU_TESTS=1, NVML and python3 with CUDA torch):
// a child allocating 3e9 bytes is killed under --gpu-limit-gb 2 and runs to the end under 8.
func TestGuardGPU(t *testing.T) {
	if os.Getenv("QWENGO_GPU_TESTS") == "" {
		t.Skip("set QWENGO_GPU_TESTS=1 on a GPU machine")
	}
	n, err := guard.OpenNVML(0)
	if err != nil {
		t.Fatalf("NVML: %v", err)
	}
	total, _ := n.Total()
	used, _ := n.Used()
	t.Logf("NVML: GPU 0 %s, total %d bytes (%.2f GiB), used %.2f GiB, per-process API %s", n.Name(), total, float64(total)/float64(guard.GiB),
		float64(used)/float64(guard.GiB), n.ProcessAPI())
	n.Close()
	if total < 100*guard.GiB {
		t.Errorf("total %d: not an H200-sized device", total)
	}
	if err := exec.Command("python3", "-c", "import torch; assert torch.cuda.is_available()").Run(); err != nil {
		t.Fatalf("python3 with CUDA torch: %v", err)
	}
	prog := func(hold float64) string {
		return fmt.Sprintf("import torch, time; x = torch.empty(int(3e9), dtype=torch.uint8, device='cuda'); x.fill_(1); torch.cuda.synchronize(); print('allocated', flush=True); time.sleep(%g)", hold)
	}
	t.Setenv(guard.EnvLimit, "")
	code, out, errs, took := runGuardCmd(t, "--gpu-limit-gb", "2", "--gpu-over-secs", "0", "--gpu-poll-secs", "0.1", "--json", "--", "python3", "-c", prog(30))
	t.Logf("limit 2 GiB: exit %d after %s\nstderr:\n%s\nstdout:\n%s", code, took, errs, out)
	if code != 124 || took > 25*time.Second {
		t.Fatalf("exit %d after %s, want 124 within seconds", code, took)
	}
	js := out[strings.Index(out, "{"):]
	r := decodeGuardJSON(t, js)
	if !r.Killed || r.PeakDevice <= 2*guard.GiB {
		t.Fatalf("summary %+v", r)
	}
	code, out, errs, took = runGuardCmd(t, "--gpu-limit-gb", "8", "--gpu-poll-secs", "0.1", "--json", "--", "python3", "-c", prog(2))
	t.Logf("limit 8 GiB: exit %d after %s\nstderr:\n%s\nstdout:\n%s", code, took, errs, out)
	if code != 0 {
		t.Fatalf("exit %d under a limit it stays below", code)
	}
	r = decodeGuardJSON(t, out[strings.Index(out, "{"):])
	if r.Killed || r.PeakTree < 2*guard.GiB || r.PeakDevice < 3*guard.GiB {
		t.Fatalf("peaks not seen: %+v", r)
	}
}

// TestGuardFileOutputs passes files as stdout and stderr, as qwenrepl does: the command writes
// to them directly and the guard's own lines land there too.
func TestGuardFileOutputs(t *testing.T) {
	withGuardDevice(t, guard.NewFake(80*guard.GiB, 3*guard.GiB), nil)
	dir := t.TempDir()
	of, _ := os.Create(filepath.Join(dir, "out"))
	ef, _ := os.Create(filepath.Join(dir, "err"))
	code := cli.Dispatch("qwenrepl", []string{"guard", "--gpu-limit-gb", "2", "--json", "--", "sh", "-c", "echo hello; echo oops >&2; exec sleep 30"}, of, ef)
	of.Close()
	ef.Close()
	out, _ := os.ReadFile(filepath.Join(dir, "out"))
	errs, _ := os.ReadFile(filepath.Join(dir, "err"))
	if code != 124 || !strings.Contains(string(errs), "KILLING") || !strings.Contains(string(out), `"killed": true`) {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}
