package guard

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	cases := []struct {
		line string
		want procStat
		bad  bool
	}{
		{line: "123 (bash) S 1 123 123 34816 0", want: procStat{123, 1, 123}},
		{line: "77 (we ird) (name)) R 5 9 9 0", want: procStat{77, 5, 9}},
		{line: "77 (x) R", bad: true},
		{line: "garbage", bad: true},
		{line: "x (y) S 1 2 3", bad: true},
		{line: "5 (y) S a 2 3", bad: true},
	}
	for _, c := range cases {
		got, err := parseStat([]byte(c.line))
		if c.bad {
			if err == nil {
				t.Errorf("%q accepted as %+v", c.line, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: got %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
}

func TestTreeOf(t *testing.T) {
	procs := []procStat{
		{1, 0, 1},
		{10, 1, 10},  // root
		{11, 10, 10}, // child
		{12, 11, 10}, // grandchild
		{13, 1, 10},  // orphan re-parented to init, still in the group
		{14, 13, 14}, // its child in its own group
		{20, 1, 20},  // unrelated
		{21, 20, 20},
	}
	if got, want := treeOf(10, procs), []int{10, 11, 12, 13, 14}; !slices.Equal(got, want) {
		t.Fatalf("tree of 10 = %v, want %v", got, want)
	}
	if got := treeOf(99, procs); !slices.Equal(got, []int{99}) {
		t.Fatalf("tree of a missing pid = %v", got)
	}
}

func TestProcessTreeLive(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 5 & sleep 5 & echo ready; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	// The children are forked shells until they exec sleep, which may come after "ready" on a
	// loaded machine: poll until the tree is sh and two sleeps (or the deadline passes).
	comm := func(pid int) string {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		return strings.TrimSpace(string(b))
	}
	settled := func(pids []int) bool {
		if len(pids) < 3 || !slices.Contains(pids, cmd.Process.Pid) {
			return false
		}
		for _, p := range pids {
			if p != cmd.Process.Pid && comm(p) != "sleep" {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(3 * time.Second)
	var pids []int
	for time.Now().Before(deadline) {
		pids, err = ProcessTree(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if settled(pids) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(pids) < 3 || !slices.Contains(pids, cmd.Process.Pid) {
		t.Fatalf("tree of sh %d = %v, want sh and two sleeps", cmd.Process.Pid, pids)
	}
	for _, p := range pids {
		if p != cmd.Process.Pid && comm(p) != "sleep" {
			t.Errorf("pid %d in the tree is %q, not sleep", p, comm(p))
		}
	}
}
