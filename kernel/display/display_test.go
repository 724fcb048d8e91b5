package display

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/color"
	"strings"
	"testing"
)

type call struct {
	data   map[string]any
	meta   map[string]any
	id     string
	update bool
}

type fakePublisher struct {
	calls  []call
	clears []bool
	ctx    context.Context
}

func (f *fakePublisher) Display(data, meta map[string]any, id string, update bool) {
	f.calls = append(f.calls, call{data, meta, id, update})
}
func (f *fakePublisher) ClearOutput(wait bool)    { f.clears = append(f.clears, wait) }
func (f *fakePublisher) Context() context.Context { return f.ctx }

func install(t *testing.T) *fakePublisher {
	f := &fakePublisher{ctx: context.Background()}
	prev := SetPublisher(f)
	t.Cleanup(func() { SetPublisher(prev) })
	return f
}

func TestTypedDisplays(t *testing.T) {
	f := install(t)
	img := image.NewGray(image.Rect(0, 0, 3, 2))
	HTML("<b>x</b>")
	Markdown("# t")
	SVG("<svg/>")
	PNG([]byte{1, 2})
	JPEG([]byte{3})
	JSON(map[string]int{"a": 1})
	Text("plain")
	LaTeX("$x$")
	Image(img)
	MIME("text/x-custom", "c")
	ShowWithMetadata(Data{"text/plain": "m"}, map[string]any{"k": 1})
	Show(Data{}) // empty bundles are not published
	want := []struct{ mime, value string }{
		{MIMEHTML, "<b>x</b>"},
		{MIMEMarkdown, "# t"},
		{MIMESVG, "<svg/>"},
		{MIMEPNG, base64.StdEncoding.EncodeToString([]byte{1, 2})},
		{MIMEJPEG, base64.StdEncoding.EncodeToString([]byte{3})},
		{MIMEJSON, `{"a":1}`},
		{MIMEText, "plain"},
		{MIMELaTeX, "$x$"},
		{MIMEPNG, "iVBORw0KGgo"},
		{"text/x-custom", "c"},
		{MIMEText, "m"},
	}
	if len(f.calls) != len(want) {
		t.Fatalf("%d calls, want %d: %+v", len(f.calls), len(want), f.calls)
	}
	for i, w := range want {
		c := f.calls[i]
		got := c.data[w.mime]
		s, _ := got.(string)
		if raw, ok := got.(json.RawMessage); ok {
			s = string(raw)
		}
		if !strings.HasPrefix(s, w.value) || c.id != "" || c.update {
			t.Errorf("call %d: %s = %v (id %q update %v), want %q", i, w.mime, got, c.id, c.update, w.value)
		}
		if _, ok := c.data[MIMEText]; !ok {
			t.Errorf("call %d has no text/plain fallback: %v", i, c.data)
		}
	}
	if m := f.calls[8].meta[MIMEPNG].(map[string]any); m["width"] != 3 || m["height"] != 2 {
		t.Errorf("image metadata %v", f.calls[8].meta)
	}
	Clear(true)
	Clear(false)
	if len(f.clears) != 2 || !f.clears[0] || f.clears[1] {
		t.Errorf("clears %v", f.clears)
	}
}

func TestDisplayUpdate(t *testing.T) {
	f := install(t)
	d := NewDisplay()
	d2 := NewDisplay()
	if d.ID == "" || d.ID == d2.ID {
		t.Fatalf("ids %q %q", d.ID, d2.ID)
	}
	d.Text("1")
	d.Text("2")
	d.HTML("<i>3</i>")
	d2.Update(Data{MIMEText: "other"})
	d.Show(Data{MIMEText: "again"})
	d.Image(image.NewRGBA(image.Rect(0, 0, 1, 1)))
	want := []struct {
		id     string
		update bool
	}{{d.ID, false}, {d.ID, true}, {d.ID, true}, {d2.ID, false}, {d.ID, false}, {d.ID, true}}
	if len(f.calls) != len(want) {
		t.Fatalf("calls %+v", f.calls)
	}
	for i, w := range want {
		if f.calls[i].id != w.id || f.calls[i].update != w.update {
			t.Errorf("call %d: id %q update %v, want %q %v", i, f.calls[i].id, f.calls[i].update, w.id, w.update)
		}
	}
}

func TestContext(t *testing.T) {
	SetPublisher(nil)
	if Context() != context.Background() {
		t.Error("without a publisher Context is not Background")
	}
	f := install(t)
	ctx, cancel := context.WithCancel(context.Background())
	f.ctx = ctx
	cancel()
	if Context().Err() == nil {
		t.Error("Context does not follow the publisher")
	}
}

type rich struct{}

func (rich) HTML() string            { return "<p>r</p>" }
func (rich) Markdown() string        { return "*r*" }
func (rich) JSON() any               { return []int{1} }
func (rich) String() string          { return "rich" }
func (rich) MIME() map[string]any    { return map[string]any{"text/x-r": "r"} }
func (rich) ColorModel() color.Model { return color.GrayModel }
func (rich) Bounds() image.Rectangle { return image.Rect(0, 0, 1, 1) }
func (rich) At(x, y int) color.Color { return color.Gray{} }

type badImage struct{ rich }

func (badImage) At(x, y int) color.Color { panic("broken pixel") }

func TestBundle(t *testing.T) {
	b := Bundle(rich{})
	for k, v := range map[string]string{MIMEText: "rich", MIMEHTML: "<p>r</p>", MIMEMarkdown: "*r*", "text/x-r": "r"} {
		if b[k] != v {
			t.Errorf("%s = %v, want %q", k, b[k], v)
		}
	}
	if string(b[MIMEJSON].(json.RawMessage)) != "[1]" || b[MIMEPNG] == nil {
		t.Errorf("bundle %v", b)
	}
	if b := Bundle(42); len(b) != 1 || b[MIMEText] != "42" {
		t.Errorf("plain bundle %v", b)
	}
	if b := Bundle(Data{MIMEHTML: "h"}); b[MIMEText] != "<display: text/html>" || b[MIMEHTML] != "h" {
		t.Errorf("Data bundle %v", b)
	}
	if _, err := EncodePNG(badImage{}); err == nil || !strings.Contains(err.Error(), "broken pixel") {
		t.Errorf("EncodePNG of a panicking image: %v", err)
	}
	if _, err := EncodePNG(nil); err == nil {
		t.Error("EncodePNG(nil) succeeded")
	}
	if d := JSONData(func() {}); !strings.Contains(d[MIMEText].(string), "cannot marshal") {
		t.Errorf("JSONData of a func: %v", d)
	}
}
