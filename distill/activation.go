package distill

import "math"

// Scalar activations and their derivatives, in float64.

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// silu is x·σ(x).
func silu(x float64) float64 { return x * sigmoid(x) }

// siluGrad is d silu/dx = σ(x)·(1 + x·(1−σ(x))).
func siluGrad(x float64) float64 {
	s := sigmoid(x)
	return s * (1 + x*(1-s))
}

// softplusThreshold is PyTorch's: past it softplus(x) is x.
const softplusThreshold = 20

// softplus is log(1+eˣ), x itself past the threshold.
func softplus(x float64) float64 {
	if x > softplusThreshold {
		return x
	}
	return math.Log1p(math.Exp(x))
}

// softplusGrad is σ(x), 1 past the threshold (the derivative of the
// function as computed).
func softplusGrad(x float64) float64 {
	if x > softplusThreshold {
		return 1
	}
	return sigmoid(x)
}

// geluKind selects the GELU form.
type geluKind uint8

const (
	geluErf  geluKind = iota // exact: x/2·(1+erf(x/√2)) (torch "gelu")
	geluTanh                 // x/2·(1+tanh(√(2/π)·(x+0.044715x³))) ("gelu_new", "gelu_pytorch_tanh")
)

const (
	sqrt2OverPi = 0.7978845608028654 // √(2/π)
	geluCubic   = 0.044715
	invSqrt2Pi  = 0.3989422804014327 // 1/√(2π)
)

func gelu(kind geluKind, x float64) float64 {
	if kind == geluTanh {
		return 0.5 * x * (1 + math.Tanh(sqrt2OverPi*(x+geluCubic*x*x*x)))
	}
	return 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
}

func geluGrad(kind geluKind, x float64) float64 {
	if kind == geluTanh {
		t := math.Tanh(sqrt2OverPi * (x + geluCubic*x*x*x))
		return 0.5*(1+t) + 0.5*x*(1-t*t)*sqrt2OverPi*(1+3*geluCubic*x*x)
	}
	return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*invSqrt2Pi*math.Exp(-0.5*x*x)
}

// geluForward writes y = gelu(x) elementwise (y may be x).
func geluForward(p *pool, kind geluKind, y, x []float32) {
	p.rows(len(x), 1<<13, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			y[i] = float32(gelu(kind, float64(x[i])))
		}
	})
}

// geluBackward writes dx = dy·gelu′(x), x being the GELU's input (dx may
// be dy).
func geluBackward(p *pool, kind geluKind, dx, dy, x []float32) {
	p.rows(len(x), 1<<13, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			dx[i] = float32(float64(dy[i]) * geluGrad(kind, float64(x[i])))
		}
	})
}

// swigluForward writes out[n, inter] = silu(gate)·up from gu[n, 2·inter],
// the fused gate | up projection of a Llama/Qwen2 MLP.
func swigluForward(p *pool, out, gu []float32, n, inter int) {
	p.rows(n, grainFor(inter), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			g, u, o := gu[2*r*inter:(2*r+1)*inter], gu[(2*r+1)*inter:(2*r+2)*inter], out[r*inter:(r+1)*inter]
			for j := range o {
				o[j] = float32(silu(float64(g[j])) * float64(u[j]))
			}
		}
	})
}

// swigluBackward writes dgu[n, 2·inter] (gate | up) from dout and the
// forward's gu.
func swigluBackward(p *pool, dgu, dout, gu []float32, n, inter int) {
	p.rows(n, grainFor(inter), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			g, u := gu[2*r*inter:(2*r+1)*inter], gu[(2*r+1)*inter:(2*r+2)*inter]
			dg, du := dgu[2*r*inter:(2*r+1)*inter], dgu[(2*r+1)*inter:(2*r+2)*inter]
			do := dout[r*inter : (r+1)*inter]
			for j := range do {
				gv := float64(g[j])
				dg[j] = float32(float64(do[j]) * float64(u[j]) * siluGrad(gv))
				du[j] = float32(float64(do[j]) * silu(gv))
			}
		}
	})
}
