package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tmux drives a real terminal: a detached tmux server on its own socket
// whose one pane runs the command under test.
type tmux struct {
	t    *testing.T
	sock string
}

const tmuxBin = "/usr/bin/tmux"

// startTmux starts cmdline (a shell command) in a 120x40 pane. The pane
// stays after the command exits so its last screen can be read.
func startTmux(t *testing.T, cmdline string) *tmux {
	t.Helper()
	if _, err := os.Stat(tmuxBin); err != nil {
		t.Skipf("tmux not installed at %s: terminal tests skipped", tmuxBin)
	}
	dir, err := os.MkdirTemp("", "tm")
	if err != nil {
		t.Fatal(err)
	}
	m := &tmux{t: t, sock: filepath.Join(dir, "s")}
	t.Cleanup(func() {
		exec.Command(tmuxBin, "-S", m.sock, "kill-server").Run()
		os.RemoveAll(dir)
	})
	m.run("-f", "/dev/null", "new-session", "-d", "-s", "q", "-x", "120", "-y", "40", cmdline)
	m.run("set-option", "-t", "q", "remain-on-exit", "on")
	return m
}

// respawn runs cmdline again in the pane (after the previous one exited).
func (m *tmux) respawn(cmdline string) {
	m.run("respawn-pane", "-k", "-t", "q", cmdline)
}

func (m *tmux) run(args ...string) string {
	m.t.Helper()
	out, err := exec.Command(tmuxBin, append([]string{"-S", m.sock}, args...)...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("tmux %q: %v: %s", args, err, out)
	}
	return string(out)
}

// waitExit waits until the pane's process has exited. It looks at the
// process itself: a loaded tmux server may take long to reap it and mark
// the pane dead.
func (m *tmux) waitExit(timeout time.Duration) {
	m.t.Helper()
	pid := strings.TrimSpace(m.run("display-message", "-p", "-t", "q", "#{pane_pid}"))
	deadline := time.Now().Add(timeout)
	for {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return // gone
		}
		// pid (comm) STATE ...: comm may contain spaces, the state follows the last ')'.
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("process %s still running after %v:\n%s", pid, timeout, m.screen())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// typeText types text literally (no key names).
func (m *tmux) typeText(text string) { m.run("send-keys", "-t", "q", "-l", text) }

// keys sends key names: Enter, Tab, Up, C-c, C-d, ...
func (m *tmux) keys(keys ...string) { m.run(append([]string{"send-keys", "-t", "q"}, keys...)...) }

// line types text and presses Enter.
func (m *tmux) line(text string) {
	m.typeText(text)
	m.keys("Enter")
}

// screen returns the pane's contents including scrollback.
func (m *tmux) screen() string {
	return strings.TrimRight(m.run("capture-pane", "-p", "-t", "q", "-S", "-500"), "\n")
}

// waitFor waits until the screen contains every string, in order after
// the previous one, and fails with the screen otherwise.
func (m *tmux) waitFor(timeout time.Duration, want ...string) string {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	var s string
	for {
		s = m.screen()
		if containsInOrder(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("screen does not show %q after %v:\n%s", want, timeout, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// containsInOrder ignores trailing spaces of the wanted strings: the
// captured screen has none at line ends.
func containsInOrder(s string, want []string) bool {
	for _, w := range want {
		w = strings.TrimRight(w, " ")
		i := strings.Index(s, w)
		if i < 0 {
			return false
		}
		s = s[i+len(w):]
	}
	return true
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func consoleCmd(t *testing.T, home string, args ...string) string {
	cmd := fmt.Sprintf("HOME=%s XDG_STATE_HOME=%s exec %s", shellQuote(home), shellQuote(filepath.Join(home, "state")), shellQuote(qwenrepl(t)))
	for _, a := range args {
		cmd += " " + shellQuote(a)
	}
	return cmd
}

func TestConsoleTerminal(t *testing.T) {
	home := t.TempDir()
	m := startTmux(t, consoleCmd(t, home))
	m.waitFor(30*time.Second, "In [1]: ")

	// A multi-line function definition, then a call.
	m.line("func add(a, b int) int {")
	m.waitFor(5*time.Second, "   ...: ")
	m.line("return a + b") // the continuation line is pre-filled with the indent
	m.line("}")
	m.waitFor(5*time.Second, "In [2]: ")
	m.line("add(2, 3)")
	m.waitFor(10*time.Second, "Out[2]: 5", "In [3]: ")

	// Tab completion of a package member: one match completes in place.
	m.typeText("strings.ToUpp")
	m.keys("Tab")
	m.waitFor(5*time.Second, "In [3]: strings.ToUpper")
	m.line(`("qwen")`)
	m.waitFor(10*time.Second, "Out[3]: ", "QWEN", "In [4]: ")

	// Ctrl-C stops an endless loop, not the console; the next cell works
	// and sees the earlier state.
	m.line("for {}")
	time.Sleep(500 * time.Millisecond)
	m.keys("C-c")
	m.waitFor(10*time.Second, "In [5]: ")
	m.line("add(40, 2)")
	m.waitFor(10*time.Second, "Out[5]: 42", "In [6]: ")

	// Ctrl-C at the prompt clears the line.
	m.typeText("this is not Go")
	m.keys("C-c")
	m.waitFor(5*time.Second, "^C", "In [6]: ")

	// Ctrl-D exits; the history survives a restart.
	m.keys("C-d")
	m.waitExit(10 * time.Second)
	if _, err := os.Stat(filepath.Join(home, "state", "qwengo", "history")); err != nil {
		t.Fatalf("history file: %v", err)
	}
	m.run("clear-history", "-t", "q")
	m.respawn(consoleCmd(t, home))
	m.waitFor(30*time.Second, "In [1]: ")
	m.keys("Up")
	m.waitFor(5*time.Second, "In [1]: add(40, 2)")
	m.keys("Enter")
	m.waitFor(10*time.Second, "In [1]: add(40, 2)", "undefined", "In [2]: ") // recalled text, fresh state
	t.Logf("last screen:\n%s", m.screen())
}

// TestConsoleTerminalChatDefaultAndMissingModel: `:chat` with no model and no QWENGO_MODEL
// chats with the embedded model; `:go` returns to Go; a missing model path is an error that
// leaves the console at its Go prompt.
func TestConsoleTerminalChatDefaultAndMissingModel(t *testing.T) {
	home := t.TempDir()
	cmd := "QWENGO_MODEL= " + consoleCmd(t, home)
	m := startTmux(t, cmd)
	m.waitFor(30*time.Second, "In [1]: ")
	m.line(":chat")
	m.waitFor(60*time.Second, "vocab 151936", "chat> ")
	m.line(":go")
	m.waitFor(10*time.Second, "In [1]: ")
	m.line(":chat " + filepath.Join(home, "no-such-model"))
	m.waitFor(10*time.Second, "no-such-model", "In [1]: ")
}

// startKernel builds qwenkernel, writes a connection file and starts the
// kernel; it skips the test when the kernel binary does not build.
func startKernel(t *testing.T) string {
	t.Helper()
	bin, err := build(t, "qwenkernel", "../qwenkernel")
	if err != nil {
		t.Skipf("kernel/cmd/qwenkernel does not build yet, --existing not tested: %v", err)
	}
	dir, err := os.MkdirTemp("", "qk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conn := map[string]any{"transport": "ipc", "ip": filepath.Join(dir, "k"), "shell_port": 1, "iopub_port": 2,
		"stdin_port": 3, "control_port": 4, "hb_port": 5, "signature_scheme": "hmac-sha256", "key": "a-test-key"}
	b, _ := json.Marshal(conn)
	file := filepath.Join(dir, "kernel.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--connection-file", file)
	var logBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	cmd.Env = isolatedEnv(dir)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("kernel log:\n%s", logBuf.String())
		}
	})
	return file
}

func TestExisting(t *testing.T) {
	file := startKernel(t)

	// A piped console: state set here ...
	r := runBin(t, "x := 21\nx * 2\nfmt.Println(\"hi from the kernel\")\npanic(\"oops\")\n", "--existing", file)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	for _, s := range []string{"Out[2]: 42", "hi from the kernel"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s\nstderr %s", s, r.stdout, r.stderr)
		}
	}
	if !strings.Contains(r.stderr, "oops") {
		t.Errorf("stderr lacks the panic:\n%s", r.stderr)
	}

	// ... is seen by a second console in a terminal, with completion from
	// the kernel and Ctrl-C sent as interrupt_request.
	m := startTmux(t, consoleCmd(t, t.TempDir(), "--existing", file))
	m.waitFor(30*time.Second, "attached to", "In [1]: ")
	m.line("x + 1")
	m.waitFor(10*time.Second, "Out[1]: 22", "In [2]: ")
	m.typeText("strings.ToLow")
	m.keys("Tab")
	m.waitFor(5*time.Second, "In [2]: strings.ToLower")
	m.line(`("ABC")`)
	m.waitFor(10*time.Second, "abc", "In [3]: ")
	m.line("for {}")
	time.Sleep(500 * time.Millisecond)
	m.keys("C-c")
	m.waitFor(10*time.Second, "In [4]: ")
	m.line("x")
	m.waitFor(10*time.Second, "Out[4]: 21")
	m.keys("C-d")
	m.waitExit(10 * time.Second)

	// The kernel is still there for a third client.
	r = runBin(t, "x\n", "--existing", file)
	if r.code != 0 || !strings.Contains(r.stdout, "21") {
		t.Fatalf("after detaching: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestExistingBadFile(t *testing.T) {
	r := runBin(t, "", "--existing", filepath.Join(t.TempDir(), "nope.json"))
	if r.code != 1 || !strings.Contains(r.stderr, "nope.json") {
		t.Errorf("missing connection file: %d %q", r.code, r.stderr)
	}
	r = runBin(t, "", "--existing")
	if r.code != 2 || !strings.Contains(r.stderr, "--existing: needs a value") {
		t.Errorf("--existing without a file: %d %q", r.code, r.stderr)
	}
}
