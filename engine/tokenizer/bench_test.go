package tokenizer

import (
	"go/build"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Benchmarks run on the real Qwen3 tokenizer (make tokenizer). Texts:
//   - english: the Go specification ($GOROOT/doc/go_spec.html) with its HTML tags removed,
//     about 230 KB of technical English with code; every Go installation has it.
//   - html: the same file with its tags, mixed markup and English.
//   - multilingual: the reference texts (English, Chinese, Japanese, code, emoji) joined, x50.
//
// Run: go test -run '^$' -bench . -benchtime 3x ./engine/tokenizer
// "warm" keeps the word cache across iterations (the steady state of a long-running kernel);
// "cold" disables it, measuring pre-tokenisation and BPE of every word.

func benchTexts(b *testing.B) map[string]string {
	texts := map[string]string{}
	if raw, err := os.ReadFile(filepath.Join(build.Default.GOROOT, "doc", "go_spec.html")); err == nil {
		texts["html"] = string(raw)
		texts["english"] = regexp.MustCompile(`<[^>]*>`).ReplaceAllString(string(raw), "")
	}
	if raw, err := os.ReadFile("testdata/hf_reference.json"); err == nil && len(raw) > 0 {
		ref := loadReference(b)
		texts["multilingual"] = strings.Repeat(ref.Cases[len(ref.Cases)-1].Text+"\n", 50)
	}
	return texts
}

func BenchmarkEncode(b *testing.B) {
	tk := loadQwen(b)
	texts := benchTexts(b)
	for _, name := range []string{"english", "html", "multilingual"} {
		text, ok := texts[name]
		if !ok {
			continue
		}
		for _, mode := range []string{"warm", "cold"} {
			b.Run(name+"/"+mode, func(b *testing.B) {
				tk.noCache = mode == "cold"
				defer func() { tk.noCache = false }()
				n := len(tk.Encode(text))
				b.SetBytes(int64(len(text)))
				b.ResetTimer()
				for range b.N {
					tk.Encode(text)
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}

// BenchmarkEncodeParallel encodes the English text from GOMAXPROCS goroutines (cache shared).
func BenchmarkEncodeParallel(b *testing.B) {
	tk := loadQwen(b)
	text, ok := benchTexts(b)["english"]
	if !ok {
		b.Skip("no go_spec.html")
	}
	n := len(tk.Encode(text))
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk.Encode(text)
		}
	})
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkSplit compares the hand-written pre-tokenizer with the regexp2 pattern.
func BenchmarkSplit(b *testing.B) {
	texts := benchTexts(b)
	re := qwenRegexp2(b)
	for _, name := range []string{"english", "multilingual"} {
		text, ok := texts[name]
		if !ok {
			continue
		}
		b.Run(name+"/scanner", func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for range b.N {
				for i := 0; i < len(text); i = nextPiece(text, i) {
				}
			}
		})
		b.Run(name+"/regexp2", func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for range b.N {
				m, _ := re.FindStringMatch(text)
				for m != nil {
					m, _ = re.FindNextMatch(m)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	tk := loadQwen(b)
	text, ok := benchTexts(b)["english"]
	if !ok {
		b.Skip("no go_spec.html")
	}
	ids := tk.Encode(text)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for range b.N {
		tk.Decode(ids)
	}
	b.ReportMetric(float64(len(ids))*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkLoad(b *testing.B) {
	p := qwenPath()
	if _, err := os.Stat(p); err != nil {
		b.Skip(err)
	}
	for range b.N {
		if _, err := Load(p); err != nil {
			b.Fatal(err)
		}
	}
}
