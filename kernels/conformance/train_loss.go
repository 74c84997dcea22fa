package conformance

import (
	"math"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
	"github.com/matsurgery/matsurgery/optim"
)

// lossSumTol bounds the relative error of the values the contract sums in
// float64 from float32 inputs (LayerDistance, SumSquares): every square of
// a float32 (or of the difference of two) is exact in float64, so only the
// order of the additions remains.
const lossSumTol = 1e-10

// RunLossGrad checks the kernels.LossGrad family (kernels/train.go) of
// the backend from newBackend, closed at the end; it is skipped when the
// backend lacks the family. Losses run at the vocabulary of Phi-2 (51200
// columns) and at odd sizes, on fresh random logits, with masks, ignored
// labels and temperatures; each gradient is checked written into zeros
// (its own relative error) and accumulated into a pre-filled buffer of
// the same magnitude with a weight (rows a loss does not count must keep
// their values bit for bit). Values are checked within tol.F32 (KL and
// cross-entropy) or lossSumTol (the float64 sums); AdamW must equal
// optim.AdamW bit for bit over three updates — values, moments and the
// bf16 shadow — with and without decay and gradient scale. Repeated calls
// must give identical bits (deterministic reductions), and bad operands
// errors, not panics.
func RunLossGrad(t *testing.T, newBackend func() kernels.Backend, tol Tolerances) {
	t.Helper()
	be := newBackend()
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Name(), err)
		}
	})
	lg, ok := be.(kernels.LossGrad)
	if !ok {
		t.Skipf("backend %s does not implement kernels.LossGrad", be.Name())
	}
	s := &suite{be: be, tol: tol}
	for _, c := range []struct {
		name string
		fn   func(*env, kernels.LossGrad)
	}{
		{"KLDivergence", s.lossKL},
		{"CrossEntropy", s.lossCE},
		{"LayerDistance", s.lossDistance},
		{"SumSquares", s.lossSumSquares},
		{"AdamW", s.lossAdamW},
		{"Deterministic", s.lossDeterministic},
		{"NonFinite", s.lossNonFinite},
		{"Errors", s.lossErrors},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(s.env(t), lg) })
	}
}

// lossValue compares a loss value with its reference within tol
// (relative; absolute against 0).
func (e *env) lossValue(what string, got, want, tol float64) {
	e.Helper()
	rel := math.Abs(got - want)
	if want != 0 {
		rel /= math.Abs(want)
	}
	if !(rel <= tol) {
		e.Errorf("%s: value %.17g, want %.17g (relative error %.3g > %.3g)", what, got, want, rel, tol)
		return
	}
	e.Logf("%s: value %.10g, relative error %.3g", what, got, rel)
}

// lossGrad runs call twice on the gradient of ref's shape: into zeros,
// where the result must be weight·ref within tol, and into a buffer
// pre-filled with values of the gradient's own magnitude, where it must be
// prefill + weight·ref within tol, with the elements where ref is 0 (rows
// not counted) unchanged bit for bit. It returns the two values call
// gave.
func (e *env) lossGrad(what string, ref *reference.Array, weight float32, tol float64, call func(grad kernels.Tensor) float64) (v1, v2 float64) {
	e.Helper()
	w := float64(weight)
	want := ref.Clone()
	var ss float64
	for i, g := range ref.Data {
		want.Data[i] = w * g
		ss += want.Data[i] * want.Data[i]
	}
	zero := e.up(reference.New(ref.Shape...))
	v1 = call(zero)
	e.check(what+": gradient into zeros", e.down(zero), want, tol)

	rms := math.Sqrt(ss / float64(ref.Len()))
	if rms == 0 {
		rms = 1
	}
	pre := e.rand(-rms, rms, ref.Shape...)
	acc := e.up(pre)
	v2 = call(acc)
	got := e.down(acc)
	sum := pre.Clone()
	for i := range sum.Data {
		sum.Data[i] += want.Data[i]
	}
	e.check(what+": gradient accumulated", got, sum, tol)
	for i, g := range ref.Data {
		if g == 0 && got.Data[i] != pre.Data[i] {
			e.Errorf("%s: element %d has no gradient but changed from %g to %g", what, i, pre.Data[i], got.Data[i])
			break
		}
	}
	return v1, v2
}

// lossRows returns the number of rows of shape (leading dimensions).
func lossRows(shape []int) int { return prod(shape) / shape[len(shape)-1] }

func (s *suite) lossKL(e *env, lg kernels.LossGrad) {
	cases := []struct {
		shape  []int
		temp   float64
		mask   string // "": nil; "some"; "none"; "all"
		close  bool   // the student a small perturbation of the teacher (a small KL)
		scale  float64
		weight float32
	}{
		{[]int{3, 51200}, 1, "", false, 4, 1},
		{[]int{2, 51200}, 1, "some", true, 4, 0.75},
		{[]int{4, 50257}, 2, "some", false, 3, 1},
		{[]int{2, 5, 37}, 0.7, "some", false, 2, -1.5},
		{[]int{7, 1000}, 0.5, "", false, 60, 1}, // logits/T up to 120: needs the max subtracted
		{[]int{1, 6, 301}, 3, "all", true, 5, 2},
		{[]int{5, 1}, 1, "", false, 1, 1}, // one column: KL 0, gradient 0
		{[]int{4, 33}, 1, "none", false, 1, 1},
	}
	for _, c := range cases {
		rows := lossRows(c.shape)
		teacher := e.rand(-c.scale, c.scale, c.shape...)
		student := e.rand(-c.scale, c.scale, c.shape...)
		if c.close {
			for i := range student.Data {
				student.Data[i] = float64(float32(teacher.Data[i] + 0.05*(student.Data[i]/c.scale)))
			}
		}
		var mask []bool
		switch c.mask {
		case "some":
			mask = make([]bool, rows)
			for r := range mask {
				mask[r] = e.rng.IntN(3) > 0
			}
			mask[0], mask[rows-1] = true, false
		case "none":
			mask = make([]bool, rows)
		case "all":
			mask = make([]bool, rows)
			for r := range mask {
				mask[r] = true
			}
		}
		refV, refG, err := reference.KLDivergence(student, teacher, c.temp, mask)
		e.want(refG, err)
		st, tt := e.up(student), e.up(teacher)
		what := name("kl %v T=%g mask=%q close=%v weight=%g", c.shape, c.temp, c.mask, c.close, c.weight)
		v1, v2 := e.lossGrad(what, refG, c.weight, e.tol.F32, func(g kernels.Tensor) float64 {
			v, err := lg.KLDivergence(g, st, tt, c.temp, mask, c.weight)
			e.must(what, err)
			return v
		})
		e.lossValue(what, v1, refV, e.tol.F32)
		if v2 != v1 {
			e.Errorf("%s: the value changed with the gradient buffer's contents: %.17g then %.17g", what, v1, v2)
		}
		v, err := lg.KLDivergence(nil, st, tt, c.temp, mask, c.weight)
		e.must(what+" without a gradient", err)
		e.lossValue(what+" without a gradient", v, refV, e.tol.F32)
	}
}

func (s *suite) lossCE(e *env, lg kernels.LossGrad) {
	cases := []struct {
		shape   []int
		ignored float64 // fraction of labels −100
		scale   float64
		weight  float32
	}{
		{[]int{4, 51200}, 0.25, 5, 1},
		{[]int{2, 3, 51200}, 0.3, 5, 0.5},
		{[]int{6, 50257}, 0, 3, 1},
		{[]int{2, 6, 37}, 0.3, 2, 0.25},
		{[]int{5, 1000}, 0.2, 80, -2}, // logits up to 80: needs the max subtracted
		{[]int{1, 9}, 0, 1, 1},        // one row: it predicts nothing
		{[]int{4, 17}, 1, 1, 1},       // every label ignored
		{[]int{3, 1}, 0, 1, 1},        // one column: −log 1 = 0
	}
	for _, c := range cases {
		rows := lossRows(c.shape)
		vocab := c.shape[len(c.shape)-1]
		logits := e.rand(-c.scale, c.scale, c.shape...)
		labels := make([]int, rows)
		for i := range labels {
			labels[i] = e.rng.IntN(vocab)
			if e.rng.Float64() < c.ignored {
				labels[i] = reference.IgnoreLabel
			}
		}
		if c.ignored < 1 && rows > 1 {
			labels[1], labels[rows-1] = 0, vocab-1 // the first and last columns as targets
		}
		refV, refG, err := reference.CrossEntropy(logits, labels)
		e.want(refG, err)
		lt := e.up(logits)
		what := name("cross-entropy %v ignored=%g weight=%g", c.shape, c.ignored, c.weight)
		v1, v2 := e.lossGrad(what, refG, c.weight, e.tol.F32, func(g kernels.Tensor) float64 {
			v, err := lg.CrossEntropy(g, lt, labels, c.weight)
			e.must(what, err)
			return v
		})
		e.lossValue(what, v1, refV, e.tol.F32)
		if v2 != v1 {
			e.Errorf("%s: the value changed with the gradient buffer's contents: %.17g then %.17g", what, v1, v2)
		}
		v, err := lg.CrossEntropy(nil, lt, labels, c.weight)
		e.must(what+" without a gradient", err)
		e.lossValue(what+" without a gradient", v, refV, e.tol.F32)
	}
}

func (s *suite) lossDistance(e *env, lg kernels.LossGrad) {
	forms := []kernels.Distance{kernels.DistanceL2Norm, kernels.DistanceSquaredL2, kernels.DistanceMeanSquared}
	shapes := [][]int{{1, 7, 2560}, {3, 5}, {1}, {2, 300, 2561}}
	for _, form := range forms {
		for _, shape := range shapes {
			student := e.rand(-2, 2, shape...)
			teacher := e.rand(-2, 2, shape...)
			refV, refG, err := reference.LayerDistance(student, teacher, form)
			e.want(refG, err)
			st, tt := e.up(student), e.up(teacher)
			weight := float32(0.5 + e.rng.Float64())
			what := name("layer distance %d %v weight=%g", form, shape, weight)
			v1, _ := e.lossGrad(what, refG, weight, e.tol.F32, func(g kernels.Tensor) float64 {
				v, err := lg.LayerDistance(g, st, tt, form, weight)
				e.must(what, err)
				return v
			})
			e.lossValue(what, v1, refV, lossSumTol)
			v, err := lg.LayerDistance(nil, st, tt, form, weight)
			e.must(what+" without a gradient", err)
			e.lossValue(what+" without a gradient", v, refV, lossSumTol)
		}
		// At zero distance the value is 0 and the gradient 0 (the 2-norm's
		// too, not NaN): the buffer keeps its bits.
		a := e.rand(-1, 1, 4, 9)
		pre := e.rand(-1, 1, 4, 9)
		g := e.up(pre)
		v, err := lg.LayerDistance(g, e.up(a), e.up(a), form, 1)
		e.must("layer distance at zero", err)
		if v != 0 {
			e.Errorf("layer distance %d at zero distance: %g, want 0", form, v)
		}
		e.exact(name("layer distance %d at zero distance: gradient unchanged", form), e.down(g), pre)
	}
}

func (s *suite) lossSumSquares(e *env, lg kernels.LossGrad) {
	for _, shape := range [][]int{{1}, {3, 7}, {1000}, {1<<20 + 17}, {2, 2560, 80}} {
		a := e.rand(-3, 3, shape...)
		v, err := lg.SumSquares(e.up(a))
		e.must("sumsquares", err)
		e.lossValue(name("sumsquares %v", shape), v, reference.SumSquares(a), lossSumTol)
	}
	v, err := lg.SumSquares(e.up(reference.New(5, 5)))
	e.must("sumsquares of zeros", err)
	if v != 0 {
		e.Errorf("sumsquares of zeros: %g", v)
	}
}

// lossAdamW runs three updates on the backend and optim.AdamW side by side
// (the same float32 values, gradients and learning rates) and requires
// equal bits after each: values, moments and the bf16 shadow.
func (s *suite) lossAdamW(e *env, lg kernels.LossGrad) {
	cases := []struct {
		n      int
		decay  bool
		shadow bool
		scale  float64
	}{
		{1, true, false, 1},
		{1000, false, true, 1},
		{70001, true, true, 1},
		{4097, true, true, 0.37},
		{333, false, false, 0.011},
	}
	for _, c := range cases {
		what := name("adamw n=%d decay=%v shadow=%v scale=%g", c.n, c.decay, c.shadow, c.scale)
		opt := &optim.AdamW{LR: 2e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01, Workers: 1}
		host := e.rand(-1, 1, c.n).Float32()
		shape := []int{c.n}
		if c.n > 1000 {
			shape = []int{1, c.n}
		}
		param := e.upF32(host, shape...)
		m := e.up(reference.New(shape...))
		v := e.up(reference.New(shape...))
		var shadow kernels.Tensor
		if c.shadow {
			bits := make([]uint16, c.n)
			for i := range bits {
				bits[i] = 0x7FC0 // NaN: must be overwritten
			}
			st, err := e.be.UploadBF16(bits, shape...)
			e.must("upload shadow", err)
			e.Cleanup(func() { e.be.Free(st) })
			shadow = st
		}
		hm, hv := make([]float32, c.n), make([]float32, c.n)
		for step := int64(1); step <= 3; step++ {
			grad := e.rand(-0.2, 0.2, c.n).Float32()
			grad[0] = 0 // a zero gradient: m and v decay, the denominator is ε
			if c.n > 2 {
				grad[1] = 3e-5 // a small one: ε matters
			}
			lr := opt.LR * (1 - 0.2*float64(step-1)) // a schedule
			st := kernels.AdamWStep{LR: lr, Beta1: opt.Beta1, Beta2: opt.Beta2, Eps: opt.Eps, WeightDecay: opt.WeightDecay, Step: step, GradScale: c.scale}
			gt := e.upF32(grad, shape...)
			before := e.down(param)
			e.must(what, lg.AdamW(param, gt, m, v, shadow, c.decay, st))

			// The float64 reference, from the same float32 state.
			refP, _, _, err := reference.AdamW(before, e.down(gt), arrayOf(hm, shape), arrayOf(hv, shape), c.decay, st)
			e.want(refP, err)

			// optim: the gradient scaled as ClipGlobalNorm scales it.
			scaled := make([]float32, c.n)
			for i, g := range grad {
				scaled[i] = float32(float64(g) * c.scale)
			}
			e.must("optim step", opt.Step([]optim.Param{{Name: "p", Data: host, Grad: scaled, Decay: c.decay}}, lr))
			hm, hv = lossAdamWMoments(hm, hv, scaled, opt)

			gotP := e.down(param)
			e.check(name("%s step %d vs the float64 reference", what, step), gotP, refP, e.tol.F32)
			e.exact(name("%s step %d: values equal optim's", what, step), gotP, arrayOf(host, shape))
			e.exact(name("%s step %d: m equals optim's", what, step), e.down(m), arrayOf(hm, shape))
			e.exact(name("%s step %d: v equals optim's", what, step), e.down(v), arrayOf(hv, shape))
			e.exact(name("%s step %d: the gradient is read, not changed", what, step), e.down(gt), arrayOf(grad, shape))
			if c.shadow {
				want := reference.New(shape...)
				for i, p := range host {
					want.Data[i] = reference.BF16Value(reference.BF16Bits(float64(p)))
				}
				e.exact(name("%s step %d: shadow = bf16(values)", what, step), e.down(shadow), want)
			}
		}
	}
}

// lossAdamWMoments advances host copies of AdamW's moments by one update
// with optim's arithmetic (optim keeps its own private): m and v are
// stored as float32 from float64 sums, each product rounded (no fused
// multiply-add).
func lossAdamWMoments(m, v, grad []float32, o *optim.AdamW) ([]float32, []float32) {
	for i, g32 := range grad {
		g := float64(g32)
		m[i] = float32(float64(o.Beta1*float64(m[i])) + float64((1-o.Beta1)*g))
		v[i] = float32(float64(o.Beta2*float64(v[i])) + float64(float64((1-o.Beta2)*g)*g))
	}
	return m, v
}

// lossDeterministic repeats each loss at a full vocabulary, and the float64
// sums over many elements: the same call must give the same bits.
func (s *suite) lossDeterministic(e *env, lg kernels.LossGrad) {
	student := e.rand(-6, 6, 5, 51200)
	teacher := e.rand(-6, 6, 5, 51200)
	st, tt := e.up(student), e.up(teacher)
	labels := []int{3, 51199, reference.IgnoreLabel, 7, 0}
	big := e.up(e.rand(-1, 1, 3<<20))
	bigT := e.up(e.rand(-1, 1, 3<<20))
	var values [2][4]float64
	var grads [2][3]*reference.Array
	for k := range 2 {
		g := [3]kernels.Tensor{e.up(reference.New(5, 51200)), e.up(reference.New(5, 51200)), e.up(reference.New(3 << 20))}
		var err error
		values[k][0], err = lg.KLDivergence(g[0], st, tt, 1.5, nil, 1)
		e.must("kl", err)
		values[k][1], err = lg.CrossEntropy(g[1], st, labels, 1)
		e.must("cross-entropy", err)
		values[k][2], err = lg.LayerDistance(g[2], big, bigT, kernels.DistanceL2Norm, 1)
		e.must("layer distance", err)
		values[k][3], err = lg.SumSquares(big)
		e.must("sumsquares", err)
		for i := range g {
			grads[k][i] = e.down(g[i])
		}
	}
	for i, what := range []string{"kl", "cross-entropy", "layer distance", "sumsquares"} {
		if values[0][i] != values[1][i] {
			e.Errorf("%s: two identical calls gave %.17g and %.17g", what, values[0][i], values[1][i])
		}
		if i < 3 {
			e.exact(what+": gradient of the second call equals the first's", grads[1][i], grads[0][i])
		}
	}
}

// lossNonFinite: a NaN or ±Inf where a loss reads it is an error, not a
// NaN value passed on.
func (s *suite) lossNonFinite(e *env, lg kernels.LossGrad) {
	bad := func(v float64, shape []int, at int) *reference.Array {
		a := e.rand(-1, 1, shape...)
		a.Data[at] = v
		return a
	}
	good := e.up(e.rand(-1, 1, 3, 40))
	g := e.up(reference.New(3, 40))
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		b := e.up(bad(v, []int{3, 40}, 45))
		e.fails(name("kl with %g in the student", v), func() error {
			_, err := lg.KLDivergence(g, b, good, 1, nil, 1)
			return err
		})
		if !math.IsInf(v, -1) { // −Inf in the teacher is a probability of 0
			e.fails(name("kl with %g in the teacher", v), func() error {
				_, err := lg.KLDivergence(g, good, b, 1, nil, 1)
				return err
			})
		}
		if !math.IsInf(v, -1) { // −Inf off the target is a probability of 0
			e.fails(name("cross-entropy with %g in a counted row", v), func() error {
				_, err := lg.CrossEntropy(g, b, []int{0, 5, 6}, 1)
				return err
			})
		}
		e.fails(name("layer distance with %g", v), func() error {
			_, err := lg.LayerDistance(g, b, good, kernels.DistanceL2Norm, 1)
			return err
		})
		e.fails(name("sumsquares with %g", v), func() error {
			_, err := lg.SumSquares(b)
			return err
		})
	}
}

func (s *suite) lossErrors(e *env, lg kernels.LossGrad) {
	a := e.up(e.rand(-1, 1, 3, 8))
	g := e.up(reference.New(3, 8))
	other := e.up(e.rand(-1, 1, 4, 8))
	bf := e.upBF16(e.rand(-1, 1, 3, 8))
	kl := func(g, s, t kernels.Tensor, temp float64, mask []bool) func() error {
		return func() error { _, err := lg.KLDivergence(g, s, t, temp, mask, 1); return err }
	}
	e.fails("kl teacher of another shape", kl(g, a, other, 1, nil))
	e.fails("kl gradient of another shape", kl(other, a, a, 1, nil))
	e.fails("kl mask length", kl(g, a, a, 1, []bool{true, false}))
	e.fails("kl temperature 0", kl(g, a, a, 0, nil))
	e.fails("kl temperature NaN", kl(g, a, a, math.NaN(), nil))
	e.fails("kl temperature +Inf", kl(g, a, a, math.Inf(1), nil))
	e.fails("kl bf16 gradient", kl(bf, a, a, 1, nil))
	ce := func(g, x kernels.Tensor, labels []int) func() error {
		return func() error { _, err := lg.CrossEntropy(g, x, labels, 1); return err }
	}
	e.fails("cross-entropy label count", ce(g, a, []int{1, 2}))
	e.fails("cross-entropy label = vocab", ce(g, a, []int{1, 8, 2}))
	e.fails("cross-entropy label −1", ce(g, a, []int{1, -1, 2}))
	e.fails("cross-entropy label −101", ce(g, a, []int{1, 2, -101}))
	e.fails("cross-entropy bad label at position 0", ce(g, a, []int{99, 2, 3}))
	e.fails("cross-entropy gradient of another shape", ce(other, a, []int{1, 2, 3}))
	dist := func(g, s, t kernels.Tensor, form kernels.Distance) func() error {
		return func() error { _, err := lg.LayerDistance(g, s, t, form, 1); return err }
	}
	e.fails("layer distance shapes", dist(g, a, other, kernels.DistanceL2Norm))
	e.fails("layer distance gradient shape", dist(other, a, a, kernels.DistanceL2Norm))
	e.fails("layer distance unknown form", dist(g, a, a, kernels.Distance(7)))
	e.fails("sumsquares of nil", func() error { _, err := lg.SumSquares(nil); return err })

	ok := kernels.AdamWStep{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01, Step: 1, GradScale: 1}
	adam := func(p, g, m, v, sh kernels.Tensor, st kernels.AdamWStep) func() error {
		return func() error { return lg.AdamW(p, g, m, v, sh, true, st) }
	}
	m, v := e.up(reference.New(3, 8)), e.up(reference.New(3, 8))
	for _, bad := range []struct {
		what string
		set  func(*kernels.AdamWStep)
	}{
		{"negative lr", func(s *kernels.AdamWStep) { s.LR = -1e-3 }},
		{"NaN lr", func(s *kernels.AdamWStep) { s.LR = math.NaN() }},
		{"beta1 = 1", func(s *kernels.AdamWStep) { s.Beta1 = 1 }},
		{"beta2 < 0", func(s *kernels.AdamWStep) { s.Beta2 = -0.1 }},
		{"eps +Inf", func(s *kernels.AdamWStep) { s.Eps = math.Inf(1) }},
		{"negative weight decay", func(s *kernels.AdamWStep) { s.WeightDecay = -1 }},
		{"step 0", func(s *kernels.AdamWStep) { s.Step = 0 }},
		{"gradient scale 0", func(s *kernels.AdamWStep) { s.GradScale = 0 }},
		{"gradient scale NaN", func(s *kernels.AdamWStep) { s.GradScale = math.NaN() }},
	} {
		st := ok
		bad.set(&st)
		e.fails("adamw "+bad.what, adam(a, g, m, v, nil, st))
	}
	e.fails("adamw gradient of another shape", adam(a, other, m, v, nil, ok))
	e.fails("adamw moments of another shape", adam(a, g, other, v, nil, ok))
	e.fails("adamw f32 shadow", adam(a, g, m, v, g, ok))
	e.fails("adamw shadow of another shape", adam(a, g, m, v, e.upBF16(e.rand(-1, 1, 4, 8)), ok))
	e.fails("adamw bf16 values", adam(bf, g, m, v, nil, ok))
}

// upF32 uploads float32 values as an F32 tensor of the given shape.
func (e *env) upF32(host []float32, shape ...int) kernels.Tensor {
	e.Helper()
	t, err := e.be.Upload(host, kernels.F32, shape...)
	if err != nil {
		e.Fatalf("upload %v: %v", shape, err)
	}
	e.Cleanup(func() { e.be.Free(t) })
	return t
}

// arrayOf wraps float32 values as an Array of the given shape.
func arrayOf(host []float32, shape []int) *reference.Array {
	a := reference.New(shape...)
	for i, v := range host {
		a.Data[i] = float64(v)
	}
	return a
}
