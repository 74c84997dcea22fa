package reference

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// centralDiff checks grad against central differences of f at x: every
// coordinate is perturbed by ±h and the relative 2-norm error of the
// whole gradient must be within tol.
func centralDiff(t *testing.T, what string, x, grad *Array, f func() float64, h, tol float64) {
	t.Helper()
	fd := New(x.Shape...)
	for i := range x.Data {
		saved := x.Data[i]
		x.Data[i] = saved + h
		up := f()
		x.Data[i] = saved - h
		down := f()
		x.Data[i] = saved
		fd.Data[i] = (up - down) / (2 * h)
	}
	if e := relErr(grad, fd); !(e <= tol) {
		t.Errorf("%s: gradient vs central differences: relative error %.3g > %.3g", what, e, tol)
	} else {
		t.Logf("%s: gradient vs central differences: relative error %.3g", what, e)
	}
}

func TestKLDivergenceGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, c := range []struct {
		shape []int
		temp  float64
		mask  bool
	}{
		{[]int{3, 7}, 1, false},
		{[]int{2, 4, 11}, 1.7, true},
		{[]int{5, 2}, 0.6, true},
	} {
		s := randArray(rng, -3, 3, c.shape...)
		te := randArray(rng, -3, 3, c.shape...)
		rows := s.Len() / c.shape[len(c.shape)-1]
		var mask []bool
		if c.mask {
			mask = make([]bool, rows)
			for r := range mask {
				mask[r] = r%3 != 1
			}
		}
		_, grad, err := KLDivergence(s, te, c.temp, mask)
		if err != nil {
			t.Fatal(err)
		}
		f := func() float64 {
			v, _, err := KLDivergence(s, te, c.temp, mask)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		centralDiff(t, "kl", s, grad, f, 1e-5, 1e-7)
	}
}

// The KL of a distribution from itself is 0, and its value does not
// change when a constant is added to a row of either input.
func TestKLDivergenceInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	s := randArray(rng, -4, 4, 4, 9)
	kl, _, err := KLDivergence(s, s.Clone(), 1.3, nil)
	if err != nil || math.Abs(kl) > 1e-15 {
		t.Errorf("KL(p‖p) = %g, %v; want 0", kl, err)
	}
	te := randArray(rng, -4, 4, 4, 9)
	kl, _, _ = KLDivergence(s, te, 2, nil)
	shifted := s.Clone()
	for i := range shifted.Data {
		shifted.Data[i] += float64(i/9) * 100
	}
	kl2, _, _ := KLDivergence(shifted, te, 2, nil)
	if math.Abs(kl-kl2) > 1e-12*kl {
		t.Errorf("KL changed under a per-row shift: %g vs %g", kl, kl2)
	}
	if kl, g, err := KLDivergence(s, te, 1, make([]bool, 4)); err != nil || kl != 0 || SumSquares(g) != 0 {
		t.Errorf("no row selected: %g, ‖g‖² %g, %v; want 0", kl, SumSquares(g), err)
	}
}

func TestCrossEntropyGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	for _, c := range []struct {
		shape  []int
		labels []int
	}{
		{[]int{5, 6}, []int{IgnoreLabel, 3, IgnoreLabel, 0, 5}},
		{[]int{2, 3, 4}, []int{1, 2, 3, IgnoreLabel, 0, 1}},
	} {
		x := randArray(rng, -3, 3, c.shape...)
		_, grad, err := CrossEntropy(x, c.labels)
		if err != nil {
			t.Fatal(err)
		}
		centralDiff(t, "cross-entropy", x, grad, func() float64 {
			v, _, err := CrossEntropy(x, c.labels)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}, 1e-5, 1e-7)
	}
}

// The shift stays within each sequence of [.., L, vocab]: the value over
// two sequences is the count-weighted mean of each sequence's.
func TestCrossEntropySequences(t *testing.T) {
	rng := rand.New(rand.NewPCG(27, 28))
	x := randArray(rng, -2, 2, 2, 4, 5)
	labels := []int{1, 2, IgnoreLabel, 4, 0, 3, 3, IgnoreLabel}
	both, _, err := CrossEntropy(x, labels)
	if err != nil {
		t.Fatal(err)
	}
	first, err := FromData(x.Data[:20], 4, 5)
	if err != nil {
		t.Fatal(err)
	}
	second, err := FromData(x.Data[20:], 4, 5)
	if err != nil {
		t.Fatal(err)
	}
	a, _, _ := CrossEntropy(first, labels[:4])  // counts rows 0 and 2
	b, _, _ := CrossEntropy(second, labels[4:]) // counts rows 0 and 1
	if want := (2*a + 2*b) / 4; math.Abs(both-want) > 1e-14 {
		t.Errorf("two sequences: %g, want %g", both, want)
	}
	// Flattened to one sequence the last row of the first would predict
	// the first label of the second: a different value.
	flat, _ := x.Reshape(8, 5)
	if v, _, _ := CrossEntropy(flat, labels); v == both {
		t.Errorf("flattening to one sequence did not change the value (%g)", v)
	}
	// 1-D logits are one row, which predicts nothing.
	if v, g, err := CrossEntropy(randArray(rng, -1, 1, 6), []int{2}); err != nil || v != 0 || SumSquares(g) != 0 {
		t.Errorf("1-D logits: %g, ‖g‖² %g, %v; want 0", v, SumSquares(g), err)
	}
}

func TestLayerDistanceGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(29, 30))
	for _, form := range []kernels.Distance{kernels.DistanceL2Norm, kernels.DistanceSquaredL2, kernels.DistanceMeanSquared} {
		s := randArray(rng, -1, 1, 3, 5)
		te := randArray(rng, -1, 1, 3, 5)
		_, grad, err := LayerDistance(s, te, form)
		if err != nil {
			t.Fatal(err)
		}
		centralDiff(t, "layer distance", s, grad, func() float64 {
			v, _, err := LayerDistance(s, te, form)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}, 1e-5, 1e-8)
		// At zero distance the value is 0 and so is the gradient (the
		// 2-norm's included).
		v, g, err := LayerDistance(s, s.Clone(), form)
		if err != nil || v != 0 || SumSquares(g) != 0 {
			t.Errorf("form %d at zero distance: %g, ‖g‖² %g, %v", form, v, SumSquares(g), err)
		}
	}
}

func TestLossErrors(t *testing.T) {
	a, b := New(2, 3), New(3, 2)
	cases := []struct {
		what string
		err  error
	}{
		{"kl shapes", second(KLDivergence(a, b, 1, nil))},
		{"kl temperature 0", second(KLDivergence(a, a, 0, nil))},
		{"kl temperature NaN", second(KLDivergence(a, a, math.NaN(), nil))},
		{"kl mask length", second(KLDivergence(a, a, 1, []bool{true}))},
		{"ce label count", second(CrossEntropy(a, []int{1}))},
		{"ce label past the vocabulary", second(CrossEntropy(a, []int{0, 3}))},
		{"ce negative label", second(CrossEntropy(a, []int{-1, 0}))},
		{"ce bad label in the first position", second(CrossEntropy(a, []int{7, 0}))},
		{"distance shapes", second(LayerDistance(a, b, kernels.DistanceL2Norm))},
		{"distance form", second(LayerDistance(a, a, kernels.Distance(9)))},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: no error", c.what)
		}
	}
	good := kernels.AdamWStep{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01, Step: 1, GradScale: 1}
	for _, bad := range []func(*kernels.AdamWStep){
		func(s *kernels.AdamWStep) { s.LR = -1 },
		func(s *kernels.AdamWStep) { s.Beta1 = 1 },
		func(s *kernels.AdamWStep) { s.Beta2 = math.NaN() },
		func(s *kernels.AdamWStep) { s.Eps = math.Inf(1) },
		func(s *kernels.AdamWStep) { s.WeightDecay = -0.1 },
		func(s *kernels.AdamWStep) { s.Step = 0 },
		func(s *kernels.AdamWStep) { s.GradScale = 0 },
		func(s *kernels.AdamWStep) { s.GradScale = math.Inf(1) },
	} {
		s := good
		bad(&s)
		if _, _, _, err := AdamW(a, a, a, a, true, s); err == nil {
			t.Errorf("adamw %+v: no error", s)
		}
	}
	if _, _, _, err := AdamW(a, b, a, a, true, good); err == nil {
		t.Errorf("adamw with a gradient of another shape: no error")
	}
}

func second(_ float64, _ *Array, err error) error { return err }
