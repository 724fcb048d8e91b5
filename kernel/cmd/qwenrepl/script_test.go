package main

import (
	"strings"
	"testing"
)

func TestPrepareScript(t *testing.T) {
	cases := []struct {
		name, src string
		code      string // expected code ("" = same as src)
		err       string
	}{
		{"cell", "x := 1\nfmt.Println(x)\n", "", ""},
		{"cell with comment first", "// hello\nx := 1\n", "", ""},
		{"package main", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(1) }\n", "", ""},
		{"package main after comments", "// doc\npackage main // x\nfunc main() {}\n", "", ""},
		{"shebang", "#!/usr/bin/env qwenrepl\nx := 1\n", "///usr/bin/env qwenrepl\nx := 1\n", ""},
		{"shebang then package", "#!/usr/bin/env qwenrepl\npackage main\nfunc main() {}\n",
			"///usr/bin/env qwenrepl\npackage main\nfunc main() {}\n", ""},
		{"other package", "package train\nfunc main() {}\n", "", "s.go:1:1: package train: a script is a package main file or has no package clause"},
		{"other package after shebang", "#!x\n\npackage p\n", "", "s.go:3:1: package p"},
		{"package without name", "package\n", "", "package clause without a name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, err := prepareScript("s.go", []byte(c.src))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := c.code
			if want == "" {
				want = c.src
			}
			if code != want {
				t.Errorf("got %q, want %q", code, want)
			}
		})
	}
}
