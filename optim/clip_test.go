package optim

import (
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
)

// refNorm is the 2-norm of all gradients, summed in float64 in plain order.
func refNorm(ps []Param) float64 {
	var s float64
	for _, p := range ps {
		for _, g := range p.Grad {
			s += float64(g) * float64(g)
		}
	}
	return math.Sqrt(s)
}

func cloneGrads(ps []Param) [][]float32 {
	out := make([][]float32, len(ps))
	for k, p := range ps {
		out[k] = append([]float32(nil), p.Grad...)
	}
	return out
}

func TestClipGlobalNormScales(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	ps := randomParams(rng, 2*chunkLen+77, 3, 1000)
	before := cloneGrads(ps)
	want := refNorm(ps)
	maxNorm := want / 7 // well below: clipping applies
	norm, err := ClipGlobalNorm(ps, maxNorm)
	if err != nil {
		t.Fatal(err)
	}
	if rel := math.Abs(norm-want) / want; rel > 1e-13 {
		t.Errorf("norm %.17g, want %.17g (relative error %.2g)", norm, want, rel)
	}
	coef := maxNorm / (want + 1e-6)
	for k, p := range ps {
		for i, g := range p.Grad {
			// Each gradient is scaled in float64 and rounded once.
			if w := float32(float64(before[k][i]) * coef); g != w {
				t.Fatalf("%s grad[%d] = %g, want %g", p.Name, i, g, w)
			}
		}
	}
	after := refNorm(ps)
	if rel := math.Abs(after-maxNorm*want/(want+1e-6)) / maxNorm; rel > 1e-6 {
		t.Errorf("norm after clipping %.9g, want %.9g", after, maxNorm)
	}
}

// TestClipGlobalNormBoundary follows torch's rule max/(norm+1e-6) < 1
// rather than norm > max: at norm == max the gradients shrink by the
// epsilon's share; they stay put from max = norm + 1e-6 up.
func TestClipGlobalNormBoundary(t *testing.T) {
	ps := []Param{{Name: "g", Data: make([]float32, 2), Grad: []float32{3, 4}}} // norm 5
	for _, c := range []struct {
		maxNorm float64
		scaled  bool
	}{{5.5, false}, {5 + 1e-6, false}, {5, true}, {5 - 1e-3, true}, {0.5, true}} {
		ps[0].Grad[0], ps[0].Grad[1] = 3, 4
		norm, err := ClipGlobalNorm(ps, c.maxNorm)
		if err != nil {
			t.Fatal(err)
		}
		if norm != 5 {
			t.Errorf("max %g: norm %g, want 5", c.maxNorm, norm)
		}
		unchanged := ps[0].Grad[0] == 3 && ps[0].Grad[1] == 4
		if unchanged == c.scaled {
			t.Errorf("max %g: grads %v, scaled should be %v", c.maxNorm, ps[0].Grad, c.scaled)
		}
		if c.scaled {
			coef := c.maxNorm / (5 + 1e-6)
			if ps[0].Grad[0] != float32(3*coef) || ps[0].Grad[1] != float32(4*coef) {
				t.Errorf("max %g: grads %v, want %v", c.maxNorm, ps[0].Grad, []float64{3 * coef, 4 * coef})
			}
		}
	}
}

func TestClipGlobalNormNonFinite(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
		ps := randomParams(rng, 50, 60)
		ps[1].Grad[42] = bad
		before := cloneGrads(ps)
		_, err := ClipGlobalNorm(ps, 1e-3)
		if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "parameter px: gradient element 42") {
			t.Errorf("gradient %g: error %v, want ErrNonFinite naming px element 42", bad, err)
		}
		for k, p := range ps {
			if !sameBits(p.Grad, before[k]) {
				t.Errorf("gradient %g: %s changed although clipping failed", bad, p.Name)
			}
		}
	}
	if _, err := ClipGlobalNorm(nil, 0); err == nil {
		t.Error("max norm 0 accepted")
	}
	if _, err := ClipGlobalNorm(nil, math.NaN()); err == nil {
		t.Error("max norm NaN accepted")
	}
}

// TestGlobalNormWorkers: the norm is bit-identical whatever GOMAXPROCS is.
func TestGlobalNormWorkers(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	ps := randomParams(rng, 5*chunkLen+11, 7, 3*chunkLen)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	var first float64
	for i, procs := range []int{1, 2, 5, 16} {
		runtime.GOMAXPROCS(procs)
		n, err := GlobalNorm(ps)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = n
		} else if math.Float64bits(n) != math.Float64bits(first) {
			t.Errorf("GOMAXPROCS %d: norm %.17g, with 1: %.17g", procs, n, first)
		}
	}
}
