// Command genlogo draws the qwengo kernel logos (logo-32x32.png and
// logo-64x64.png in the current directory): a rounded square in Go's cyan
// with a white "Q" ring whose tail is a small gopher-blue bar. Shapes are
// drawn with 4x4 supersampling for anti-aliasing, so the output is the same
// on every run.
package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
)

func main() {
	for _, size := range []int{32, 64} {
		name := fmt.Sprintf("logo-%dx%d.png", size, size)
		var buf bytes.Buffer
		if err := png.Encode(&buf, draw(size)); err != nil {
			fmt.Fprintln(os.Stderr, "genlogo:", err)
			os.Exit(1)
		}
		if err := writeAtomic(name, buf.Bytes()); err != nil {
			fmt.Fprintln(os.Stderr, "genlogo:", err)
			os.Exit(1)
		}
	}
}

func writeAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".genlogo-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}

var (
	background = color.NRGBA{0x00, 0xAD, 0xD8, 0xFF} // Go cyan
	ink        = color.NRGBA{0xFF, 0xFF, 0xFF, 0xFF}
	tail       = color.NRGBA{0xFD, 0xDD, 0x00, 0xFF} // Go yellow
)

// shade returns the colour at unit coordinates (x, y in [0,1)) and whether
// the point is inside the logo at all.
func shade(x, y float64) (color.NRGBA, bool) {
	// Rounded square with corner radius 0.2.
	const r = 0.2
	cx, cy := math.Max(r-x, math.Max(0, x-(1-r))), math.Max(r-y, math.Max(0, y-(1-r)))
	if cx*cx+cy*cy > r*r {
		return color.NRGBA{}, false
	}
	// Q tail: a thick bar from the ring's lower right outward.
	dx, dy := x-0.5, y-0.47
	px, py := x-0.62, y-0.62 // along the diagonal
	along := (px + py) / math.Sqrt2
	across := (px - py) / math.Sqrt2
	if along > -0.02 && along < 0.2 && math.Abs(across) < 0.065 {
		return tail, true
	}
	// Ring.
	d := math.Sqrt(dx*dx + dy*dy)
	if d > 0.2 && d < 0.31 {
		return ink, true
	}
	return background, true
}

func draw(size int) image.Image {
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	const ss = 4
	for py := 0; py < size; py++ {
		for px := 0; px < size; px++ {
			var r, g, b, a float64
			for sy := 0; sy < ss; sy++ {
				for sx := 0; sx < ss; sx++ {
					x := (float64(px) + (float64(sx)+0.5)/ss) / float64(size)
					y := (float64(py) + (float64(sy)+0.5)/ss) / float64(size)
					c, in := shade(x, y)
					if !in {
						continue
					}
					r += float64(c.R)
					g += float64(c.G)
					b += float64(c.B)
					a++
				}
			}
			if a == 0 {
				continue
			}
			img.SetNRGBA(px, py, color.NRGBA{uint8(r / a), uint8(g / a), uint8(b / a), uint8(255 * a / (ss * ss))})
		}
	}
	return img
}
