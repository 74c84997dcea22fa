package distill

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/reference"
)

// newRand is the seeded source of a test: every input is drawn from it.
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)) }

// randn returns n normal values scaled by scale.
func randn(rng *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(scale * rng.NormFloat64())
	}
	return v
}

// uniform returns n values uniform in [lo, hi).
func uniform(rng *rand.Rand, n int, lo, hi float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	return v
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// arr wraps float64 data (shared, not copied) as a reference Array.
func arr(t testing.TB, data []float64, shape ...int) *reference.Array {
	t.Helper()
	a, err := reference.FromData(data, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// relErr is ‖got−want‖₂/‖want‖₂ (‖got−want‖₂ when want is zero); NaN or
// Inf gives +Inf.
func relErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i, w := range want {
		g := float64(got[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// checkRel fails when got is further than tol from want (relative 2-norm).
func checkRel(t testing.TB, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", what, len(got), len(want))
		return
	}
	e := relErr(got, want)
	if !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g", what, e, tol)
		return
	}
	t.Logf("%s: relative error %.3g", what, e)
}

// gradInput is one input of a function under a gradient check: the
// float64 values the function reads (perturbed in place by the check) and
// the analytic float32 gradient to compare.
type gradInput struct {
	name string
	x    []float64
	grad []float32
}

// fdCheck configures checkGradients.
type fdCheck struct {
	eps float64 // central-difference step (absolute)
	tol float64 // largest accepted relative error
	// full: inputs of at most this many values get the whole gradient by
	// central differences, compared by ‖fd − g‖/‖fd‖. Larger inputs get
	// dirs directional derivatives (random unit directions and the
	// gradient's own direction) and samples single entries (the largest
	// |g| first, then random ones).
	full, dirs, samples int
}

// defaultFD: float64 central differences with step 1e-5 (truncation error
// ~1e-10, rounding ~1e-11 relative) against float32 analytic gradients.
var defaultFD = fdCheck{eps: 1e-5, tol: 1e-4, full: 4096, dirs: 3, samples: 6}

// checkGradients compares the analytic gradients of f (a float64 scalar
// function of the inputs' x values) with central differences.
func checkGradients(t *testing.T, rng *rand.Rand, what string, f func() float64, inputs []gradInput, c fdCheck) {
	t.Helper()
	central := func(x []float64, v []float64) float64 {
		save := slices.Clone(x)
		for i := range x {
			x[i] = save[i] + c.eps*v[i]
		}
		fp := f()
		for i := range x {
			x[i] = save[i] - c.eps*v[i]
		}
		fm := f()
		copy(x, save)
		return (fp - fm) / (2 * c.eps)
	}
	single := func(x []float64, i int) float64 {
		x0 := x[i]
		x[i] = x0 + c.eps
		fp := f()
		x[i] = x0 - c.eps
		fm := f()
		x[i] = x0
		return (fp - fm) / (2 * c.eps)
	}
	for _, in := range inputs {
		if len(in.x) != len(in.grad) {
			t.Fatalf("%s %s: %d values, %d gradients", what, in.name, len(in.x), len(in.grad))
		}
		g := widen(in.grad)
		var gnorm, ginf float64
		for _, v := range g {
			gnorm += v * v
			ginf = max(ginf, math.Abs(v))
		}
		gnorm = math.Sqrt(gnorm)
		if len(in.x) <= c.full {
			fd := make([]float64, len(in.x))
			for i := range fd {
				fd[i] = single(in.x, i)
			}
			e := relErr(in.grad, fd)
			if !(e <= c.tol) {
				t.Errorf("%s: d/d %s: relative error %.3g > %.3g (‖g‖ %.3g)", what, in.name, e, c.tol, gnorm)
			} else {
				t.Logf("%s: d/d %s: %d entries, relative error %.3g", what, in.name, len(fd), e)
			}
			continue
		}
		worst := 0.0
		dirs := make([][]float64, 0, c.dirs+1)
		if gnorm > 0 {
			v := make([]float64, len(g))
			for i := range v {
				v[i] = g[i] / gnorm
			}
			dirs = append(dirs, v)
		}
		for range c.dirs {
			v := make([]float64, len(g))
			var nv float64
			for i := range v {
				v[i] = rng.NormFloat64()
				nv += v[i] * v[i]
			}
			for i := range v {
				v[i] /= math.Sqrt(nv)
			}
			dirs = append(dirs, v)
		}
		for _, v := range dirs {
			fd := central(in.x, v)
			var an, scale float64
			for i := range v {
				an += g[i] * v[i]
				scale += (g[i] * v[i]) * (g[i] * v[i])
			}
			scale = max(math.Sqrt(scale), math.Abs(an), 1e-300)
			worst = max(worst, math.Abs(fd-an)/scale)
		}
		order := make([]int, len(g))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int {
			switch {
			case math.Abs(g[a]) > math.Abs(g[b]):
				return -1
			case math.Abs(g[a]) < math.Abs(g[b]):
				return 1
			}
			return a - b
		})
		picks := order[:min(len(order), (c.samples+1)/2)]
		for range c.samples / 2 {
			picks = append(picks, rng.IntN(len(g)))
		}
		for _, i := range picks {
			fd := single(in.x, i)
			worst = max(worst, math.Abs(fd-g[i])/max(ginf, 1e-300))
		}
		if !(worst <= c.tol) {
			t.Errorf("%s: d/d %s: %d directions and %d entries, worst relative error %.3g > %.3g (‖g‖ %.3g)",
				what, in.name, len(dirs), len(picks), worst, c.tol, gnorm)
		} else {
			t.Logf("%s: d/d %s: %d directions and %d entries, worst relative error %.3g", what, in.name, len(dirs), len(picks), worst)
		}
	}
}

// dot is Σ w·a in float64: the scalar a check differentiates, w being the
// fixed random upstream gradient.
func dot(w []float32, a *reference.Array) float64 {
	var s float64
	for i, v := range a.Data {
		s += float64(w[i]) * v
	}
	return s
}

// must unwraps a reference result: must(t)(reference.Op(…)).
func must(t testing.TB) func(*reference.Array, error) *reference.Array {
	return func(a *reference.Array, err error) *reference.Array {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}
