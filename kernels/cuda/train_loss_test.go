package cuda

import (
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/cpu"
)

// TestLossGradConformance runs the shared LossGrad suite: losses within
// the backend's tolerances (double sums), AdamW bit for bit against
// optim.AdamW, repeated calls bit for bit.
func TestLossGradConformance(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	conformance.RunLossGrad(t, func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		return be
	}, tolerances())
}

// The losses of the GPU and of the CPU backend agree on the same inputs:
// values to the double sums' rounding, gradients to float32 rounding.
func TestLossGradMatchesCPU(t *testing.T) {
	be := testBackend(t)
	host := cpu.New(0)
	rng := rand.New(rand.NewPCG(51, 52))
	const rows, vocab = 6, 51200
	s := make([]float32, rows*vocab)
	te := make([]float32, rows*vocab)
	for i := range s {
		s[i] = float32(12 * (rng.Float64() - 0.5))
		te[i] = float32(12 * (rng.Float64() - 0.5))
	}
	labels := []int{5, -100, 51199, 0, 77, 3}
	mask := []bool{true, false, true, true, false, true}
	type run struct {
		v  [2]float64
		gk []float32
		gc []float32
	}
	do := func(b kernels.Backend) run {
		lg := b.(kernels.LossGrad)
		up := func(x []float32) kernels.Tensor {
			tt, err := b.Upload(x, kernels.F32, rows, vocab)
			if err != nil {
				t.Fatal(err)
			}
			return tt
		}
		gk, gc := up(make([]float32, rows*vocab)), up(make([]float32, rows*vocab))
		var r run
		var err error
		if r.v[0], err = lg.KLDivergence(gk, up(s), up(te), 1.7, mask, 0.5); err != nil {
			t.Fatal(err)
		}
		if r.v[1], err = lg.CrossEntropy(gc, up(s), labels, 2); err != nil {
			t.Fatal(err)
		}
		if r.gk, err = b.Download(gk); err != nil {
			t.Fatal(err)
		}
		if r.gc, err = b.Download(gc); err != nil {
			t.Fatal(err)
		}
		return r
	}
	g, c := do(be), do(host)
	for i, what := range []string{"kl", "cross-entropy"} {
		if d := g.v[i] - c.v[i]; d*d > 1e-24*c.v[i]*c.v[i] {
			t.Errorf("%s: gpu %.17g, cpu %.17g", what, g.v[i], c.v[i])
		}
	}
	for _, p := range []struct {
		what     string
		gpu, cpu []float32
	}{{"kl gradient", g.gk, c.gk}, {"cross-entropy gradient", g.gc, c.gc}} {
		var num, den float64
		for i, x := range p.cpu {
			d := float64(p.gpu[i]) - float64(x)
			num += d * d
			den += float64(x) * float64(x)
		}
		if num > 1e-12*den {
			t.Errorf("%s: gpu vs cpu relative error %.3g", p.what, num/den)
		}
	}
}

// benchRows is the logits rows of one sample of the recipe's maximum
// length (1428 tokens), or a few rows with -cuda.small.
func benchRows() int {
	if *benchSmall {
		return 4
	}
	return 1428
}

// BenchmarkKLDivergence: one sample's logits at Phi-2's vocabulary with
// the gradient (student and teacher read twice, the gradient read and
// written: 24 bytes an element).
func BenchmarkKLDivergence(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(53, 54))
	rows, vocab := benchRows(), 51200
	s := randomTensor(b, be, rng, kernels.F32, -8, 8, rows, vocab)
	te := randomTensor(b, be, rng, kernels.F32, -8, 8, rows, vocab)
	g := randomTensor(b, be, rng, kernels.F32, -1e-6, 1e-6, rows, vocab)
	measure(b, be, float64(rows*vocab*24), func() error {
		_, err := be.KLDivergence(g, s, te, 1, nil, 1)
		return err
	})
}

// BenchmarkCrossEntropy: the same rows, every label counted (logits read
// twice, the gradient read and written: 16 bytes an element).
func BenchmarkCrossEntropy(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(55, 56))
	rows, vocab := benchRows(), 51200
	z := randomTensor(b, be, rng, kernels.F32, -8, 8, rows, vocab)
	g := randomTensor(b, be, rng, kernels.F32, -1e-6, 1e-6, rows, vocab)
	labels := make([]int, rows)
	for i := range labels {
		labels[i] = rng.IntN(vocab)
	}
	measure(b, be, float64(rows*vocab*16), func() error {
		_, err := be.CrossEntropy(g, z, labels, 1)
		return err
	})
}

// benchParams is the parameter count of the AdamW and SumSquares
// benchmarks: 64M (about two Phi-2 mixers), or 1M with -cuda.small.
func benchParams() int {
	if *benchSmall {
		return 1 << 20
	}
	return 1 << 26
}

// BenchmarkAdamW: one update with a bf16 shadow (param, grad, m, v read;
// param, m, v and the shadow written: 30 bytes an element).
func BenchmarkAdamW(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(57, 58))
	n := benchParams()
	p := randomTensor(b, be, rng, kernels.F32, -1, 1, n)
	g := randomTensor(b, be, rng, kernels.F32, -0.01, 0.01, n)
	m := randomTensor(b, be, rng, kernels.F32, -1e-3, 1e-3, n)
	v := randomTensor(b, be, rng, kernels.F32, 1e-8, 1e-6, n)
	sh, err := be.Alloc(kernels.BF16, n)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Free(sh) })
	step := int64(0)
	measure(b, be, float64(n*30), func() error {
		step++
		return be.AdamW(p, g, m, v, sh, true, kernels.AdamWStep{LR: 2e-4, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01, Step: step, GradScale: 0.5})
	})
}

// BenchmarkSumSquares: Σ a² over the benchmark's parameters (4 bytes an
// element).
func BenchmarkSumSquares(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(59, 60))
	n := benchParams()
	a := randomTensor(b, be, rng, kernels.F32, -1, 1, n)
	measure(b, be, float64(n*4), func() error {
		_, err := be.SumSquares(a)
		return err
	})
}

// BenchmarkLayerDistance: one layer's output of one sample (1428 × 2560)
// with the gradient (s and t read twice, the gradient read and written:
// 24 bytes an element).
func BenchmarkLayerDistance(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(61, 62))
	rows := benchRows()
	s := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, 2560)
	te := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, 2560)
	g := randomTensor(b, be, rng, kernels.F32, -1e-6, 1e-6, rows, 2560)
	measure(b, be, float64(rows*2560*24), func() error {
		_, err := be.LayerDistance(g, s, te, kernels.DistanceL2Norm, 1)
		return err
	})
}
