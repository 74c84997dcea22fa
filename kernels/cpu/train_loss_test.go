package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/optim"
)

func TestLossGrad(t *testing.T) {
	conformance.RunLossGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
}

// One worker and an odd number of workers: the values and gradients are
// the suite's, and the suite checks them bit for bit against repeats.
func TestLossGradWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for _, w := range []int{1, 3} {
		conformance.RunLossGrad(t, func() kernels.Backend { return New(w) }, conformance.DefaultTolerances())
	}
}

// The losses do not depend on the number of workers, bit for bit.
func TestLossGradWorkerIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	const rows, vocab = 37, 3001
	s, te := randF32(rng, rows*vocab), randF32(rng, rows*vocab)
	for i := range s {
		s[i] *= 6
		te[i] *= 6
	}
	labels := make([]int, rows)
	for i := range labels {
		labels[i] = rng.IntN(vocab)
	}
	big, bigT := randF32(rng, 5<<16+3), randF32(rng, 5<<16+3)
	type result struct {
		v [4]float64
		g [3][]float32
	}
	run := func(workers int) result {
		be := New(workers)
		up := func(x []float32, shape ...int) kernels.Tensor {
			t.Helper()
			tt, err := be.Upload(x, kernels.F32, shape...)
			if err != nil {
				t.Fatal(err)
			}
			return tt
		}
		var r result
		g := [3]kernels.Tensor{up(make([]float32, rows*vocab), rows, vocab), up(make([]float32, rows*vocab), rows, vocab), up(make([]float32, len(big)), len(big))}
		var err [4]error
		r.v[0], err[0] = be.KLDivergence(g[0], up(s, rows, vocab), up(te, rows, vocab), 1.3, nil, 1)
		r.v[1], err[1] = be.CrossEntropy(g[1], up(s, rows, vocab), labels, 1)
		r.v[2], err[2] = be.LayerDistance(g[2], up(big, len(big)), up(bigT, len(bigT)), kernels.DistanceL2Norm, 1)
		r.v[3], err[3] = be.SumSquares(up(big, len(big)))
		for _, e := range err {
			if e != nil {
				t.Fatal(e)
			}
		}
		for i := range g {
			r.g[i], _ = be.Download(g[i])
		}
		return r
	}
	one := run(1)
	for _, w := range []int{2, 5} {
		r := run(w)
		if r.v != one.v {
			t.Errorf("%d workers: values %v, one worker %v", w, r.v, one.v)
		}
		for i := range r.g {
			for j := range r.g[i] {
				if math.Float32bits(r.g[i][j]) != math.Float32bits(one.g[i][j]) {
					t.Errorf("%d workers: gradient %d element %d is %g, one worker %g", w, i, j, r.g[i][j], one.g[i][j])
					break
				}
			}
		}
	}
}

// A whole optimiser step on the backend — the global norm from SumSquares,
// the clipping coefficient as GradScale, AdamW on every parameter with and
// without decay, bf16 shadows — equals the host trainer's
// optim.ClipGlobalNorm then optim.AdamW.Step bit for bit, update after
// update, with the recipe's hyperparameters.
func TestAdamWStepEqualsHostTrainer(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 44))
	be := New(0)
	sizes := []int{2560 * 96, 2560, 32, 80 * 33}
	decays := []bool{true, false, false, true}
	opt := optim.Recipe()
	const maxNorm = 0.1
	host := make([]optim.Param, len(sizes))
	type dev struct{ p, g, m, v, shadow kernels.Tensor }
	devs := make([]dev, len(sizes))
	for i, n := range sizes {
		data := randF32(rng, n)
		host[i] = optim.Param{Name: string(rune('a' + i)), Data: data, Grad: make([]float32, n), Decay: decays[i]}
		var err error
		d := &devs[i]
		if d.p, err = be.Upload(data, kernels.F32, n); err != nil {
			t.Fatal(err)
		}
		if d.m, err = be.Upload(make([]float32, n), kernels.F32, n); err != nil {
			t.Fatal(err)
		}
		if d.v, err = be.Upload(make([]float32, n), kernels.F32, n); err != nil {
			t.Fatal(err)
		}
		if d.shadow, err = be.Alloc(kernels.BF16, n); err != nil {
			t.Fatal(err)
		}
	}
	clipped := 0
	for step := int64(1); step <= 5; step++ {
		// Gradients of a size that clips on some updates and not others.
		mag := []float64{0.001, 0.3, 0.0001, 0.05, 0.2}[step-1]
		var ss float64
		for i := range host {
			for j := range host[i].Grad {
				host[i].Grad[j] = float32(mag * (2*rng.Float64() - 1))
			}
			var err error
			if devs[i].g, err = be.Upload(host[i].Grad, kernels.F32, len(host[i].Grad)); err != nil {
				t.Fatal(err)
			}
			part, err := be.SumSquares(devs[i].g)
			if err != nil {
				t.Fatal(err)
			}
			ss += part
		}
		norm := math.Sqrt(ss)
		scale := 1.0
		if c := maxNorm / (norm + 1e-6); c < 1 {
			scale = c
			clipped++
		}
		lr := opt.LR * float64(step) / 5
		hostNorm, err := optim.ClipGlobalNorm(host, maxNorm)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(hostNorm-norm) > 1e-12*norm {
			t.Errorf("step %d: norm %.17g from SumSquares, optim's %.17g", step, norm, hostNorm)
		}
		if err := opt.Step(host, lr); err != nil {
			t.Fatal(err)
		}
		for i := range host {
			d := devs[i]
			s := kernels.AdamWStep{LR: lr, Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay, Step: step, GradScale: scale}
			if err := be.AdamW(d.p, d.g, d.m, d.v, d.shadow, host[i].Decay, s); err != nil {
				t.Fatal(err)
			}
			got, _ := be.Download(d.p)
			shadow := d.shadow.(*Tensor).bf16
			for j, w := range host[i].Data {
				if math.Float32bits(got[j]) != math.Float32bits(w) {
					t.Fatalf("step %d: parameter %s element %d: backend %g, host %g", step, host[i].Name, j, got[j], w)
				}
				if shadow[j] != roundBF16(w) {
					t.Fatalf("step %d: parameter %s element %d: shadow %#04x, want %#04x", step, host[i].Name, j, shadow[j], roundBF16(w))
				}
			}
		}
	}
	if clipped == 0 || clipped == 5 {
		t.Errorf("%d of 5 updates clipped: the test should cover both", clipped)
	}
}

func benchLoss(b *testing.B, rows, vocab int, call func(be *Backend, g, s, t kernels.Tensor) error) {
	be := New(0)
	rng := rand.New(rand.NewPCG(45, 46))
	s := uploadRand(b, be, rng, -8, 8, kernels.F32, rows, vocab)
	t := uploadRand(b, be, rng, -8, 8, kernels.F32, rows, vocab)
	g := uploadRand(b, be, rng, 0, 0, kernels.F32, rows, vocab)
	b.SetBytes(int64(rows * vocab * 4 * 2))
	b.ResetTimer()
	for b.Loop() {
		if err := call(be, g, s, t); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKLDivergence: 64 rows of Phi-2's vocabulary, with the gradient.
func BenchmarkKLDivergence(b *testing.B) {
	benchLoss(b, 64, 51200, func(be *Backend, g, s, t kernels.Tensor) error {
		_, err := be.KLDivergence(g, s, t, 1, nil, 1)
		return err
	})
}

// BenchmarkCrossEntropy: 64 rows of Phi-2's vocabulary, with the gradient.
func BenchmarkCrossEntropy(b *testing.B) {
	labels := make([]int, 64)
	for i := range labels {
		labels[i] = (i * 7919) % 51200
	}
	benchLoss(b, 64, 51200, func(be *Backend, g, s, _ kernels.Tensor) error {
		_, err := be.CrossEntropy(g, s, labels, 1)
		return err
	})
}

// BenchmarkAdamW: one update of 16M parameters with a bf16 shadow.
func BenchmarkAdamW(b *testing.B) {
	const n = 1 << 24
	be := New(0)
	rng := rand.New(rand.NewPCG(47, 48))
	p := uploadRand(b, be, rng, -1, 1, kernels.F32, n)
	g := uploadRand(b, be, rng, -0.01, 0.01, kernels.F32, n)
	m := uploadRand(b, be, rng, 0, 0, kernels.F32, n)
	v := uploadRand(b, be, rng, 0, 0, kernels.F32, n)
	sh, err := be.Alloc(kernels.BF16, n)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(n * (4*4 + 3*4 + 2)) // read p, g, m, v; write p, m, v, shadow
	step := int64(0)
	b.ResetTimer()
	for b.Loop() {
		step++
		s := kernels.AdamWStep{LR: 2e-4, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01, Step: step, GradScale: 1}
		if err := be.AdamW(p, g, m, v, sh, true, s); err != nil {
			b.Fatal(err)
		}
	}
}
