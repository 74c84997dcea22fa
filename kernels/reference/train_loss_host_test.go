package reference_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/distill"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
	"github.com/matsurgery/matsurgery/optim"
)

// The references of kernels.LossGrad are the host trainer's losses
// (package distill) and optimiser (package optim), written once more in
// float64: these tests hold them to the same values.

func randF32(rng *rand.Rand, n int, lo, hi float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	return out
}

func array(t *testing.T, data []float32, shape ...int) *reference.Array {
	t.Helper()
	a, err := reference.FromFloat32(data, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// relErr32 is ‖got−want‖/‖want‖ of a float32 gradient against a float64 one.
func relErr32(got []float32, want *reference.Array) float64 {
	var num, den float64
	for i, w := range want.Data {
		d := float64(got[i]) - w
		num += d * d
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func closeValue(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if d := math.Abs(got - want); d > tol*math.Abs(want) && !(want == 0 && got == 0) {
		t.Errorf("%s: reference %.17g, host %.17g (relative %.3g > %.3g)", what, got, want, d/math.Abs(want), tol)
	}
}

func TestKLDivergenceEqualsHost(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for _, c := range []struct {
		rows, vocab int
		temp        float64
		masked      bool
	}{{4, 513, 1, false}, {6, 97, 2.5, true}, {3, 2000, 0.5, true}, {1, 1, 1, false}} {
		s := randF32(rng, c.rows*c.vocab, -8, 8)
		te := randF32(rng, c.rows*c.vocab, -8, 8)
		var mask []bool
		if c.masked {
			mask = make([]bool, c.rows)
			for r := range mask {
				mask[r] = rng.IntN(3) > 0
			}
			mask[0] = true
		}
		hv, hg, err := distill.KLDivergence(s, te, c.vocab, c.temp, mask)
		if err != nil {
			t.Fatal(err)
		}
		rv, rg, err := reference.KLDivergence(array(t, s, c.rows, c.vocab), array(t, te, c.rows, c.vocab), c.temp, mask)
		if err != nil {
			t.Fatal(err)
		}
		closeValue(t, "kl", rv, hv, 1e-12)
		if e := relErr32(hg, rg); e > 1e-7 {
			t.Errorf("kl %+v: host gradient vs reference: relative error %.3g", c, e)
		}
	}
}

func TestCrossEntropyEqualsHost(t *testing.T) {
	rng := rand.New(rand.NewPCG(33, 34))
	for _, c := range []struct{ rows, vocab int }{{9, 301}, {5, 51200}, {2, 3}} {
		x := randF32(rng, c.rows*c.vocab, -10, 10)
		labels := make([]int, c.rows)
		for i := range labels {
			labels[i] = rng.IntN(c.vocab)
			if rng.IntN(3) == 0 {
				labels[i] = distill.IgnoreLabel
			}
		}
		labels[c.rows-1] = c.vocab - 1
		hv, hg, err := distill.CrossEntropy(x, c.vocab, labels)
		if err != nil {
			t.Fatal(err)
		}
		rv, rg, err := reference.CrossEntropy(array(t, x, c.rows, c.vocab), labels)
		if err != nil {
			t.Fatal(err)
		}
		closeValue(t, "cross-entropy", rv, hv, 1e-12)
		if e := relErr32(hg, rg); e > 1e-7 {
			t.Errorf("cross-entropy %+v: host gradient vs reference: relative error %.3g", c, e)
		}
		// distill.AnswerMask selects the rows CrossEntropy counts.
		mask := distill.AnswerMask(labels)
		_, g, _ := reference.CrossEntropy(array(t, x, c.rows, c.vocab), labels)
		for r := range c.rows {
			nonzero := reference.SumSquares(&reference.Array{Shape: []int{c.vocab}, Data: g.Data[r*c.vocab : (r+1)*c.vocab]}) > 0
			if nonzero != mask[r] {
				t.Errorf("row %d: gradient nonzero %v, AnswerMask %v", r, nonzero, mask[r])
			}
		}
	}
}

func TestLayerDistanceEqualsHost(t *testing.T) {
	rng := rand.New(rand.NewPCG(35, 36))
	forms := []struct {
		host distill.LayerDistance
		dev  kernels.Distance
	}{{distill.L2Norm, kernels.DistanceL2Norm}, {distill.SquaredL2, kernels.DistanceSquaredL2}, {distill.MeanSquared, kernels.DistanceMeanSquared}}
	for _, f := range forms {
		s := randF32(rng, 7*33, -2, 2)
		te := randF32(rng, 7*33, -2, 2)
		hv, hg, err := distill.LayerLoss(s, te, f.host)
		if err != nil {
			t.Fatal(err)
		}
		rv, rg, err := reference.LayerDistance(array(t, s, 7, 33), array(t, te, 7, 33), f.dev)
		if err != nil {
			t.Fatal(err)
		}
		closeValue(t, f.host.String(), rv, hv, 1e-13)
		if e := relErr32(hg, rg); e > 1e-7 {
			t.Errorf("%v: host gradient vs reference: relative error %.3g", f.host, e)
		}
		// Zero distance: both give 0 and a zero gradient.
		hv, hg, _ = distill.LayerLoss(s, s, f.host)
		rv, rg, _ = reference.LayerDistance(array(t, s, 7, 33), array(t, s, 7, 33), f.dev)
		if hv != 0 || rv != 0 || relErr32(hg, rg) != 0 || reference.SumSquares(rg) != 0 {
			t.Errorf("%v at zero distance: host %g, reference %g", f.host, hv, rv)
		}
	}
}

// Four updates of optim.AdamW (float32 state) and of the float64
// reference agree to float32 rounding, with and without weight decay, and
// with a gradient scale applied the way optim.ClipGlobalNorm applies it.
func TestAdamWEqualsOptim(t *testing.T) {
	rng := rand.New(rand.NewPCG(37, 38))
	const n = 777
	for _, c := range []struct {
		decay bool
		scale float64
	}{{true, 1}, {false, 1}, {true, 0.37}} {
		opt := &optim.AdamW{LR: 3e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
		data := randF32(rng, n, -1, 1)
		init := array(t, data, n)
		p := init.Clone()
		m, v := reference.New(n), reference.New(n)
		for step := int64(1); step <= 4; step++ {
			grad := randF32(rng, n, -0.5, 0.5)
			lr := opt.LR * float64(step) / 4
			s := kernels.AdamWStep{LR: lr, Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay, Step: step, GradScale: c.scale}
			var err error
			p, m, v, err = reference.AdamW(p, array(t, grad, n), m, v, c.decay, s)
			if err != nil {
				t.Fatal(err)
			}
			scaled := make([]float32, n)
			for i, g := range grad {
				scaled[i] = float32(float64(g) * c.scale)
			}
			if err := opt.Step([]optim.Param{{Name: "w", Data: data, Grad: scaled, Decay: c.decay}}, lr); err != nil {
				t.Fatal(err)
			}
		}
		if e := relErr32(data, p); e > 1e-7 {
			t.Errorf("%+v: optim vs reference after 4 steps: relative error %.3g", c, e)
		} else {
			t.Logf("%+v: optim vs reference after 4 steps: relative error %.3g", c, e)
		}
		// The steps taken, not just the values, agree: to float32
		// rounding of the values (2⁻²⁴ of |θ| ≤ 1 against steps of ~lr).
		moved := make([]float32, n)
		step := reference.New(n)
		for i, d := range data {
			moved[i] = float32(float64(d) - init.Data[i])
			step.Data[i] = p.Data[i] - init.Data[i]
		}
		if e := relErr32(moved, step); e > 1e-4 {
			t.Errorf("%+v: steps taken by optim vs the reference: relative error %.3g", c, e)
		} else {
			t.Logf("%+v: steps taken by optim vs the reference: relative error %.3g", c, e)
		}
	}
}
