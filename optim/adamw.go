package optim

import (
	"fmt"
	"math"
)

// AdamW is torch.optim.AdamW for float32 master weights. For every element,
// at update t (counting from 1) with learning rate lr:
//
//	θ ← θ·(1 − lr·wd)                 (only when the parameter's Decay is set)
//	m ← β1·m + (1 − β1)·g
//	v ← β2·v + (1 − β2)·g²
//	θ ← θ − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
//
// m and v are stored as float32, like PyTorch's state for float32 weights;
// each element's arithmetic is carried out in float64 from the stored
// float32 values and the new θ is rounded to float32 once. The bias
// corrections are float64, as in PyTorch (a Python float).
//
// The zero value is not usable: set the hyperparameters (Recipe gives the
// MaTVLM ones). The moments are created on the first Step for the
// parameters it is given; every later Step must pass the same parameters,
// in the same order, with the same lengths and Decay flags.
type AdamW struct {
	// LR is the peak learning rate, the one schedules scale. Step applies
	// the rate it is given; LR is kept with the saved state for reference.
	LR          float64
	Beta1       float64
	Beta2       float64
	Eps         float64
	WeightDecay float64 // applied to parameters whose Decay is set
	// Workers bounds the goroutines of a Step (0: GOMAXPROCS). It does not
	// change results.
	Workers int

	steps int64
	state []moments
}

// moments is one parameter's optimiser state.
type moments struct {
	name  string
	decay bool
	m, v  []float32
}

// Recipe is the MaTVLM reference optimiser: AdamW, lr 2e-4, betas
// (0.9, 0.95), PyTorch's default eps 1e-8, weight decay 0.01 (on matrices
// only, through Param.Decay).
func Recipe() *AdamW {
	return &AdamW{LR: 2e-4, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01}
}

// Steps is the number of updates made so far (restored by Load).
func (o *AdamW) Steps() int64 { return o.steps }

// validate reports hyperparameters PyTorch would reject, and non-finite ones.
func (o *AdamW) validate() error {
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case !finite(o.LR) || o.LR < 0:
		return fmt.Errorf("adamw: learning rate %g is not a non-negative finite number", o.LR)
	case !(o.Beta1 >= 0 && o.Beta1 < 1):
		return fmt.Errorf("adamw: beta1 %g is outside [0, 1)", o.Beta1)
	case !(o.Beta2 >= 0 && o.Beta2 < 1):
		return fmt.Errorf("adamw: beta2 %g is outside [0, 1)", o.Beta2)
	case !finite(o.Eps) || o.Eps < 0:
		return fmt.Errorf("adamw: eps %g is not a non-negative finite number", o.Eps)
	case !finite(o.WeightDecay) || o.WeightDecay < 0:
		return fmt.Errorf("adamw: weight decay %g is not a non-negative finite number", o.WeightDecay)
	}
	return nil
}

// matches reports whether params are the ones the state was made for.
func (o *AdamW) matches(params []Param) error {
	if len(params) != len(o.state) {
		return fmt.Errorf("adamw: state holds %d parameters, step got %d", len(o.state), len(params))
	}
	for i, p := range params {
		s := &o.state[i]
		switch {
		case p.Name != s.name:
			return fmt.Errorf("adamw: parameter %d is %s, the state holds %s there", i, p.Name, s.name)
		case len(p.Data) != len(s.m):
			return fmt.Errorf("adamw: parameter %s has %d values, its state %d", p.Name, len(p.Data), len(s.m))
		case p.Decay != s.decay:
			return fmt.Errorf("adamw: parameter %s: weight decay %v, the state was made with %v", p.Name, p.Decay, s.decay)
		}
	}
	return nil
}

// Step applies one AdamW update with learning rate lr to every parameter
// from its gradient. Gradients are read, not cleared. On error nothing has
// changed.
func (o *AdamW) Step(params []Param, lr float64) error {
	if err := o.validate(); err != nil {
		return err
	}
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 {
		return fmt.Errorf("adamw: step %d: learning rate %g is not a non-negative finite number", o.steps+1, lr)
	}
	if err := checkParams(params); err != nil {
		return fmt.Errorf("adamw: %w", err)
	}
	if o.state == nil {
		o.state = make([]moments, len(params))
		for i, p := range params {
			o.state[i] = moments{name: p.Name, decay: p.Decay, m: make([]float32, len(p.Data)), v: make([]float32, len(p.Data))}
		}
	} else if err := o.matches(params); err != nil {
		return err
	}

	o.steps++
	t := float64(o.steps)
	u := update{
		beta1:     o.Beta1,
		beta2:     o.Beta2,
		eps:       o.Eps,
		stepSize:  lr / (1 - math.Pow(o.Beta1, t)),
		bc2Sqrt:   math.Sqrt(1 - math.Pow(o.Beta2, t)),
		decayKeep: 1 - lr*o.WeightDecay,
	}
	forChunks(chunksOf(params), o.Workers, func(_ int, c chunk) {
		p, s := &params[c.param], &o.state[c.param]
		keep := 1.0
		if p.Decay {
			keep = u.decayKeep
		}
		u.apply(p.Data[c.lo:c.hi], p.Grad[c.lo:c.hi], s.m[c.lo:c.hi], s.v[c.lo:c.hi], keep)
	})
	return nil
}

// update holds the scalars of one step.
type update struct {
	beta1, beta2, eps float64
	stepSize          float64 // lr / (1 − β1ᵗ)
	bc2Sqrt           float64 // √(1 − β2ᵗ)
	decayKeep         float64 // 1 − lr·wd
}

// apply updates one range of a parameter; keep is 1 − lr·wd, or 1 without
// decay.
func (u update) apply(data, grad, m, v []float32, keep float64) {
	grad, m, v = grad[:len(data)], m[:len(data)], v[:len(data)]
	b1, b2 := u.beta1, u.beta2
	a1, a2 := 1-b1, 1-b2
	for i := range data {
		g := float64(grad[i])
		// The explicit conversions forbid fused multiply-adds (Go fuses
		// x*y + z on arm64 and GOAMD64=v3), so every build rounds each
		// product as the device backends do (kernels.LossGrad's AdamW).
		mi := float32(float64(b1*float64(m[i])) + float64(a1*g))
		vi := float32(float64(b2*float64(v[i])) + float64(a2*g*g))
		m[i], v[i] = mi, vi
		denom := math.Sqrt(float64(vi))/u.bc2Sqrt + u.eps
		data[i] = float32(float64(float64(data[i])*keep) - u.stepSize*float64(mi)/denom)
	}
}
