package images

import (
	"image"
	"image/color"
	"math"
	"testing"
)

// TestToRGB checks the conversions against PIL's convert("RGB") semantics, value by value.
func TestToRGB(t *testing.T) {
	r := image.Rect(0, 0, 2, 1)
	for _, tc := range []struct {
		name string
		img  image.Image
		want []uint8
	}{
		{"NRGBA drops alpha (a transparent pixel keeps its colour)",
			&image.NRGBA{Pix: []uint8{10, 20, 30, 0, 40, 50, 60, 128}, Stride: 8, Rect: r},
			[]uint8{10, 20, 30, 40, 50, 60}},
		{"RGBA opaque is copied",
			&image.RGBA{Pix: []uint8{1, 2, 3, 255, 250, 251, 252, 255}, Stride: 8, Rect: r},
			[]uint8{1, 2, 3, 250, 251, 252}},
		// Premultiplied (64, 0, 0) at alpha 128 is straight 64·65535/32896 → 32767 → high byte 127.
		{"RGBA translucent is un-premultiplied",
			&image.RGBA{Pix: []uint8{64, 0, 0, 128, 0, 0, 0, 0}, Stride: 8, Rect: r},
			[]uint8{127, 0, 0, 0, 0, 0}},
		{"Gray is replicated",
			&image.Gray{Pix: []uint8{7, 200}, Stride: 2, Rect: r},
			[]uint8{7, 7, 7, 200, 200, 200}},
		// Pillow's "I;16" → 8-bit saturates: 0x00FF stays 255, 0x0100 becomes 255, 0x0080 stays 128.
		{"Gray16 is clipped like Pillow's I;16",
			&image.Gray16{Pix: []uint8{0x00, 0x80, 0x01, 0x00}, Stride: 4, Rect: r},
			[]uint8{128, 128, 128, 255, 255, 255}},
		{"NRGBA64 keeps the high byte",
			&image.NRGBA64{Pix: []uint8{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0, 0, 0xff, 0xff, 0, 0, 0x80, 0x01, 0xff, 0xff}, Stride: 16, Rect: r},
			[]uint8{0x12, 0x56, 0x9a, 0xff, 0x00, 0x80}},
		{"Paletted looks colours up, alpha dropped",
			&image.Paletted{Pix: []uint8{1, 0}, Stride: 2, Rect: r,
				Palette: color.Palette{color.RGBA{9, 8, 7, 255}, color.NRGBA{100, 110, 120, 0}}},
			[]uint8{100, 110, 120, 9, 8, 7}},
		// cmyk2rgb: (255−k) − c(255−k)/255 rounded: C=128 → 255 − 128 = 127; K=255 → black.
		{"CMYK uses Pillow's cmyk2rgb",
			&image.CMYK{Pix: []uint8{128, 0, 255, 0, 0, 0, 0, 255}, Stride: 8, Rect: r},
			[]uint8{127, 255, 0, 0, 0, 0}},
		{"YCbCr and other types go through color.Color",
			&image.Uniform{C: color.Gray{Y: 77}},
			nil},
	} {
		img := tc.img
		if tc.want == nil {
			img = &boundedUniform{Uniform: tc.img.(*image.Uniform), r: r}
			tc.want = []uint8{77, 77, 77, 77, 77, 77}
		}
		got := ToRGB(img)
		if got.Rect.Dx() != 2 || got.Rect.Dy() != 1 {
			t.Fatalf("%s: bounds %v", tc.name, got.Rect)
		}
		if string(got.Pix) != string(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got.Pix, tc.want)
		}
	}
}

// boundedUniform is an image.Image of one colour with finite bounds.
type boundedUniform struct {
	*image.Uniform
	r image.Rectangle
}

func (b *boundedUniform) Bounds() image.Rectangle { return b.r }

// TestToRGBSubImage: a sub-image with a non-zero origin converts to the pixels it shows.
func TestToRGBSubImage(t *testing.T) {
	src := image.NewNRGBA(image.Rect(0, 0, 4, 4))
	for i := range src.Pix {
		src.Pix[i] = uint8(i)
	}
	sub := src.SubImage(image.Rect(1, 2, 3, 4)).(*image.NRGBA)
	got := ToRGB(sub)
	if got.Rect != image.Rect(0, 0, 2, 2) {
		t.Fatalf("bounds %v", got.Rect)
	}
	for y := 0; y < 2; y++ {
		for x := 0; x < 2; x++ {
			want := src.NRGBAAt(1+x, 2+y)
			c := got.At(x, y).(color.RGBA)
			if c.R != want.R || c.G != want.G || c.B != want.B || c.A != 255 {
				t.Errorf("(%d,%d) = %v, want %v", x, y, c, want)
			}
		}
	}
	if got.At(5, 5) != (color.RGBA{}) {
		t.Error("At outside the bounds is not transparent black")
	}
}

// TestCMYKToRGB compares Pillow's integer cmyk2rgb with (255−c)(255−k)/255 in float64.
func TestCMYKToRGB(t *testing.T) {
	for c := 0; c < 256; c += 3 {
		for k := 0; k < 256; k += 5 {
			r, _, _ := CMYKToRGB(uint8(c), 0, 0, uint8(k))
			want := float64(255-c) * float64(255-k) / 255
			if math.Abs(float64(r)-want) > 0.5+1e-9 {
				t.Fatalf("CMYK(%d,·,·,%d) → %d, want %.3f rounded", c, k, r, want)
			}
		}
	}
}
