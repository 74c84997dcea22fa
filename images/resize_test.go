package images

import (
	"image"
	"math"
	"math/rand/v2"
	"testing"
)

func TestBicubicKernel(t *testing.T) {
	// Keys' cubic with a = −0.5, evaluated by hand.
	for _, tc := range []struct{ x, want float64 }{
		{0, 1}, {0.5, 0.5625}, {-0.5, 0.5625}, {1, 0}, {1.5, -0.0625}, {2, 0}, {3, 0},
	} {
		if got := bicubic(tc.x); math.Abs(got-tc.want) > 1e-15 {
			t.Errorf("bicubic(%g) = %g, want %g", tc.x, got, tc.want)
		}
	}
}

// refResize is an independent float64 formulation of the same resampling: every input pixel weighted
// by the stretched kernel at its distance from the output pixel's centre, weights normalised, one
// rounding to 8 bits after each pass (horizontal first).
func refResize(src *RGB, w, h int) []uint8 {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	pass := func(inN, outN, lines int, get func(line, i int) float64) [][]float64 {
		scale := float64(inN) / float64(outN)
		fs := math.Max(scale, 1)
		out := make([][]float64, lines)
		for l := 0; l < lines; l++ {
			out[l] = make([]float64, outN)
			for o := 0; o < outN; o++ {
				c := (float64(o) + 0.5) * scale
				sum, wsum := 0.0, 0.0
				for i := 0; i < inN; i++ {
					k := bicubic((float64(i) + 0.5 - c) / fs)
					sum += k * get(l, i)
					wsum += k
				}
				out[l][o] = math.Max(0, math.Min(255, math.Floor(sum/wsum+0.5)))
			}
		}
		return out
	}
	res := make([]uint8, 3*w*h)
	for c := 0; c < 3; c++ {
		rows := pass(sw, w, sh, func(y, x int) float64 { return float64(src.Pix[3*(y*sw+x)+c]) })
		cols := pass(sh, h, w, func(x, y int) float64 { return rows[y][x] })
		for x := 0; x < w; x++ {
			for y := 0; y < h; y++ {
				res[3*(y*w+x)+c] = uint8(cols[x][y])
			}
		}
	}
	return res
}

// TestResizeMatchesReference: on random pictures and sizes (shrinking and enlarging), Resize agrees
// with the float64 reference to within one level, and almost everywhere exactly (the fixed-point
// weights change a rounding only at near-ties).
func TestResizeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(97, 61))
	differ, total := 0, 0
	for range 12 {
		sw, sh := 1+rng.IntN(90), 1+rng.IntN(90)
		w, h := 1+rng.IntN(60), 1+rng.IntN(60)
		src := randomRGB(rng, sw, sh)
		got, err := Resize(src, w, h)
		if err != nil {
			t.Fatal(err)
		}
		want := refResize(src, w, h)
		n, m := countDiff(got.Pix, want)
		if m > 1 {
			t.Errorf("%d×%d → %d×%d: differs from the reference by %d", sw, sh, w, h, m)
		}
		differ += n
		total += len(want)
	}
	t.Logf("%d of %d samples differ from the float64 reference by one level", differ, total)
	if differ*100 > total {
		t.Errorf("%d of %d samples differ from the float64 reference", differ, total)
	}
}

func TestResizeIdentityAndErrors(t *testing.T) {
	src := randomRGB(rand.New(rand.NewPCG(1, 2)), 13, 7)
	same, err := Resize(src, 13, 7)
	if err != nil {
		t.Fatal(err)
	}
	if string(same.Pix) != string(src.Pix) {
		t.Error("resizing to the same size changed the pixels")
	}
	if _, err := Resize(src, 0, 5); err == nil {
		t.Error("width 0 accepted")
	}
	if _, err := Resize(NewRGB(image.Rect(0, 0, 0, 0)), 4, 4); err == nil {
		t.Error("empty image accepted")
	}
}

// TestParallelResizeEqualsSerial: a picture large enough to be split across goroutines gives the same
// bytes as one pass over all rows.
func TestParallelResizeEqualsSerial(t *testing.T) {
	src := randomRGB(rand.New(rand.NewPCG(3, 4)), 700, 500)
	const w, h = 300, 200
	got, err := Resize(src, w, h)
	if err != nil {
		t.Fatal(err)
	}
	hc, vc := newResampleCoeffs(700, w), newResampleCoeffs(500, h)
	y0, y1 := vc.first[0], vc.first[h-1]+vc.count[h-1]
	tmp := make([]uint8, 3*w*(y1-y0))
	horizontalRows(tmp, src.Pix, 700, y0, y1, y0, hc, w)
	want := make([]uint8, 3*w*h)
	verticalRows(want, tmp, w, vc, 0, h, y0)
	if n, _ := countDiff(got.Pix, want); n != 0 {
		t.Errorf("%d samples differ between the split and the serial resize", n)
	}
}
