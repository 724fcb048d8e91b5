package guard

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// procStat is what ProcessTree needs from /proc/PID/stat.
type procStat struct {
	pid, ppid, pgrp int
}

// parseStat reads pid, ppid and process group from the text of /proc/PID/stat. The command name
// (field 2) is in parentheses and may itself hold spaces and parentheses, so the fields after it
// are found from the last ')'.
func parseStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	closeAt := bytes.LastIndexByte(b, ')')
	if open <= 0 || closeAt < open {
		return procStat{}, fmt.Errorf("malformed stat line %q", trunc(b))
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return procStat{}, fmt.Errorf("malformed pid in stat line %q", trunc(b))
	}
	f := bytes.Fields(b[closeAt+1:])
	// state ppid pgrp ...
	if len(f) < 3 {
		return procStat{}, fmt.Errorf("stat line of pid %d has %d fields after the name, want ≥ 3", pid, len(f))
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return procStat{}, fmt.Errorf("stat line of pid %d: malformed ppid %q or pgrp %q", pid, f[1], f[2])
	}
	return procStat{pid: pid, ppid: ppid, pgrp: pgrp}, nil
}

func trunc(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

// readProcs reads every process's stat under dir (normally /proc). Processes that vanish while
// it reads are skipped.
func readProcs(dir string) ([]procStat, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("process tree: %w", err)
	}
	out := make([]procStat, 0, len(ents))
	for _, e := range ents {
		name := e.Name()
		if name == "" || name[0] < '0' || name[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name, "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		st, err := parseStat(b)
		if err != nil {
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// treeOf returns root, its descendants, and the members of the process group root leads (they
// may have been re-parented when their parent exited), sorted.
func treeOf(root int, procs []procStat) []int {
	children := map[int][]int{}
	in := map[int]bool{root: true}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
		if p.pgrp == root {
			in[p.pid] = true
		}
	}
	queue := []int{root}
	for p := range in {
		if p != root {
			queue = append(queue, p)
		}
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if !in[c] {
				in[c] = true
				queue = append(queue, c)
			}
		}
	}
	out := make([]int, 0, len(in))
	for p := range in {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// ProcessTree returns root, its descendants and the members of its process group, read from
// /proc (root is included even when it has exited).
func ProcessTree(root int) ([]int, error) {
	procs, err := readProcs("/proc")
	if err != nil {
		return []int{root}, err
	}
	return treeOf(root, procs), nil
}
