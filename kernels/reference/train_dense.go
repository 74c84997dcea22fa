package reference

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// References of kernels.DenseGrad (kernels/train.go): the backward passes
// of the dense, attention and layout operations, and residual dropout.
// Like the forward references they are plain float64 loops that return
// new Arrays and check shapes; the tests of train_dense_test.go hold each
// backward against central finite differences of its forward reference.

// MatMulAT returns aᵀ·b, [m, n], for a [..., m] and b [..., n] whose
// leading dimensions, flattened, are the same k: the weight gradient
// dW = dYᵀ·X of a Linear.
func MatMulAT(a, b *Array) (*Array, error) {
	k, m, err := lastDim(a, "matmulat a")
	if err != nil {
		return nil, err
	}
	kb, n, err := lastDim(b, "matmulat b")
	if err != nil {
		return nil, err
	}
	if k != kb {
		return nil, fmt.Errorf("matmulat: a %v has %d rows, b %v has %d", a.Shape, k, b.Shape, kb)
	}
	out := New(m, n)
	for p := range k {
		ar, br := a.Data[p*m:(p+1)*m], b.Data[p*n:(p+1)*n]
		for i, av := range ar {
			o := out.Data[i*n : (i+1)*n]
			for j, bv := range br {
				o[j] += av * bv
			}
		}
	}
	return out, nil
}

// SumRows returns out[n] = Σ_r a[r, n] over the rows of a [..., n]
// (leading dimensions flattened): a bias gradient.
func SumRows(a *Array) (*Array, error) {
	rows, n, err := lastDim(a, "sumrows a")
	if err != nil {
		return nil, err
	}
	out := New(n)
	for r := range rows {
		for j, v := range a.Data[r*n : (r+1)*n] {
			out.Data[j] += v
		}
	}
	return out, nil
}

// elementwiseGrad returns dy·f'(x) elementwise over equal shapes.
func elementwiseGrad(what string, dy, x *Array, deriv func(float64) float64) (*Array, error) {
	if dy == nil || x == nil {
		return nil, fmt.Errorf("%s: nil operand", what)
	}
	if !slices.Equal(dy.Shape, x.Shape) {
		return nil, fmt.Errorf("%s: dy %v and x %v differ in shape", what, dy.Shape, x.Shape)
	}
	out := x.Clone()
	for i, v := range x.Data {
		out.Data[i] = dy.Data[i] * deriv(v)
	}
	return out, nil
}

// SiLUGradValue is d silu/dx = σ(x)·(1 + x·(1 − σ(x))).
func SiLUGradValue(x float64) float64 {
	s := Sigmoid(x)
	return s * (1 + x*(1-s))
}

// GELUErfGradValue is the derivative of the exact GELU:
// Φ(x) + x·φ(x) = ½(1 + erf(x/√2)) + x·e^(−x²/2)/√(2π).
func GELUErfGradValue(x float64) float64 {
	return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*math.Exp(-0.5*x*x)/math.Sqrt(2*math.Pi)
}

// GELUTanhGradValue is the derivative of the tanh form: with
// u = √(2/π)·(x + 0.044715·x³) and t = tanh u,
// ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²).
func GELUTanhGradValue(x float64) float64 {
	c := math.Sqrt(2 / math.Pi)
	t := math.Tanh(c * (x + 0.044715*x*x*x))
	return 0.5*(1+t) + 0.5*x*(1-t*t)*c*(1+3*0.044715*x*x)
}

// SiLUBackward returns dy·silu'(x).
func SiLUBackward(dy, x *Array) (*Array, error) {
	return elementwiseGrad("silubackward", dy, x, SiLUGradValue)
}

// GELUBackward returns dy·gelu'(x) for the exact (tanh=false) or tanh form.
func GELUBackward(dy, x *Array, tanh bool) (*Array, error) {
	if tanh {
		return elementwiseGrad("gelubackward", dy, x, GELUTanhGradValue)
	}
	return elementwiseGrad("gelubackward", dy, x, GELUErfGradValue)
}

// normGradOperands checks dy and x (equal shapes) and weight [last].
func normGradOperands(what string, dy, x, weight *Array) (rows, n int, err error) {
	rows, n, err = lastDim(x, what+" x")
	if err != nil {
		return 0, 0, err
	}
	if dy == nil || !slices.Equal(dy.Shape, x.Shape) {
		return 0, 0, fmt.Errorf("%s: dy %v and x %v differ in shape", what, shapeOf(dy), x.Shape)
	}
	if err := want(weight, what+" weight", n); err != nil {
		return 0, 0, err
	}
	return rows, n, nil
}

// LayerNormBackward returns dx, the gradient with respect to x of
// LayerNorm(x, weight, bias, eps) given dy (weight and bias frozen; the
// bias does not enter): with x̂ = (x − mean)·r, r = 1/√(var + eps) and
// g = dy·weight, dx = r·(g − mean(g) − x̂·mean(g·x̂)) per row.
func LayerNormBackward(dy, x, weight *Array, eps float64) (*Array, error) {
	rows, n, err := normGradOperands("layernormbackward", dy, x, weight)
	if err != nil {
		return nil, err
	}
	out := x.Clone()
	xhat := make([]float64, n)
	g := make([]float64, n)
	for r := range rows {
		row := x.Data[r*n : (r+1)*n]
		var mean float64
		for _, v := range row {
			mean += v
		}
		mean /= float64(n)
		var variance float64
		for _, v := range row {
			variance += (v - mean) * (v - mean)
		}
		variance /= float64(n)
		inv := 1 / math.Sqrt(variance+eps)
		var mg, mgx float64
		for j, v := range row {
			xhat[j] = (v - mean) * inv
			g[j] = dy.Data[r*n+j] * weight.Data[j]
			mg += g[j]
			mgx += g[j] * xhat[j]
		}
		mg /= float64(n)
		mgx /= float64(n)
		for j := range row {
			out.Data[r*n+j] = inv * (g[j] - mg - xhat[j]*mgx)
		}
	}
	return out, nil
}

// RMSNormBackward returns dx, the gradient with respect to x of
// RMSNorm(x, weight, eps) given dy (weight frozen): with
// r = 1/√(mean(x²) + eps), x̂ = x·r and g = dy·weight,
// dx = r·(g − x̂·mean(g·x̂)) per row.
func RMSNormBackward(dy, x, weight *Array, eps float64) (*Array, error) {
	rows, n, err := normGradOperands("rmsnormbackward", dy, x, weight)
	if err != nil {
		return nil, err
	}
	out := x.Clone()
	for r := range rows {
		row := x.Data[r*n : (r+1)*n]
		var ms float64
		for _, v := range row {
			ms += v * v
		}
		inv := 1 / math.Sqrt(ms/float64(n)+eps)
		var mgx float64
		for j, v := range row {
			mgx += dy.Data[r*n+j] * weight.Data[j] * v * inv
		}
		mgx /= float64(n)
		for j, v := range row {
			out.Data[r*n+j] = inv * (dy.Data[r*n+j]*weight.Data[j] - v*inv*mgx)
		}
	}
	return out, nil
}

// SoftmaxAttentionBackward returns the gradients of q [b,l,H,p] and of k
// and v [b,l,Hkv,p] of SoftmaxAttention(q, k, v, scale, causal) given
// dout [b,l,H,p]. Per query row t it materialises the probabilities P_s,
// then dP_s = dout_t·v_s, dS_s = P_s·(dP_s − Σ_s' P_s'·dP_s'),
// dq_t = scale·Σ_s dS_s·k_s, dk_s += scale·dS_s·q_t, dv_s += P_s·dout_t;
// a kv head's gradients sum over the query heads that read it (GQA).
func SoftmaxAttentionBackward(dout, q, k, v *Array, scale float64, causal bool) (dq, dk, dv *Array, err error) {
	nb, l, H, Hkv, p, err := checkAttention(q, k, v)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := want(dout, "attention backward dout", nb, l, H, p); err != nil {
		return nil, nil, nil, err
	}
	rep := H / Hkv
	dq, dk, dv = New(nb, l, H, p), New(nb, l, Hkv, p), New(nb, l, Hkv, p)
	P := make([]float64, l)
	dP := make([]float64, l)
	qi := func(b, t, h int) int { return ((b*l+t)*H + h) * p }
	ki := func(b, s, g int) int { return ((b*l+s)*Hkv + g) * p }
	for b := range nb {
		for h := range H {
			g := h / rep
			for t := range l {
				last := l - 1
				if causal {
					last = t
				}
				qt, dot := q.Data[qi(b, t, h):][:p], dout.Data[qi(b, t, h):][:p]
				maxv := math.Inf(-1)
				for s := 0; s <= last; s++ {
					var d float64
					for i, kv := range k.Data[ki(b, s, g):][:p] {
						d += qt[i] * kv
					}
					P[s] = scale * d
					maxv = max(maxv, P[s])
				}
				var sum float64
				for s := 0; s <= last; s++ {
					P[s] = math.Exp(P[s] - maxv)
					sum += P[s]
				}
				var D float64
				for s := 0; s <= last; s++ {
					P[s] /= sum
					var d float64
					for i, vv := range v.Data[ki(b, s, g):][:p] {
						d += dot[i] * vv
					}
					dP[s] = d
					D += P[s] * d
				}
				dqt := dq.Data[qi(b, t, h):][:p]
				for s := 0; s <= last; s++ {
					dS := P[s] * (dP[s] - D)
					ks, dks, dvs := k.Data[ki(b, s, g):][:p], dk.Data[ki(b, s, g):][:p], dv.Data[ki(b, s, g):][:p]
					for i := range p {
						dqt[i] += scale * dS * ks[i]
						dks[i] += scale * dS * qt[i]
						dvs[i] += P[s] * dot[i]
					}
				}
			}
		}
	}
	return dq, dk, dv, nil
}

// RoPEInverse returns x rotated by the negative of RoPE's angles with the
// same arguments: it undoes RoPE, and, the rotation being orthogonal, it
// is RoPE's backward applied to a gradient.
func RoPEInverse(x *Array, rotaryDim int, theta float64, pos0 int) (*Array, error) {
	if x == nil || len(x.Shape) != 4 {
		return nil, fmt.Errorf("ropeinverse x must be [batch, seqlen, heads, headdim], got %v", shapeOf(x))
	}
	nb, l, H, p := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	if rotaryDim <= 0 || rotaryDim%2 != 0 || rotaryDim > p {
		return nil, fmt.Errorf("ropeinverse: rotary dim %d must be even and in (0, %d]", rotaryDim, p)
	}
	if theta <= 0 {
		return nil, fmt.Errorf("ropeinverse: theta %g must be positive", theta)
	}
	half := rotaryDim / 2
	out := x.Clone()
	for b := range nb {
		for t := range l {
			pos := float64(pos0 + t)
			for h := range H {
				base := ((b*l+t)*H + h) * p
				for i := range half {
					ang := pos * math.Pow(theta, -2*float64(i)/float64(rotaryDim))
					c, s := math.Cos(ang), math.Sin(ang)
					x1, x2 := x.Data[base+i], x.Data[base+i+half]
					out.Data[base+i] = x1*c + x2*s
					out.Data[base+i+half] = x2*c - x1*s
				}
			}
		}
	}
	return out, nil
}

// SumHeads is RepeatHeads' backward: it returns out[rows, srcHeads·dim]
// whose head s is the sum of the heads s·r … s·r+r−1 of
// src[rows, heads·dim] (r = heads/srcHeads; rows = src.Len()/(heads·dim)).
func SumHeads(src *Array, srcHeads, heads, dim int) (*Array, error) {
	if src == nil {
		return nil, fmt.Errorf("sumheads: src is nil")
	}
	if srcHeads <= 0 || heads <= 0 || dim <= 0 || heads%srcHeads != 0 {
		return nil, fmt.Errorf("sumheads: heads %d not a positive multiple of srcHeads %d (dim %d)", heads, srcHeads, dim)
	}
	if src.Len()%(heads*dim) != 0 {
		return nil, fmt.Errorf("sumheads: src %v is not a whole number of rows of %d×%d", src.Shape, heads, dim)
	}
	rows := src.Len() / (heads * dim)
	rep := heads / srcHeads
	out := New(rows, srcHeads*dim)
	for r := range rows {
		for h := range heads {
			for d := range dim {
				out.Data[(r*srcHeads+h/rep)*dim+d] += src.Data[(r*heads+h)*dim+d]
			}
		}
	}
	return out, nil
}

// SetCols is SliceCols' backward: it returns a copy of dst[rows, dstCols]
// whose columns [col0, col0+cols) are replaced by src[rows, cols] (rows,
// the product of the leading dimensions, must agree).
func SetCols(dst, src *Array, col0 int) (*Array, error) {
	rows, dcols, err := lastDim(dst, "setcols dst")
	if err != nil {
		return nil, err
	}
	srows, cols, err := lastDim(src, "setcols src")
	if err != nil {
		return nil, err
	}
	if rows != srows {
		return nil, fmt.Errorf("setcols: dst %v has %d rows, src %v has %d", dst.Shape, rows, src.Shape, srows)
	}
	if col0 < 0 || col0+cols > dcols {
		return nil, fmt.Errorf("setcols: columns [%d,%d) outside [0,%d)", col0, col0+cols, dcols)
	}
	out := dst.Clone()
	for r := range rows {
		copy(out.Data[r*dcols+col0:r*dcols+col0+cols], src.Data[r*cols:(r+1)*cols])
	}
	return out, nil
}

// SplitMix64 is the finaliser of SplitMix64, a bijective 64-bit mixer:
// add 0x9e3779b97f4a7c15, then xor-shift-multiply by 0xbf58476d1ce4e5b9
// and 0x94d049bb133111eb with shifts 30, 27 and a final xor-shift 31.
func SplitMix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// checkDropProb refuses a drop probability outside [0, 1) (and NaN).
func checkDropProb(prob float64) error {
	if !(prob >= 0 && prob < 1) {
		return fmt.Errorf("dropout probability %g must be in [0, 1)", prob)
	}
	return nil
}

// DropoutKept returns the keep mask of Dropout over rows×cols elements,
// row-major: element (i, j) is kept when the j-th Uint64 of row i's
// stream — math/rand/v2's PCG seeded NewPCG(seed, SplitMix64(i)) —
// shifted right by 11 (a 53-bit fraction) is ≥ uint64(prob·2⁵³).
func DropoutKept(rows, cols int, seed uint64, prob float64) ([]bool, error) {
	if rows < 0 || cols < 0 {
		return nil, fmt.Errorf("dropout: %d rows of %d elements", rows, cols)
	}
	if err := checkDropProb(prob); err != nil {
		return nil, err
	}
	thr := uint64(prob * (1 << 53))
	kept := make([]bool, rows*cols)
	for i := range rows {
		src := rand.NewPCG(seed, SplitMix64(uint64(i)))
		for j := range cols {
			kept[i*cols+j] = src.Uint64()>>11 >= thr
		}
	}
	return kept, nil
}

// Dropout returns inverted dropout of x [..., d] (leading dimensions
// flattened into rows): x·1/(1−prob) where DropoutKept keeps the element,
// 0 elsewhere. The same call on a gradient is the backward.
func Dropout(x *Array, seed uint64, prob float64) (*Array, error) {
	rows, d, err := lastDim(x, "dropout x")
	if err != nil {
		return nil, err
	}
	kept, err := DropoutKept(rows, d, seed, prob)
	if err != nil {
		return nil, err
	}
	out := x.Clone()
	scale := 1 / (1 - prob)
	for i, k := range kept {
		if k {
			out.Data[i] *= scale
		} else {
			out.Data[i] = 0
		}
	}
	return out, nil
}
