// Package display gives notebook cells rich output: HTML, Markdown, SVG, PNG/JPEG images,
// JSON, LaTeX, plain text, and displays that update in place (live progress, plots).
//
// Cells use it directly (it is pre-imported in every session):
//
//	display.Markdown("# Training")
//	d := display.NewDisplay()
//	for step := range 100 {
//		d.Text(fmt.Sprintf("step %d loss %.3f", step, loss))
//	}
//	display.Image(img)          // any image.Image, sent as PNG
//	display.Clear(true)         // clear the cell's output when the next output arrives
//
// Output goes to a Publisher that the interpreter session installs for each cell (SetPublisher);
// the kernel turns it into display_data, update_display_data and clear_output messages, the
// console prints the text/plain part. With no publisher installed, the text/plain (or a short
// description of the bundle) is printed to os.Stdout, so scripts still show something.
//
// # Rich values (the trailing-expression protocol)
//
// When a cell ends with an expression, the session shows its value as a MIME bundle: text/plain
// is fmt's %v, and a value offers richer representations by having any of these methods
// (each is an interface of this package, so compiled and interpreted types can implement it):
//
//	HTML() string                 text/html          (HTMLer)
//	Markdown() string             text/markdown      (Markdowner)
//	SVG() string                  image/svg+xml      (SVGer)
//	PNG() []byte                  image/png          (PNGer)
//	JPEG() []byte                 image/jpeg         (JPEGer)
//	JSON() any                    application/json   (JSONer; the value is marshalled)
//	LaTeX() string                text/latex         (LaTeXer)
//	MIME() map[string]any         any MIME types     (MIMEer; entries override the others)
//
// and any image.Image is shown as image/png. Data (a MIME bundle) has a MIME method, so a cell
// can end with display.Data{"text/html": "<b>hi</b>"}.
//
// In bundles, binary types (image/png, image/jpeg) are base64 strings and application/json is a
// json.RawMessage, as the Jupyter protocol expects.
//
// # Context
//
// Context returns the running cell's context: it is cancelled when the user interrupts the cell.
// Long loops in cells should check it; engine calls already do.
package display

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
)

// MIME types used by this package.
const (
	MIMEText     = "text/plain"
	MIMEHTML     = "text/html"
	MIMEMarkdown = "text/markdown"
	MIMELaTeX    = "text/latex"
	MIMESVG      = "image/svg+xml"
	MIMEPNG      = "image/png"
	MIMEJPEG     = "image/jpeg"
	MIMEJSON     = "application/json"
)

// Data is a MIME bundle: MIME type → content (string, base64 string for binary types,
// json.RawMessage for JSON).
type Data map[string]any

// MIME returns the bundle itself, so a Data value at the end of a cell is displayed as is.
func (d Data) MIME() map[string]any { return d }

// Publisher receives the output of display calls. The interpreter session implements it and
// installs it with SetPublisher; it routes to the running cell.
type Publisher interface {
	// Display publishes a bundle (display_data), or with update replaces the output that
	// carries displayID (update_display_data). displayID is "" for plain displays.
	Display(data map[string]any, metadata map[string]any, displayID string, update bool)
	// ClearOutput clears the cell's output; with wait, when the next output arrives.
	ClearOutput(wait bool)
	// Context is the running cell's context (context.Background() outside cells).
	Context() context.Context
}

var (
	mu        sync.RWMutex
	publisher Publisher
	// fallback receives the text form of displays when no publisher is installed.
	fallback = func() io.Writer { return os.Stdout }
)

// SetPublisher installs p as the destination of display calls and returns the previous
// publisher (nil if none). Passing nil restores the default (printing text/plain to
// os.Stdout). There is one publisher per process: the kernel and console run one session.
func SetPublisher(p Publisher) (previous Publisher) {
	mu.Lock()
	defer mu.Unlock()
	previous, publisher = publisher, p
	return previous
}

func current() Publisher {
	mu.RLock()
	defer mu.RUnlock()
	return publisher
}

// Context returns the running cell's context, cancelled when the cell is interrupted; outside
// a cell it is context.Background().
func Context() context.Context {
	if p := current(); p != nil {
		if ctx := p.Context(); ctx != nil {
			return ctx
		}
	}
	return context.Background()
}

func publish(data Data, metadata map[string]any, id string, update bool) {
	if len(data) == 0 {
		return
	}
	if metadata == nil {
		metadata = map[string]any{}
	}
	if p := current(); p != nil {
		p.Display(data, metadata, id, update)
		return
	}
	fmt.Fprintln(fallback(), TextOf(data))
}

// TextOf returns the text/plain of a bundle, or a short description of its types when it has
// none (for consoles and logs).
func TextOf(data map[string]any) string {
	if s, ok := data[MIMEText].(string); ok {
		return s
	}
	types := make([]string, 0, len(data))
	for k := range data {
		types = append(types, k)
	}
	sort.Strings(types)
	return "<display: " + strings.Join(types, ", ") + ">"
}

// Show publishes a MIME bundle as display_data.
func Show(data Data) { publish(data, nil, "", false) }

// ShowWithMetadata publishes a bundle with metadata (e.g. {"image/png": {"width": 300}}).
func ShowWithMetadata(data Data, metadata map[string]any) { publish(data, metadata, "", false) }

// HTML shows HTML.
func HTML(html string) { Show(HTMLData(html)) }

// Markdown shows Markdown.
func Markdown(md string) { Show(MarkdownData(md)) }

// LaTeX shows LaTeX (e.g. "$x^2$").
func LaTeX(tex string) { Show(LaTeXData(tex)) }

// SVG shows an SVG image given as XML text.
func SVG(svg string) { Show(SVGData(svg)) }

// PNG shows PNG-encoded image bytes.
func PNG(b []byte) { Show(PNGData(b)) }

// JPEG shows JPEG-encoded image bytes.
func JPEG(b []byte) { Show(JPEGData(b)) }

// JSON shows v marshalled as JSON (a collapsible tree in JupyterLab).
func JSON(v any) { Show(JSONData(v)) }

// Text shows plain text as a display (unlike fmt.Print, it can be updated through a Display).
func Text(s string) { Show(TextData(s)) }

// Image shows img as PNG, with its size in the metadata.
func Image(img image.Image) {
	data, meta := ImageData(img)
	publish(data, meta, "", false)
}

// MIME shows content under an arbitrary MIME type (with a text/plain description for
// consoles unless the type is text/plain).
func MIME(mimeType string, content any) {
	d := Data{mimeType: content}
	if mimeType != MIMEText {
		d[MIMEText] = TextOf(d)
	}
	Show(d)
}

// Clear clears the cell's output; with wait, only when the next output arrives (no flicker
// in loops that redraw).
func Clear(wait bool) {
	if p := current(); p != nil {
		p.ClearOutput(wait)
	}
}

// HTMLData returns a bundle with HTML and a text fallback.
func HTMLData(html string) Data { return Data{MIMEHTML: html, MIMEText: "<HTML>"} }

// MarkdownData returns a bundle with Markdown (the text fallback is the Markdown source).
func MarkdownData(md string) Data { return Data{MIMEMarkdown: md, MIMEText: md} }

// LaTeXData returns a bundle with LaTeX (the text fallback is the source).
func LaTeXData(tex string) Data { return Data{MIMELaTeX: tex, MIMEText: tex} }

// SVGData returns a bundle with an SVG image.
func SVGData(svg string) Data { return Data{MIMESVG: svg, MIMEText: "<SVG image>"} }

// PNGData returns a bundle with a PNG image (base64 in the bundle).
func PNGData(b []byte) Data {
	return Data{MIMEPNG: base64.StdEncoding.EncodeToString(b), MIMEText: fmt.Sprintf("<PNG image, %d bytes>", len(b))}
}

// JPEGData returns a bundle with a JPEG image (base64 in the bundle).
func JPEGData(b []byte) Data {
	return Data{MIMEJPEG: base64.StdEncoding.EncodeToString(b), MIMEText: fmt.Sprintf("<JPEG image, %d bytes>", len(b))}
}

// JSONData returns a bundle with v as JSON and its indented text. A value that cannot be
// marshalled gives a text/plain bundle naming the error.
func JSONData(v any) Data {
	b, err := json.Marshal(v)
	if err != nil {
		return Data{MIMEText: fmt.Sprintf("display.JSON: cannot marshal %T: %v", v, err)}
	}
	var ind bytes.Buffer
	if json.Indent(&ind, b, "", "  ") != nil {
		ind.Reset()
		ind.Write(b)
	}
	return Data{MIMEJSON: json.RawMessage(b), MIMEText: ind.String()}
}

// TextData returns a text/plain bundle.
func TextData(s string) Data { return Data{MIMEText: s} }

// ImageData encodes img as PNG and returns the bundle and metadata (width, height). An image
// that cannot be encoded gives a text/plain bundle naming the error.
func ImageData(img image.Image) (Data, map[string]any) {
	b, err := EncodePNG(img)
	if err != nil {
		return Data{MIMEText: err.Error()}, nil
	}
	r := img.Bounds()
	return PNGData(b), map[string]any{MIMEPNG: map[string]any{"width": r.Dx(), "height": r.Dy()}}
}

// EncodePNG encodes img as PNG; a nil image is an error.
func EncodePNG(img image.Image) (b []byte, err error) {
	if img == nil {
		return nil, fmt.Errorf("display: nil image")
	}
	defer func() { // images implemented by cells may panic in At or Bounds
		if r := recover(); r != nil {
			err = fmt.Errorf("display: encoding %T as PNG: panic: %v", img, r)
		}
	}()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("display: encoding %T as PNG: %w", img, err)
	}
	return buf.Bytes(), nil
}

// Display is an output that can be replaced in place: the first call shows it, later calls
// update it (update_display_data), wherever it is in the notebook.
type Display struct {
	ID string // the transient display_id

	mu    sync.Mutex
	shown bool
}

// NewDisplay returns a display with a fresh random ID; it shows nothing until the first
// Show, Update or typed call.
func NewDisplay() *Display {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return &Display{ID: hex.EncodeToString(b[:])}
}

// Show publishes data under the display's ID as a new output (display_data). Calling Show
// again adds another output that the same updates will replace.
func (d *Display) Show(data Data) {
	d.mu.Lock()
	d.shown = true
	d.mu.Unlock()
	publish(data, nil, d.ID, false)
}

// Update replaces every output of this display with data (update_display_data); if the
// display was never shown, it is shown.
func (d *Display) Update(data Data) {
	d.mu.Lock()
	first := !d.shown
	d.shown = true
	d.mu.Unlock()
	publish(data, nil, d.ID, !first)
}

// HTML shows or updates the display with HTML.
func (d *Display) HTML(html string) { d.Update(HTMLData(html)) }

// Markdown shows or updates the display with Markdown.
func (d *Display) Markdown(md string) { d.Update(MarkdownData(md)) }

// SVG shows or updates the display with an SVG image.
func (d *Display) SVG(svg string) { d.Update(SVGData(svg)) }

// PNG shows or updates the display with PNG bytes.
func (d *Display) PNG(b []byte) { d.Update(PNGData(b)) }

// JSON shows or updates the display with v as JSON.
func (d *Display) JSON(v any) { d.Update(JSONData(v)) }

// Text shows or updates the display with plain text.
func (d *Display) Text(s string) { d.Update(TextData(s)) }

// Image shows or updates the display with an image (PNG).
func (d *Display) Image(img image.Image) {
	data, meta := ImageData(img)
	d.mu.Lock()
	first := !d.shown
	d.shown = true
	d.mu.Unlock()
	publish(data, meta, d.ID, !first)
}

// HTMLer is a value with an HTML representation (text/html).
type HTMLer interface{ HTML() string }

// Markdowner is a value with a Markdown representation (text/markdown).
type Markdowner interface{ Markdown() string }

// SVGer is a value with an SVG representation (image/svg+xml).
type SVGer interface{ SVG() string }

// PNGer is a value with a PNG representation (image/png).
type PNGer interface{ PNG() []byte }

// JPEGer is a value with a JPEG representation (image/jpeg).
type JPEGer interface{ JPEG() []byte }

// JSONer is a value with a JSON representation (application/json); JSON returns the value
// to marshal.
type JSONer interface{ JSON() any }

// LaTeXer is a value with a LaTeX representation (text/latex).
type LaTeXer interface{ LaTeX() string }

// MIMEer is a value that gives its whole MIME bundle.
type MIMEer interface{ MIME() map[string]any }

// Imager is image.Image under this package's name: interpreted types implementing
// image.Image can be passed where an Imager is expected.
type Imager interface{ image.Image }

// Bundle returns the MIME bundle of a compiled value by the protocol above (text/plain is
// fmt's %v, or "<image W×H>" for images without a String method). The session uses its own interpreted probe for values of interpreted types,
// whose methods compiled code cannot see; for compiled values both agree.
func Bundle(v any) Data {
	d := Data{MIMEText: fmt.Sprint(v)}
	if x, ok := v.(HTMLer); ok {
		d[MIMEHTML] = x.HTML()
	}
	if x, ok := v.(Markdowner); ok {
		d[MIMEMarkdown] = x.Markdown()
	}
	if x, ok := v.(SVGer); ok {
		d[MIMESVG] = x.SVG()
	}
	if x, ok := v.(PNGer); ok {
		d[MIMEPNG] = base64.StdEncoding.EncodeToString(x.PNG())
	}
	if x, ok := v.(JPEGer); ok {
		d[MIMEJPEG] = base64.StdEncoding.EncodeToString(x.JPEG())
	}
	if x, ok := v.(JSONer); ok {
		for k, val := range JSONData(x.JSON()) {
			if k != MIMEText {
				d[k] = val
			}
		}
	}
	if x, ok := v.(LaTeXer); ok {
		d[MIMELaTeX] = x.LaTeX()
	}
	if x, ok := v.(image.Image); ok {
		if b, err := EncodePNG(x); err == nil {
			d[MIMEPNG] = base64.StdEncoding.EncodeToString(b)
			if _, ok := v.(fmt.Stringer); !ok {
				r := x.Bounds()
				d[MIMEText] = fmt.Sprintf("<image %d×%d>", r.Dx(), r.Dy())
			}
		}
	}
	if x, ok := v.(MIMEer); ok {
		m := x.MIME()
		for k, val := range m {
			d[k] = val
		}
		_, isData := v.(Data)
		_, isMap := v.(map[string]any)
		if _, ok := m[MIMEText]; !ok && (isData || isMap) {
			delete(d, MIMEText) // a bundle's %v is noise
			d[MIMEText] = TextOf(d)
		}
	}
	return d
}
