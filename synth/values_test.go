package synth

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// The ziggurat's layers tile the curve: every layer, the top one included,
// and the base strip with its tail, has area V — which is what makes a
// uniform choice of layer correct.
func TestZigguratTables(t *testing.T) {
	f := func(x float64) float64 { return math.Exp(-x * x / 2) }
	for i := 1; i < zigLayers; i++ {
		area := zigX[i] * (zigF[i+1] - zigF[i])
		if math.Abs(area-zigV)/zigV > 1e-8 {
			t.Errorf("layer %d: area %.12g, want %.12g", i, area, zigV)
		}
	}
	tail := math.Sqrt(math.Pi/2) * math.Erfc(zigR/math.Sqrt2)
	if base := zigR*f(zigR) + tail; math.Abs(base-zigV)/zigV > 1e-8 {
		t.Errorf("base strip area %.12g, want %.12g", base, zigV)
	}
	for i := 0; i < zigLayers; i++ {
		if zigX[i+1] >= zigX[i] || zigK[i] >= zigScale {
			t.Errorf("layer %d: edges %g ≤ %g, k %d", i, zigX[i], zigX[i+1], zigK[i])
		}
	}
}

// The sampler draws the standard normal: moments, probabilities at fixed
// points through both tails, and the Kolmogorov–Smirnov distance, on a
// fixed seed, with bounds that a broken sampler (wrong tables, no tail, a
// biased sign, a dropped wedge) exceeds.
func TestNormalSampler(t *testing.T) {
	const n = 1 << 22
	xs := make([]float32, n)
	for c := 0; c < n/ChunkElems; c++ {
		Fill(xs[c*ChunkElems:(c+1)*ChunkElems], 20261128, "sampler", int64(c), Distribution{Mean: 0, Std: 1})
	}
	var s1, s2, s3, s4 float64
	for _, v := range xs {
		x := float64(v)
		s1 += x
		s2 += x * x
		s3 += x * x * x
		s4 += x * x * x * x
	}
	// Standard errors: E[x] 1/√n, E[x²] √(2/n), E[x³] √(15/n), E[x⁴] √(96/n).
	for _, c := range []struct {
		name      string
		got, want float64
		se        float64
	}{
		{"E[x]", s1 / n, 0, math.Sqrt(1.0 / n)},
		{"E[x²]", s2 / n, 1, math.Sqrt(2.0 / n)},
		{"E[x³]", s3 / n, 0, math.Sqrt(15.0 / n)},
		{"E[x⁴]", s4 / n, 3, math.Sqrt(96.0 / n)},
	} {
		if math.Abs(c.got-c.want) > 6*c.se {
			t.Errorf("%s = %g, want %g ± %g", c.name, c.got, c.want, 6*c.se)
		}
	}
	slices.Sort(xs)
	phi := func(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) }
	for _, thr := range []float64{-4.5, -4, -zigR, -2, -1, -0.2, 0, 0.2, 1, 2, 3, zigR, 4, 4.5} {
		k, _ := slices.BinarySearch(xs, float32(thr))
		p := phi(thr)
		if se := math.Sqrt(p * (1 - p) / n); math.Abs(float64(k)/n-p) > 6*se+1.0/n {
			t.Errorf("P(x < %g) = %g, want %g ± %g", thr, float64(k)/n, p, 6*se)
		}
	}
	ks := 0.0
	for i, x := range xs {
		p := phi(float64(x))
		ks = max(ks, math.Abs(p-float64(i)/n), math.Abs(p-float64(i+1)/n))
	}
	if crit := 1.95 / math.Sqrt(n); ks > crit { // KS critical value at p ≈ 0.001
		t.Errorf("Kolmogorov–Smirnov distance %g > %g", ks, crit)
	}
	if xs[0] > -4.5 || xs[n-1] < 4.5 {
		t.Errorf("range [%g, %g]: the tails are missing", xs[0], xs[n-1])
	}
}

// The slow path alone (the wedges and the tail) also gives the normal law
// restricted to where it is used: every draw outside the rectangles.
func TestNormalSlowPath(t *testing.T) {
	src := rand.NewPCG(1, 2)
	var tail, total int
	for range 200000 {
		w := uint32(src.Uint64())
		j := int32(w) >> 8
		m := j >> 31
		if uint32((j^m)-m) < zigK[w&(zigLayers-1)] {
			continue
		}
		total++
		x := normalSlow(w, src)
		if math.IsNaN(x) || math.IsInf(x, 0) {
			t.Fatalf("slow path gave %g", x)
		}
		if math.Abs(x) > zigR {
			tail++
		}
	}
	// Share of slow draws: 1 − mean(zigK)/2^23 (≈ 2.8%); the tail's share of
	// all draws is 2·(1 − Φ(R)) ≈ 5.8e-4.
	if frac := float64(total) / 200000; frac < 0.02 || frac > 0.04 {
		t.Errorf("slow-path share %g", frac)
	}
	if tail == 0 {
		t.Error("the slow path never reached the tail")
	}
}

func BenchmarkNormal(b *testing.B) {
	buf := make([]float32, ChunkElems)
	b.SetBytes(2 * ChunkElems) // bf16 bytes of values drawn
	for i := 0; b.Loop(); i++ {
		Fill(buf, 1, "bench", int64(i), Distribution{Std: Std})
	}
}
