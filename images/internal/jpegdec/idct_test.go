package jpegdec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// refIDCT is the 2-D inverse DCT of T.81 A.3.3 in float64: s(y,x) = ¼ Σ C(u)C(v) F(v,u) cos… cos….
func refIDCT(coef *[64]int16) (out [64]float64) {
	c := func(u int) float64 {
		if u == 0 {
			return 1 / math.Sqrt2
		}
		return 1
	}
	for y := 0; y < 8; y++ {
		for x := 0; x < 8; x++ {
			s := 0.0
			for v := 0; v < 8; v++ {
				for u := 0; u < 8; u++ {
					s += c(u) * c(v) * float64(coef[8*v+u]) *
						math.Cos(float64(2*x+1)*float64(u)*math.Pi/16) * math.Cos(float64(2*y+1)*float64(v)*math.Pi/16)
				}
			}
			out[8*y+x] = s / 4
		}
	}
	return out
}

// refFDCT is the forward DCT of T.81 A.3.3 in float64.
func refFDCT(px *[64]float64) (out [64]float64) {
	c := func(u int) float64 {
		if u == 0 {
			return 1 / math.Sqrt2
		}
		return 1
	}
	for v := 0; v < 8; v++ {
		for u := 0; u < 8; u++ {
			s := 0.0
			for y := 0; y < 8; y++ {
				for x := 0; x < 8; x++ {
					s += px[8*y+x] * math.Cos(float64(2*x+1)*float64(u)*math.Pi/16) * math.Cos(float64(2*y+1)*float64(v)*math.Pi/16)
				}
			}
			out[8*v+u] = c(u) * c(v) * s / 4
		}
	}
	return out
}

// TestIDCTAccuracy runs the IEEE 1180-style check: random 8×8 blocks in [−128, 127] and in [−5, 5],
// forward-transformed in float64 and rounded to integer coefficients, are inverse-transformed by the
// integer IDCT and by the float64 reference. The integer IDCT (libjpeg's ISLOW) must be within 1 of
// the rounded reference everywhere, with a small mean error.
func TestIDCTAccuracy(t *testing.T) {
	rng := rand.New(rand.NewPCG(1180, 7))
	var one [64]uint16
	for i := range one {
		one[i] = 1
	}
	for _, lim := range []int{128, 5} {
		peak, errSum, n := 0.0, 0.0, 0
		for range 600 {
			var px [64]float64
			for i := range px {
				px[i] = float64(rng.IntN(2*lim) - lim)
			}
			f := refFDCT(&px)
			var coef [64]int16
			for i, v := range f {
				coef[i] = int16(math.Round(v))
			}
			ref := refIDCT(&coef)
			var got [64]uint8
			idctBlock(&coef, &one, got[:], 8)
			for i := range got {
				want := math.Max(0, math.Min(255, math.Round(ref[i])+128))
				e := float64(got[i]) - want
				peak = math.Max(peak, math.Abs(e))
				errSum += e
				n++
			}
		}
		mean := errSum / float64(n)
		t.Logf("range ±%d: peak error %.0f, mean error %.5f over %d samples", lim, peak, mean, n)
		if peak > 1 || math.Abs(mean) > 0.015 {
			t.Errorf("range ±%d: peak error %.0f, mean %.5f (want ≤ 1 and |mean| ≤ 0.015)", lim, peak, mean)
		}
	}
}

// TestIDCTHand: a DC-only block of DC 80 (quantiser 2, so 160 after dequantisation) is a flat block of
// 128 + 160/8 = 148; the column pass keeps DC·4 = 640, the row pass descales (640+16)>>5 = 20.
func TestIDCTHand(t *testing.T) {
	var coef [64]int16
	var q [64]uint16
	for i := range q {
		q[i] = 2
	}
	coef[0] = 80
	var out [64]uint8
	idctBlock(&coef, &q, out[:], 8)
	for i, v := range out {
		if v != 148 {
			t.Fatalf("sample %d = %d, want 148", i, v)
		}
	}
	// Out-of-range results are clamped: DC ±1000 (±2000 dequantised) gives 128 ± 250 → 0 or 255.
	for _, tc := range []struct {
		dc   int16
		want uint8
	}{{-1000, 0}, {1000, 255}} {
		coef[0] = tc.dc
		idctBlock(&coef, &q, out[:], 8)
		if out[0] != tc.want || out[63] != tc.want {
			t.Errorf("DC %d: %d, want %d", tc.dc, out[0], tc.want)
		}
	}
}

func TestRangeLimit(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want uint8
	}{{-128, 0}, {-129, 0}, {0, 128}, {127, 255}, {200, 255}, {511, 255}, {-512, 0},
		// libjpeg's table wraps at 10 bits: 1024 + 5 reads as 5.
		{1029, 133}, {-1019, 133}} {
		if got := rangeLimit(tc.in); got != tc.want {
			t.Errorf("rangeLimit(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func BenchmarkIDCT(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	var coef [64]int16
	var q [64]uint16
	for i := range coef {
		q[i] = uint16(1 + rng.IntN(20))
		if i < 20 {
			coef[i] = int16(rng.IntN(41) - 20)
		}
	}
	var out [64]uint8
	for b.Loop() {
		idctBlock(&coef, &q, out[:], 8)
	}
}
