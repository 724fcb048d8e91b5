package jobs

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/guard"
	"github.com/qwengo/qwengo/kernel/cli"
)

func init() {
	cli.Register(cli.Command{Name: "guard", Summary: "run a command under a GPU memory limit; kill its process group when over (exit 124)", Run: runGuard})
}

// Exit statuses of `qwenrepl guard` besides the command's own.
const (
	guardExitKilled   = 124 // the guard killed the command (as timeout(1))
	guardExitNoStart  = 126 // the command was found but could not be started
	guardExitNotFound = 127 // the command was not found
	guardMinPoll      = 0.05
)

const guardSummary = `Runs CMD in its own process group and polls GPU memory through NVML (libnvidia-ml.so.1)
every --gpu-poll-secs. Over means: the command's processes (its process tree and process
group, per-process figures; where those read 0 while the device's use grew, as on unified
memory, the device total) or the whole device (all processes) above the limit. When over for
--gpu-over-secs (0 = the first sample over) it sends SIGTERM to the process group, SIGKILL
after --kill-grace-secs, and exits 124. Otherwise it exits with the command's status (128+N
when the command died by signal N; 126/127 when it could not be started). SIGINT, SIGTERM and
SIGHUP are forwarded to the process group. The report (peak usage, limit, when and why it
killed) goes to stderr; --json adds a summary on stdout after the command's own output.

The limit is in GiB (limit×1024 MiB, as the seed's wrapper). Without --gpu-limit-gb it comes
from QWENGO_GPU_LIMIT_GB, else the device size minus max(2 GiB, 5 %). --gpu-limit-gb 0 (or
QWENGO_GPU_LIMIT_GB=0) means no limit: the command just runs, NVML is not needed. Without
NVML, any other limit fails at once with exit status 2 and the reason.

The command runs outside the terminal's foreground process group (like timeout(1)): a
command that reads the terminal is stopped; pipe its input instead.`

// guardDevice is the memory source the guard polls.
type guardDevice struct {
	src   guard.MemorySource
	name  string
	close func() error
}

// openGuardDevice opens GPU index through NVML; tests replace it with a fake source.
var openGuardDevice = func(index int) (*guardDevice, error) {
	n, err := guard.OpenNVML(index)
	if err != nil {
		return nil, err
	}
	return &guardDevice{src: n, name: n.Name(), close: n.Close}, nil
}

// guardReport is the --json summary.
type guardReport struct {
	Command      []string     `json:"command"`
	PID          int          `json:"pid,omitempty"`
	Device       *guardDevRep `json:"device,omitempty"`
	LimitBytes   int64        `json:"limit_bytes"`
	LimitGiB     float64      `json:"limit_gib"`
	LimitSource  string       `json:"limit_source"`
	PollSecs     float64      `json:"poll_secs"`
	OverSecs     float64      `json:"over_secs"`
	GraceSecs    float64      `json:"kill_grace_secs"`
	Samples      int          `json:"samples"`
	SampleErrors int          `json:"sample_errors"`
	LastError    string       `json:"last_sample_error,omitempty"`
	PeakDevice   int64        `json:"peak_device_bytes"`
	PeakDeviceAt float64      `json:"peak_device_at_secs"`
	PeakTree     int64        `json:"peak_command_bytes"`
	PeakTreeAt   float64      `json:"peak_command_at_secs"`
	PerProcess   bool         `json:"per_process"`
	TreeTotal    bool         `json:"command_bytes_from_device_total"`
	Notes        []string     `json:"notes,omitempty"`
	Killed       bool         `json:"killed"`
	Kill         *guardKill   `json:"kill,omitempty"`
	Forwarded    []string     `json:"forwarded_signals,omitempty"`
	ChildStatus  int          `json:"child_status"`
	ChildSignal  string       `json:"child_signal,omitempty"`
	ExitCode     int          `json:"exit_code"`
	Seconds      float64      `json:"duration_secs"`
	Error        string       `json:"error,omitempty"`
}

type guardDevRep struct {
	Index    int    `json:"index"`
	Name     string `json:"name"`
	Total    int64  `json:"total_bytes"`
	Baseline int64  `json:"used_at_start_bytes"`
}

type guardKill struct {
	AtSecs      float64 `json:"at_secs"`
	Reason      string  `json:"reason"`
	DeviceUsed  int64   `json:"device_used_bytes"`
	CommandUsed int64   `json:"command_bytes"`
	OverSecs    float64 `json:"over_for_secs"`
	Escalated   bool    `json:"sigkill"`
	GoneSecs    float64 `json:"gone_after_secs"`
}

func secs(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

// splitCommand separates the guard's flags from the command at the first "--".
func splitCommand(args []string) (flags, cmd []string, dashed bool) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:], true
		}
	}
	return args, nil, false
}

// lockedWriter serialises writes from the guard's goroutines and the copier exec starts for a
// writer that is not a file. It has no ReadFrom on purpose: bytes.Buffer.ReadFrom, which
// io.Copy would use, holds the buffer across a blocking read and drops concurrent writes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// shareable returns w itself when it is a file (the command then writes to it directly) and a
// lockedWriter otherwise.
func shareable(w io.Writer) io.Writer {
	if _, ok := w.(*os.File); ok {
		return w
	}
	return &lockedWriter{w: w}
}

func runGuard(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = shareable(stdout), shareable(stderr)
	f := cli.New("guard")
	f.SetOutput(stderr)
	f.Summary = guardSummary
	f.Positional = "-- CMD [ARGS...]"
	limitGB := f.Float("gpu-limit-gb", 0, "memory limit in GiB (0 = no limit; default: $QWENGO_GPU_LIMIT_GB, else the device size minus max(2 GiB, 5 %))")
	overSecs := f.Float("gpu-over-secs", 0, "kill once usage has stayed over the limit this many seconds (0 = the first sample over)")
	pollSecs := f.Float("gpu-poll-secs", 0.5, "seconds between samples (minimum 0.05)")
	devIndex := f.Int("device", 0, "GPU index as NVML and nvidia-smi number them (CUDA_VISIBLE_DEVICES does not apply)")
	graceSecs := f.Float("kill-grace-secs", 2, "seconds between SIGTERM and SIGKILL of the process group")
	jsonOut := f.JSON()
	flagArgs, cmdArgs, dashed := splitCommand(args)
	err := f.Parse(flagArgs)
	if err != nil {
		code, _ := f.ParseCommandResult(err)
		if code != cli.ExitOK && !dashed {
			fmt.Fprintln(stderr, "guard: put -- before the command: qwenrepl guard [flags] -- CMD [ARGS...]")
		}
		return code
	}
	if dashed {
		if f.NArg() > 0 {
			fmt.Fprintf(stderr, "guard: unexpected argument %q before --\nrun 'guard --help' for usage\n", f.Arg(0))
			return cli.ExitUsage
		}
	} else {
		cmdArgs = f.Args()
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "guard: "+format+"\nrun 'guard --help' for usage\n", a...)
		return cli.ExitUsage
	}
	if len(cmdArgs) == 0 || cmdArgs[0] == "" {
		return usage("no command: qwenrepl guard [flags] -- CMD [ARGS...]")
	}
	for name, v := range map[string]float64{"gpu-over-secs": *overSecs, "gpu-poll-secs": *pollSecs, "kill-grace-secs": *graceSecs} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1e6 {
			return usage("flag --%s: %v is not a number of seconds in [0, 1e6]", name, v)
		}
	}
	if *devIndex < 0 {
		return usage("flag --device: %d is not a GPU index", *devIndex)
	}
	if *pollSecs < guardMinPoll {
		fmt.Fprintf(stderr, "guard: --gpu-poll-secs %g raised to the minimum %g\n", *pollSecs, guardMinPoll)
		*pollSecs = guardMinPoll
	}
	explicit := guard.Unset
	if f.IsSet("gpu-limit-gb") {
		if explicit, err = guard.GiBToBytes(*limitGB); err != nil {
			return usage("flag --gpu-limit-gb: %v", err)
		}
	}
	rep := &guardReport{Command: cmdArgs, PollSecs: *pollSecs, OverSecs: *overSecs, GraceSecs: *graceSecs}
	finish := func(code int) int {
		rep.ExitCode = code
		if *jsonOut {
			if err := cli.WriteJSON(stdout, rep); err != nil {
				fmt.Fprintln(stderr, "guard:", err)
			}
		}
		return code
	}
	fail := func(code int, format string, a ...any) int {
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintln(stderr, "guard: "+msg)
		rep.Error = msg
		return finish(code)
	}

	var dev *guardDevice
	var devErr error
	openDev := func() error {
		if dev == nil && devErr == nil {
			dev, devErr = openGuardDevice(*devIndex)
		}
		return devErr
	}
	budget, err := guard.ResolveBudget(explicit, os.Getenv, func() (int64, error) {
		if err := openDev(); err != nil {
			return 0, err
		}
		return dev.src.Total()
	})
	if err == nil && !budget.Unlimited() {
		err = openDev()
	}
	if dev != nil {
		defer dev.close()
	}
	if err != nil {
		if devErr != nil {
			err = devErr
		}
		return fail(cli.ExitUsage, "cannot watch GPU memory: %v (--gpu-limit-gb 0 runs the command without a limit)", err)
	}
	rep.LimitBytes, rep.LimitSource = budget.Limit, budget.Source
	rep.LimitGiB = float64(budget.Limit) / float64(guard.GiB)

	var baseline int64
	if dev != nil {
		total, _ := dev.src.Total()
		if baseline, err = dev.src.Used(); err != nil {
			return fail(cli.ExitUsage, "cannot watch GPU memory: %v", err)
		}
		rep.Device = &guardDevRep{Index: *devIndex, Name: dev.name, Total: total, Baseline: baseline}
		fmt.Fprintf(stderr, "guard: limit %s (%s) on GPU %d %s (%s, %s in use); poll %gs, kill when over for %gs\n",
			backend.Human(budget.Limit), budget.Source, *devIndex, dev.name, backend.Human(total), backend.Human(baseline), *pollSecs, *overSecs)
	} else {
		fmt.Fprintf(stderr, "guard: no GPU memory limit (%s): running the command unwatched\n", budget.Source)
	}

	cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second // stop copying output held open by orphans once the command exits

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	start := time.Now()
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return fail(guardExitNotFound, "command not found: %v", err)
		}
		return fail(guardExitNoStart, "cannot start the command: %v", err)
	}
	pgid := cmd.Process.Pid
	rep.PID = pgid

	var mu sync.Mutex // guards rep's Forwarded and Notes, and kill
	var kill *guardKill
	killed := make(chan struct{})
	stopFwd := make(chan struct{})
	fwdDone := make(chan struct{})
	go func() {
		defer close(fwdDone)
		for {
			select {
			case s := <-sigs:
				sig := s.(syscall.Signal)
				fmt.Fprintf(stderr, "guard: forwarding %v to process group %d\n", sig, pgid)
				syscall.Kill(-pgid, sig)
				mu.Lock()
				rep.Forwarded = append(rep.Forwarded, unixSignalName(sig))
				mu.Unlock()
			case <-stopFwd:
				return
			}
		}
	}()

	var wd *guard.Watchdog
	if dev != nil {
		wd, err = guard.New(guard.Config{
			Source:       dev.src,
			Limit:        budget.Limit,
			PollInterval: time.Duration(*pollSecs * float64(time.Second)),
			OverFor:      time.Duration(*overSecs * float64(time.Second)),
			Root:         pgid,
			Baseline:     baseline,
			Cancel: func(ev *guard.Event) {
				mu.Lock()
				defer mu.Unlock()
				if kill != nil {
					return
				}
				at := time.Since(start)
				kill = &guardKill{AtSecs: secs(at), Reason: ev.Why, DeviceUsed: ev.Reading.DeviceUsed,
					CommandUsed: ev.Reading.Tree, OverSecs: secs(ev.OverFor())}
				fmt.Fprintf(stderr, "guard: KILLING the command at +%.2fs: %s for %.2fs; SIGTERM to process group %d\n",
					at.Seconds(), ev.Why, ev.OverFor().Seconds(), pgid)
				syscall.Kill(-pgid, syscall.SIGTERM)
				close(killed)
			},
			Logf: func(format string, a ...any) {
				msg := fmt.Sprintf(format, a...)
				fmt.Fprintln(stderr, "guard: note: "+msg)
				mu.Lock()
				rep.Notes = append(rep.Notes, msg)
				mu.Unlock()
			},
			OnError: func(err error) {
				if wd != nil && wd.Stats().Errors == 1 {
					fmt.Fprintf(stderr, "guard: sampling GPU memory failed (the command keeps running; further failures are counted): %v\n", err)
				}
			},
		})
		if err != nil {
			syscall.Kill(-pgid, syscall.SIGKILL)
			cmd.Wait()
			return fail(cli.ExitError, "%v", err)
		}
		wd.Start()
	}

	waitErr := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		close(exited)
		waitErr <- err
	}()
	select {
	case <-exited:
	case <-killed:
	}
	if wd != nil {
		wd.Stop()
	}
	mu.Lock()
	k := kill
	mu.Unlock()
	if k != nil {
		k.Escalated, k.GoneSecs = terminateGroup(pgid, time.Duration(*graceSecs*float64(time.Second)), exited, start)
		if k.Escalated {
			fmt.Fprintf(stderr, "guard: process group %d still alive %gs after SIGTERM: sent SIGKILL\n", pgid, *graceSecs)
		}
	}
	werr := <-waitErr
	close(stopFwd)
	<-fwdDone
	rep.Seconds = secs(time.Since(start))

	status, sigName := childStatus(cmd.ProcessState)
	rep.ChildStatus, rep.ChildSignal = status, sigName
	if werr != nil && cmd.ProcessState == nil {
		fmt.Fprintf(stderr, "guard: waiting for the command: %v\n", werr)
	}
	if wd != nil {
		st := wd.Stats()
		rep.Samples, rep.SampleErrors = st.Samples, st.Errors
		if st.LastErr != nil {
			rep.LastError = st.LastErr.Error()
		}
		rep.PeakDevice, rep.PeakTree = st.PeakDevice.DeviceUsed, st.PeakTree.Tree
		if st.Samples > 0 {
			rep.PeakDeviceAt = secs(st.PeakDevice.Time.Sub(start))
			rep.PeakTreeAt = secs(st.PeakTree.Time.Sub(start))
		}
		rep.PerProcess, rep.TreeTotal = st.PeakTree.PerProcess, st.PeakTree.TreeFromTotal
		src := "per-process"
		if rep.TreeTotal {
			src = "device total attributed to it"
		} else if !rep.PerProcess {
			src = "no per-process figures"
		}
		fmt.Fprintf(stderr, "guard: peak GPU memory %s on the device at +%.2fs, %s for the command (%s); limit %s; %d samples",
			backend.Human(rep.PeakDevice), rep.PeakDeviceAt, backend.Human(rep.PeakTree), src, backend.Human(budget.Limit), st.Samples)
		if st.Errors > 0 {
			fmt.Fprintf(stderr, ", %d failed (last: %v)", st.Errors, st.LastErr)
		}
		fmt.Fprintln(stderr)
	}
	exitDesc := fmt.Sprintf("status %d", status)
	if sigName != "" {
		exitDesc = fmt.Sprintf("signal %s (status %d)", sigName, status)
	}
	if k != nil {
		rep.Killed, rep.Kill = true, k
		how := fmt.Sprintf("SIGTERM; gone after %.2fs", k.GoneSecs)
		if k.Escalated {
			how = fmt.Sprintf("SIGTERM, then SIGKILL after %gs", *graceSecs)
		}
		fmt.Fprintf(stderr, "guard: killed the command at +%.2fs (%s): %s; it ended with %s; exit %d\n",
			k.AtSecs, how, k.Reason, exitDesc, guardExitKilled)
		return finish(guardExitKilled)
	}
	if wd != nil {
		fmt.Fprintf(stderr, "guard: the command ended with %s after %.2fs, never killed\n", exitDesc, rep.Seconds)
	}
	return finish(status)
}

// terminateGroup waits up to grace for the command (exited) and every other member of its
// process group to go after SIGTERM, then sends SIGKILL to the group. It returns whether SIGKILL
// was sent and the seconds since start when the group was gone (or SIGKILL was sent).
func terminateGroup(pgid int, grace time.Duration, exited <-chan struct{}, start time.Time) (escalated bool, goneAt float64) {
	deadline := time.Now().Add(grace)
	for {
		leaderGone := false
		select {
		case <-exited:
			leaderGone = true
		default:
		}
		if leaderGone && errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
			return false, secs(time.Since(start))
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	return err == nil, secs(time.Since(start))
}

// childStatus is the command's exit status as a shell reports it: its exit code, or 128+N when
// signal N ended it.
func childStatus(ps *os.ProcessState) (int, string) {
	if ps == nil {
		return cli.ExitError, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), unixSignalName(ws.Signal())
	}
	return ps.ExitCode(), ""
}

// unixSignalName names a signal as kill -l does (SIGTERM, SIGKILL, …).
func unixSignalName(s syscall.Signal) string {
	names := map[syscall.Signal]string{
		syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT", syscall.SIGILL: "SIGILL",
		syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
		syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2", syscall.SIGPIPE: "SIGPIPE",
		syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
	}
	if n, ok := names[s]; ok {
		return n
	}
	return strings.ToUpper(fmt.Sprintf("signal %d", int(s)))
}
