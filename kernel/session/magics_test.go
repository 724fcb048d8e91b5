package session

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestMagics(t *testing.T) {
	s := newSession(t, Options{})
	os.Unsetenv("QWENGO_TEST_ENV")
	t.Cleanup(func() { os.Unsetenv("QWENGO_TEST_ENV") })
	runCases(t, s, []cellCase{
		{code: "%help", outHas: "%reset"},
		{code: "%env QWENGO_TEST_ENV=one two", out: "env: QWENGO_TEST_ENV=one two\n"},
		{code: "%env QWENGO_TEST_ENV", out: "one two\n"},
		{code: "os.Getenv(\"QWENGO_TEST_ENV\")", text: "one two"},
		{code: "%env QWENGO_TEST_ENV three", out: "env: QWENGO_TEST_ENV=three\n"},
		{code: "%env", outHas: "QWENGO_TEST_ENV=three"},
		{code: "%env QWENGO_NOT_SET_ANYWHERE", errName: ErrUsage, errVal: "not set"},
		{code: "%nosuch", errName: ErrUsage, errVal: "unknown magic %nosuch"},
		{code: "%mem", outHas: "Go heap"},
		{code: "!echo out; echo err >&2; exit 3", out: "out\n", errHas: "err\n"},
		{code: "!echo $QWENGO_TEST_ENV", out: "three\n"},
		{code: "%time\nx := 0\nfor i := 0; i < 1000; i++ {\n\tx += i\n}\nx", outHas: "Wall time:", text: "499500"},
		{code: "%time x * 2", outHas: "Wall time:", text: "999000"},
		// Magics between Go code, with positions of later code still the cell's.
		{code: "y := 1\n!echo mid\ny += 1\nfmt.Println(y)", out: "mid\n2\n"},
		{code: "z := 1\n%env QWENGO_TEST_ENV=four\nz +", errName: ErrCompile, errVal: "3:4"},
		// A line starting with ! inside an open expression is Go.
		{code: "b := false\nc := (true &&\n!b)\nc", text: "true"},
		{code: "%who", outHas: "Pt"[:0] + "x"},
		{code: "%reset", outHas: "Fresh interpreter"},
		{code: "y", errName: ErrCompile, errVal: "undefined: y"},
		{code: "strings.ToUpper(\"still\")", text: "STILL"},
	})
	// Interrupting a shell command kills it.
	timer := time.AfterFunc(200*time.Millisecond, s.Interrupt)
	defer timer.Stop()
	start := time.Now()
	_, _, ce := run(t, s, "!sleep 30")
	if ce == nil || ce.Name != ErrInterrupted || time.Since(start) > 3*time.Second {
		t.Errorf("interrupted shell: %v after %v", ce, time.Since(start))
	}
	names := map[string]bool{}
	for _, m := range s.Magics() {
		if m.Help == "" || m.Usage == "" {
			t.Errorf("magic %s lacks help", m.Name)
		}
		names[m.Name] = true
	}
	for _, n := range []string{"%help", "%time", "%env", "%reset", "%mem", "!"} {
		if !names[n] {
			t.Errorf("Magics() lacks %s", n)
		}
	}
	if !strings.Contains(MemReport(), "Go heap") {
		t.Errorf("MemReport %q", MemReport())
	}
}
