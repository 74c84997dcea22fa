package jpegdec

import (
	"math"
	"testing"
)

// Hand-computed upsampling: libjpeg's ¾/¼ triangle filter with its alternating rounding.
func TestH2V1FancyHand(t *testing.T) {
	in := []uint8{0, 100, 200}
	out := make([]uint8, 6)
	h2v1Fancy(out, in)
	// 0 | (0·3+100+2)>>2=25 | (300+0+1)>>2=75 | (300+200+2)>>2=125 | (600+100+1)>>2=175 | 200
	want := []uint8{0, 25, 75, 125, 175, 200}
	for i := range want {
		if out[i] != want[i] {
			t.Fatalf("h2v1 = %v, want %v", out, want)
		}
	}
}

func TestH2V2FancyHand(t *testing.T) {
	near := []uint8{0, 100, 200}
	far := []uint8{40, 40, 40}
	out := make([]uint8, 6)
	h2v2Fancy(out, near, far)
	// column sums 3·near+far: 40, 340, 640
	// out[0] = (40·4+8)>>4 = 10; out[1] = (120+340+7)>>4 = 29; out[2] = (1020+40+8)>>4 = 66;
	// out[3] = (1020+640+7)>>4 = 104; out[4] = (1920+340+8)>>4 = 141; out[5] = (640·4+7)>>4 = 160
	want := []uint8{10, 29, 66, 104, 141, 160}
	for i := range want {
		if out[i] != want[i] {
			t.Fatalf("h2v2 = %v, want %v", out, want)
		}
	}
}

// TestVerticalPair: even output rows blend with the row above, odd ones with the row below; the edge
// rows repeat (libjpeg's context rows), with biases 1 and 2 for the 1-D vertical filter.
func TestVerticalPair(t *testing.T) {
	c := &component{dw: 1, dh: 3, stride: 1, plane: []uint8{10, 20, 30, 99}}
	for _, tc := range []struct {
		y               int
		near, far, bias int
	}{{0, 10, 10, 1}, {1, 10, 20, 2}, {2, 20, 10, 1}, {3, 20, 30, 2}, {4, 30, 20, 1}, {5, 30, 30, 2}} {
		n, f, b := c.verticalPair(tc.y)
		if int(n[0]) != tc.near || int(f[0]) != tc.far || b != tc.bias {
			t.Errorf("row %d: near %d far %d bias %d, want %d %d %d", tc.y, n[0], f[0], b, tc.near, tc.far, tc.bias)
		}
	}
}

// TestYCCToRGB checks the fixed-point conversion against the JFIF formulas in float64 (within 1) and
// a few exact values.
func TestYCCToRGB(t *testing.T) {
	var out [3]uint8
	maxErr := 0.0
	for y := 0; y < 256; y += 5 {
		for cb := 0; cb < 256; cb += 3 {
			for cr := 0; cr < 256; cr += 3 {
				yccToRGB(out[:], []uint8{uint8(y)}, []uint8{uint8(cb)}, []uint8{uint8(cr)})
				fy, fb, fr := float64(y), float64(cb)-128, float64(cr)-128
				want := [3]float64{fy + 1.402*fr, fy - 0.34414*fb - 0.71414*fr, fy + 1.772*fb}
				for i, w := range want {
					w = math.Max(0, math.Min(255, w))
					maxErr = math.Max(maxErr, math.Abs(float64(out[i])-w))
				}
			}
		}
	}
	if maxErr > 1 {
		t.Errorf("YCbCr→RGB off the JFIF formulas by %.3f (want ≤ 1)", maxErr)
	}
	for _, tc := range []struct{ y, cb, cr, r, g, b uint8 }{
		{128, 128, 128, 128, 128, 128},
		{0, 128, 128, 0, 0, 0},
		{255, 128, 128, 255, 255, 255},
		// Cr = 255: R = 76 + (91881·127 + 32768)>>16 = 76 + 178 = 254;
		// G = 76 + (32768 − 46802·127)>>16 = 76 − 91 → clamped to 0.
		{76, 128, 255, 254, 0, 76},
	} {
		yccToRGB(out[:], []uint8{tc.y}, []uint8{tc.cb}, []uint8{tc.cr})
		if out != [3]uint8{tc.r, tc.g, tc.b} {
			t.Errorf("YCbCr(%d,%d,%d) = %v, want (%d,%d,%d)", tc.y, tc.cb, tc.cr, out, tc.r, tc.g, tc.b)
		}
	}
}
