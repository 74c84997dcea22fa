package optim

import (
	"errors"
	"fmt"
	"math"
)

// ErrNonFinite is wrapped by the error GlobalNorm and ClipGlobalNorm return
// when a gradient holds NaN or ±Inf.
var ErrNonFinite = errors.New("non-finite gradient")

// clipEps is added to the norm before dividing, as in
// torch.nn.utils.clip_grad_norm_.
const clipEps = 1e-6

// GlobalNorm is the 2-norm of all gradients taken together, as if they were
// one vector. Squares are summed in float64 per fixed chunk and the chunk
// sums added in order, so the result does not depend on the number of
// workers. A NaN or ±Inf gradient gives an error wrapping ErrNonFinite that
// names the first parameter and element holding one.
func GlobalNorm(params []Param) (float64, error) {
	if err := checkParams(params); err != nil {
		return 0, err
	}
	cs := chunksOf(params)
	partial := make([]float64, len(cs))
	forChunks(cs, 0, func(k int, c chunk) {
		partial[k] = sumSquares(params[c.param].Grad[c.lo:c.hi])
	})
	var total float64
	for _, s := range partial {
		total += s
	}
	// A sum of float32 squares cannot overflow float64: only a NaN or an
	// infinite element makes it non-finite.
	if math.IsNaN(total) || math.IsInf(total, 0) {
		return total, nonFinite(params)
	}
	return math.Sqrt(total), nil
}

// ClipGlobalNorm scales all gradients by maxNorm/(norm+1e-6) when that
// factor is below 1 — torch.nn.utils.clip_grad_norm_'s rule — and returns
// the norm measured before clipping. maxNorm must be positive and finite.
// With a NaN or ±Inf gradient it changes nothing and returns an error
// wrapping ErrNonFinite (torch would scale every gradient by NaN).
func ClipGlobalNorm(params []Param, maxNorm float64) (float64, error) {
	if !(maxNorm > 0) || math.IsInf(maxNorm, 0) {
		return 0, fmt.Errorf("clip gradients: max norm %g is not a positive finite number", maxNorm)
	}
	norm, err := GlobalNorm(params)
	if err != nil {
		return norm, fmt.Errorf("clip gradients: %w", err)
	}
	coef := maxNorm / (norm + clipEps)
	if coef >= 1 {
		return norm, nil
	}
	forChunks(chunksOf(params), 0, func(_ int, c chunk) {
		g := params[c.param].Grad[c.lo:c.hi]
		for i, v := range g {
			g[i] = float32(float64(v) * coef)
		}
	})
	return norm, nil
}

// sumSquares is Σ g² in float64, over four interleaved accumulators added
// in a fixed order.
func sumSquares(g []float32) float64 {
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(g); i += 4 {
		a, b, c, d := float64(g[i]), float64(g[i+1]), float64(g[i+2]), float64(g[i+3])
		s0 += a * a
		s1 += b * b
		s2 += c * c
		s3 += d * d
	}
	for ; i < len(g); i++ {
		a := float64(g[i])
		s0 += a * a
	}
	return (s0 + s1) + (s2 + s3)
}

// nonFinite names the first NaN or infinite gradient element.
func nonFinite(params []Param) error {
	for _, p := range params {
		for i, v := range p.Grad {
			if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
				return fmt.Errorf("parameter %s: gradient element %d is %g: %w", p.Name, i, v, ErrNonFinite)
			}
		}
	}
	return ErrNonFinite
}
