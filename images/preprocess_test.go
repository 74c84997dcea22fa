package images

import (
	"image"
	"math"
	"math/rand/v2"
	"testing"
)

// randomRGB is a seeded random picture: a smooth colour field plus noise, like a photograph.
func randomRGB(rng *rand.Rand, w, h int) *RGB {
	img := NewRGB(image.Rect(0, 0, w, h))
	fx, fy := 1+rng.Float64()*8, 1+rng.Float64()*8
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			for c := 0; c < 3; c++ {
				v := 127.5 + 100*math.Sin(fx*float64(x)/float64(w)*math.Pi+float64(c)+fy*float64(y)/float64(h)) + rng.NormFloat64()*20
				img.Pix[3*(y*w+x)+c] = uint8(math.Max(0, math.Min(255, math.Round(v))))
			}
		}
	}
	return img
}

func TestNormalize(t *testing.T) {
	if Normalize(0) != -1 || Normalize(255) != 1 {
		t.Errorf("Normalize(0), (255) = %v, %v; want −1, 1", Normalize(0), Normalize(255))
	}
	for v := 0; v < 256; v++ {
		want := float32((float64(v)/255 - 0.5) / 0.5)
		if Normalize(uint8(v)) != want {
			t.Fatalf("Normalize(%d) = %v, want %v", v, Normalize(uint8(v)), want)
		}
	}
	// TinyLLaVA's pad colour: tuple(int(x*255) for x in image_mean) with mean 0.5.
	if PadColour != uint8(math.Trunc(0.5*255)) {
		t.Errorf("PadColour = %d", PadColour)
	}
}

// TestPreprocessLayout: a uniform picture stays uniform through the resize (the fixed-point weights sum
// to one within rounding), so each CHW plane holds its channel's normalised value everywhere.
func TestPreprocessLayout(t *testing.T) {
	img := NewRGB(image.Rect(0, 0, 37, 23))
	for i := 0; i < len(img.Pix); i += 3 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2] = 10, 200, 31
	}
	for _, mode := range []Mode{Square, Pad} {
		out, err := Preprocess(img, 16, mode)
		if err != nil {
			t.Fatal(err)
		}
		for c, v := range []uint8{10, 200, 31} {
			for i, got := range out[c*256 : (c+1)*256] {
				want := Normalize(v)
				// Pad: the 37×23 picture covers rows 7..29 of the 37×37 canvas; output rows 5..10 (centres
				// (r+0.5)·37/16, support ±2·37/16) read only picture rows.
				if mode == Pad && (i/16 < 5 || i/16 > 10) {
					continue
				}
				if got != want {
					t.Fatalf("%v: channel %d value %d = %v, want %v", mode, c, i, got, want)
				}
			}
		}
	}
}

// TestExpandToSquare: the picture sits at ((long − short) // 2) on a canvas of PadColour.
func TestExpandToSquare(t *testing.T) {
	for _, tc := range []struct {
		w, h   int
		x0, y0 int
	}{{97, 61, 0, 18}, {50, 80, 15, 0}, {5, 2, 0, 1}, {2, 5, 1, 0}, {4, 4, 0, 0}} {
		src := NewRGB(image.Rect(0, 0, tc.w, tc.h))
		for i := range src.Pix {
			src.Pix[i] = 255
		}
		sq := ExpandToSquare(src, PadColour)
		n := max(tc.w, tc.h)
		if sq.Rect.Dx() != n || sq.Rect.Dy() != n {
			t.Fatalf("%d×%d: padded to %v", tc.w, tc.h, sq.Rect.Size())
		}
		for y := 0; y < n; y++ {
			for x := 0; x < n; x++ {
				inside := x >= tc.x0 && x < tc.x0+tc.w && y >= tc.y0 && y < tc.y0+tc.h
				want := PadColour
				if inside {
					want = 255
				}
				if p := sq.Pix[sq.PixOffset(x, y)]; p != want {
					t.Fatalf("%d×%d: pixel (%d,%d) = %d, want %d", tc.w, tc.h, x, y, p, want)
				}
			}
		}
	}
}

// TestPreprocessPadIsExpandThenResize checks Pad mode against its definition on random pictures.
func TestPreprocessPadIsExpandThenResize(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, sz := range [][2]int{{97, 61}, {61, 97}, {40, 40}, {3, 200}} {
		img := randomRGB(rng, sz[0], sz[1])
		got, err := Preprocess(img, 24, Pad)
		if err != nil {
			t.Fatal(err)
		}
		sq, err := Resize(ExpandToSquare(img, PadColour), 24, 24)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 24*24; i++ {
			for c := 0; c < 3; c++ {
				if got[c*576+i] != Normalize(sq.Pix[3*i+c]) {
					t.Fatalf("%v: pixel %d channel %d differs", sz, i, c)
				}
			}
		}
	}
}

func TestPreprocessErrors(t *testing.T) {
	img := NewRGB(image.Rect(0, 0, 4, 4))
	for _, tc := range []struct {
		name string
		img  image.Image
		size int
		mode Mode
	}{
		{"size 0", img, 0, Square},
		{"negative size", img, -3, Square},
		{"empty image", NewRGB(image.Rect(0, 0, 0, 5)), 8, Square},
		{"unknown mode", img, 8, Mode(7)},
	} {
		if _, err := Preprocess(tc.img, tc.size, tc.mode); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	if err := PreprocessInto(make([]float32, 10), img, 8, Square); err == nil {
		t.Error("wrong destination length: no error")
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"pad": Pad, "square": Square, "": Square, "resize": Square} {
		got, err := ParseMode(in)
		if err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseMode("anyres"); err == nil {
		t.Error("anyres accepted")
	}
	if Pad.String() != "pad" || Square.String() != "square" {
		t.Error("mode names")
	}
}
