package optim

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestAdamWHandComputed checks three updates of two elements against
// PyTorch's AdamW written out by hand in float64 (lr 1e-2, betas
// (0.9, 0.95), eps 1e-8, wd 0.1), with and without weight decay. The first
// update is θ·(1 − lr·wd) − lr·g/(|g| + ε): bias correction makes it a
// step of almost exactly lr.
func TestAdamWHandComputed(t *testing.T) {
	grads := [][]float32{{0.1, -0.2}, {-0.3, 0.05}, {0.2, 0.2}}
	want := map[bool][][2]float64{
		false: {
			{0.49000000099999991, -1.2400000005},
			{0.49489295845886239, -1.2352523415324066},
			{0.49470604752796321, -1.2370988697117262},
		},
		true: {
			{0.48950000099999991, -1.2387500005000001},
			{0.49390345845786238, -1.2327635915319066},
			{0.49322264406850536, -1.2333773561196943},
		},
	}
	for _, decay := range []bool{false, true} {
		opt := &AdamW{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
		p := []Param{{Name: "w", Data: []float32{0.5, -1.25}, Grad: make([]float32, 2), Decay: decay}}
		for step, g := range grads {
			copy(p[0].Grad, g)
			if err := opt.Step(p, 1e-2); err != nil {
				t.Fatal(err)
			}
			for i, w := range want[decay][step] {
				// float32 weights: one rounding of θ per update (2⁻²⁴
				// relative), plus the float32 moments' rounding inside the
				// update (2⁻²⁴ of a step of about lr).
				tol := float64(step+1) * (0x1p-24 + 0x1p-24*1e-2)
				if rel := math.Abs(float64(p[0].Data[i])-w) / math.Abs(w); rel > tol {
					t.Errorf("decay %v, step %d, element %d: %.9g, want %.9g (relative error %.2g)", decay, step+1, i, p[0].Data[i], w, rel)
				}
			}
		}
		if opt.Steps() != 3 {
			t.Errorf("Steps() = %d, want 3", opt.Steps())
		}
	}
}

// refAdamW is PyTorch's AdamW in float64 throughout, state included.
type refAdamW struct {
	beta1, beta2, eps, wd float64
	t                     int
	m, v                  [][]float64
}

func (r *refAdamW) step(theta [][]float64, grads [][]float32, decay []bool, lr float64) {
	if r.m == nil {
		for _, th := range theta {
			r.m = append(r.m, make([]float64, len(th)))
			r.v = append(r.v, make([]float64, len(th)))
		}
	}
	r.t++
	bc1 := 1 - math.Pow(r.beta1, float64(r.t))
	bc2 := 1 - math.Pow(r.beta2, float64(r.t))
	for k, th := range theta {
		for i := range th {
			g := float64(grads[k][i])
			if decay[k] {
				th[i] *= 1 - lr*r.wd
			}
			r.m[k][i] = r.beta1*r.m[k][i] + (1-r.beta1)*g
			r.v[k][i] = r.beta2*r.v[k][i] + (1-r.beta2)*g*g
			th[i] -= lr / bc1 * r.m[k][i] / (math.Sqrt(r.v[k][i])/math.Sqrt(bc2) + r.eps)
		}
	}
}

// randomParams makes parameters of the given sizes with values and
// gradients of varied magnitudes, alternately decayed.
func randomParams(rng *rand.Rand, sizes ...int) []Param {
	ps := make([]Param, len(sizes))
	for k, n := range sizes {
		ps[k] = Param{Name: "p" + strings.Repeat("x", k), Data: make([]float32, n), Grad: make([]float32, n), Decay: k%2 == 0}
		for i := range n {
			ps[k].Data[i] = float32(rng.NormFloat64() * 0.05)
		}
	}
	fillGrads(rng, ps)
	return ps
}

// fillGrads draws fresh gradients spanning several orders of magnitude.
func fillGrads(rng *rand.Rand, ps []Param) {
	for _, p := range ps {
		for i := range p.Grad {
			p.Grad[i] = float32(rng.NormFloat64() * math.Pow(10, -4*rng.Float64()))
		}
	}
}

// TestAdamWAgainstFloat64 runs three updates on random tensors (one larger
// than a chunk, odd sizes) with a changing learning rate and compares with
// the float64 reference. Each element may differ by the float32 roundings:
// of θ (2⁻²⁴ relative per update) and of the moments (a relative 2⁻²⁴ of
// the update, itself at most a few lr).
func TestAdamWAgainstFloat64(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ps := randomParams(rng, chunkLen+1234, 17, 1, 4099)
	opt := &AdamW{LR: 3e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.05, Workers: 3}
	ref := &refAdamW{beta1: 0.9, beta2: 0.95, eps: 1e-8, wd: 0.05}
	theta := make([][]float64, len(ps))
	decay := make([]bool, len(ps))
	for k, p := range ps {
		for _, x := range p.Data {
			theta[k] = append(theta[k], float64(x))
		}
		decay[k] = p.Decay
	}
	lrs := []float64{3e-3, 1e-3, 2e-3}
	for step, lr := range lrs {
		if step > 0 {
			fillGrads(rng, ps)
		}
		grads := make([][]float32, len(ps))
		for k, p := range ps {
			grads[k] = append([]float32(nil), p.Grad...)
		}
		if err := opt.Step(ps, lr); err != nil {
			t.Fatal(err)
		}
		ref.step(theta, grads, decay, lr)
		worst := 0.0
		for k, p := range ps {
			for i, x := range p.Data {
				tol := float64(step+1) * (0x1p-24*math.Abs(theta[k][i]) + 1e-6*lr)
				if d := math.Abs(float64(x) - theta[k][i]); d > tol {
					t.Fatalf("step %d, %s[%d]: %.9g, want %.9g (difference %.3g > %.3g)", step+1, p.Name, i, x, theta[k][i], d, tol)
				} else {
					worst = max(worst, d/tol)
				}
			}
		}
		t.Logf("step %d: worst difference %.2f of the tolerance", step+1, worst)
	}
}

// TestAdamWWorkersBitIdentical runs the same updates with 1, 2 and 7
// workers: every weight and moment must be bit-identical.
func TestAdamWWorkersBitIdentical(t *testing.T) {
	var results [][]Param
	var states [][]moments
	for _, workers := range []int{1, 2, 7} {
		rng := rand.New(rand.NewPCG(7, 8))
		ps := randomParams(rng, 3*chunkLen+5, 99, chunkLen)
		opt := Recipe()
		opt.Workers = workers
		for range 4 {
			if err := opt.Step(ps, 1e-3); err != nil {
				t.Fatal(err)
			}
			fillGrads(rng, ps)
		}
		results = append(results, ps)
		states = append(states, opt.state)
	}
	for w := 1; w < len(results); w++ {
		for k := range results[0] {
			if !sameBits(results[0][k].Data, results[w][k].Data) || !sameBits(states[0][k].m, states[w][k].m) || !sameBits(states[0][k].v, states[w][k].v) {
				t.Errorf("parameter %s differs between worker counts", results[0][k].Name)
			}
		}
	}
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// TestAdamWZeroLRMovesOnlyMoments: at lr 0 (a warmup's first update)
// weights stay put but the moments and the step count advance, as in
// PyTorch.
func TestAdamWZeroLRMovesOnlyMoments(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	ps := randomParams(rng, 100)
	before := append([]float32(nil), ps[0].Data...)
	opt := Recipe()
	if err := opt.Step(ps, 0); err != nil {
		t.Fatal(err)
	}
	if !sameBits(before, ps[0].Data) {
		t.Error("weights changed at learning rate 0")
	}
	for i, g := range ps[0].Grad {
		if want := float32(0.1 * float64(g)); opt.state[0].m[i] != want {
			t.Fatalf("m[%d] = %g, want %g", i, opt.state[0].m[i], want)
		}
	}
	if opt.Steps() != 1 {
		t.Errorf("Steps() = %d, want 1", opt.Steps())
	}
}

func TestAdamWRejects(t *testing.T) {
	good := func() []Param {
		return []Param{{Name: "a", Data: make([]float32, 3), Grad: make([]float32, 3)}, {Name: "b", Data: make([]float32, 2), Grad: make([]float32, 2), Decay: true}}
	}
	cases := []struct {
		name   string
		opt    AdamW
		params []Param
		lr     float64
		want   string
	}{
		{"beta1", AdamW{Beta1: 1, Beta2: 0.9}, good(), 1e-3, "beta1"},
		{"beta2", AdamW{Beta1: 0.9, Beta2: -0.1}, good(), 1e-3, "beta2"},
		{"eps", AdamW{Beta1: 0.9, Beta2: 0.9, Eps: math.NaN()}, good(), 1e-3, "eps"},
		{"decay", AdamW{Beta1: 0.9, Beta2: 0.9, WeightDecay: -1}, good(), 1e-3, "weight decay"},
		{"lr", *Recipe(), good(), math.Inf(1), "learning rate"},
		{"negative lr", *Recipe(), good(), -1e-3, "learning rate"},
		{"grad length", *Recipe(), []Param{{Name: "a", Data: make([]float32, 3), Grad: make([]float32, 2)}}, 1e-3, "parameter a: 3 values but 2 gradients"},
		{"duplicate", *Recipe(), []Param{{Name: "a"}, {Name: "a"}}, 1e-3, "appears twice"},
		{"no name", *Recipe(), []Param{{}}, 1e-3, "no name"},
	}
	for _, c := range cases {
		err := c.opt.Step(c.params, c.lr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
		if c.opt.Steps() != 0 {
			t.Errorf("%s: the failed step counted", c.name)
		}
	}

	// Once the state exists, the parameters must stay the same.
	opt := Recipe()
	if err := opt.Step(good(), 1e-3); err != nil {
		t.Fatal(err)
	}
	changed := map[string]func([]Param) []Param{
		"parameter 0 is c":          func(p []Param) []Param { p[0].Name = "c"; return p },
		"has 4 values, its state 3": func(p []Param) []Param { p[0].Data, p[0].Grad = make([]float32, 4), make([]float32, 4); return p },
		"weight decay false":        func(p []Param) []Param { p[1].Decay = false; return p },
		"state holds 2 parameters":  func(p []Param) []Param { return p[:1] },
	}
	for want, change := range changed {
		if err := opt.Step(change(good()), 1e-3); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one mentioning %q", err, want)
		}
	}
	if opt.Steps() != 1 {
		t.Errorf("Steps() = %d after failed steps, want 1", opt.Steps())
	}
}

func TestZeroGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ps := randomParams(rng, chunkLen+3, 5)
	ZeroGrad(ps)
	for _, p := range ps {
		for i, g := range p.Grad {
			if g != 0 {
				t.Fatalf("%s grad[%d] = %g after ZeroGrad", p.Name, i, g)
			}
		}
	}
}
