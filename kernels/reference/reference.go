// Package reference holds plain float64 implementations of every operation
// of kernels.Backend: naive loops written straight from the formulas, slow
// and obviously correct. They are the yardstick of the conformance suite
// (package kernels/conformance) and of the golden tests; nothing here is
// meant to be fast.
//
// Every function takes its inputs as Arrays, checks their shapes, and
// returns a new Array (inputs are never modified). A shape mismatch is a
// returned error.
package reference

import (
	"fmt"
	"math"
	"slices"
)

// Array is a dense row-major float64 array.
type Array struct {
	Shape []int
	Data  []float64
}

// New returns a zero-filled Array of the given shape.
func New(shape ...int) *Array {
	return &Array{Shape: slices.Clone(shape), Data: make([]float64, product(shape))}
}

// FromData wraps data (not copied) as an Array of the given shape.
func FromData(data []float64, shape ...int) (*Array, error) {
	if n := product(shape); n != len(data) {
		return nil, fmt.Errorf("reference: shape %v holds %d elements, data has %d", shape, n, len(data))
	}
	return &Array{Shape: slices.Clone(shape), Data: data}, nil
}

// FromFloat32 copies float32 data into a new Array of the given shape.
func FromFloat32(data []float32, shape ...int) (*Array, error) {
	d := make([]float64, len(data))
	for i, v := range data {
		d[i] = float64(v)
	}
	return FromData(d, shape...)
}

// Len is the number of elements.
func (a *Array) Len() int { return len(a.Data) }

// Clone returns a deep copy.
func (a *Array) Clone() *Array {
	return &Array{Shape: slices.Clone(a.Shape), Data: slices.Clone(a.Data)}
}

// Reshape returns a copy of a with a new shape of the same element count.
func (a *Array) Reshape(shape ...int) (*Array, error) {
	if product(shape) != a.Len() {
		return nil, fmt.Errorf("reference: cannot reshape %v to %v", a.Shape, shape)
	}
	return &Array{Shape: slices.Clone(shape), Data: slices.Clone(a.Data)}, nil
}

// Float32 returns the elements rounded to float32.
func (a *Array) Float32() []float32 {
	out := make([]float32, len(a.Data))
	for i, v := range a.Data {
		out[i] = float32(v)
	}
	return out
}

func product(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// lastDim splits a shape into (rows, last): rows is the product of the
// leading dimensions.
func lastDim(a *Array, what string) (rows, last int, err error) {
	if a == nil {
		return 0, 0, fmt.Errorf("%s is nil", what)
	}
	if len(a.Shape) == 0 {
		return 0, 0, fmt.Errorf("%s is a scalar, want at least one dimension", what)
	}
	last = a.Shape[len(a.Shape)-1]
	if last == 0 {
		return 0, 0, fmt.Errorf("%s %v has an empty last dimension", what, a.Shape)
	}
	return a.Len() / last, last, nil
}

func want(a *Array, what string, shape ...int) error {
	if a == nil {
		return fmt.Errorf("%s is nil", what)
	}
	if !slices.Equal(a.Shape, shape) {
		return fmt.Errorf("%s has shape %v, want %v", what, a.Shape, shape)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Rounding helpers.

// RoundFloat32 returns a copy of a with every element rounded to float32.
func RoundFloat32(a *Array) *Array {
	out := a.Clone()
	for i, v := range out.Data {
		out.Data[i] = float64(float32(v))
	}
	return out
}

// BF16Bits rounds v to float32 and then to bfloat16, round to nearest even,
// returning the 16 bits. NaN stays NaN (quiet), ±Inf stays ±Inf, and finite
// values past the largest bf16 round to ±Inf as in PyTorch.
func BF16Bits(v float64) uint16 {
	f := float32(v)
	bits := math.Float32bits(f)
	if f != f { // NaN: keep sign, force a quiet mantissa bit
		return uint16(bits>>16) | 0x0040
	}
	upper := bits >> 16
	lower := bits & 0xFFFF
	switch {
	case lower > 0x8000, lower == 0x8000 && upper&1 == 1:
		upper++
	}
	return uint16(upper)
}

// BF16Value is the float64 value of bfloat16 bits.
func BF16Value(b uint16) float64 {
	return float64(math.Float32frombits(uint32(b) << 16))
}

// RoundBF16 returns a copy of a with every element rounded to bfloat16
// (through float32, nearest even): the reference of Convert to BF16.
func RoundBF16(a *Array) *Array {
	out := a.Clone()
	for i, v := range out.Data {
		out.Data[i] = BF16Value(BF16Bits(v))
	}
	return out
}

// ---------------------------------------------------------------------------
// Linear algebra.

// MatMul returns a[..., k] · bᵀ when transB (b is [n, k]) or a[..., k] · b
// (b is [k, n]); the leading dimensions of a are kept.
func MatMul(a, b *Array, transB bool) (*Array, error) {
	m, k, err := lastDim(a, "matmul a")
	if err != nil {
		return nil, err
	}
	if b == nil || len(b.Shape) != 2 {
		return nil, fmt.Errorf("matmul b must be 2-D, got %v", shapeOf(b))
	}
	var n int
	if transB {
		if b.Shape[1] != k {
			return nil, fmt.Errorf("matmul: a %v and bᵀ of b %v: inner dimensions differ", a.Shape, b.Shape)
		}
		n = b.Shape[0]
	} else {
		if b.Shape[0] != k {
			return nil, fmt.Errorf("matmul: a %v and b %v: inner dimensions differ", a.Shape, b.Shape)
		}
		n = b.Shape[1]
	}
	shape := append(slices.Clone(a.Shape[:len(a.Shape)-1]), n)
	out := New(shape...)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var bv float64
				if transB {
					bv = b.Data[j*k+p]
				} else {
					bv = b.Data[p*n+j]
				}
				s += a.Data[i*k+p] * bv
			}
			out.Data[i*n+j] = s
		}
	}
	return out, nil
}

func shapeOf(a *Array) any {
	if a == nil {
		return "nil"
	}
	return a.Shape
}

// AddBias returns x[..., n] + bias[n] broadcast over the rows.
func AddBias(x, bias *Array) (*Array, error) {
	rows, n, err := lastDim(x, "addbias x")
	if err != nil {
		return nil, err
	}
	if err := want(bias, "addbias bias", n); err != nil {
		return nil, err
	}
	out := x.Clone()
	for r := 0; r < rows; r++ {
		for j := 0; j < n; j++ {
			out.Data[r*n+j] += bias.Data[j]
		}
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Elementwise.

func binary(what string, a, b *Array, f func(x, y float64) float64) (*Array, error) {
	if a == nil || b == nil {
		return nil, fmt.Errorf("%s: nil operand", what)
	}
	if !slices.Equal(a.Shape, b.Shape) {
		return nil, fmt.Errorf("%s: shapes %v and %v differ", what, a.Shape, b.Shape)
	}
	out := a.Clone()
	for i := range out.Data {
		out.Data[i] = f(a.Data[i], b.Data[i])
	}
	return out, nil
}

func unary(a *Array, f func(x float64) float64) *Array {
	out := a.Clone()
	for i, v := range out.Data {
		out.Data[i] = f(v)
	}
	return out
}

// Add returns a + b.
func Add(a, b *Array) (*Array, error) {
	return binary("add", a, b, func(x, y float64) float64 { return x + y })
}

// Mul returns a · b elementwise.
func Mul(a, b *Array) (*Array, error) {
	return binary("mul", a, b, func(x, y float64) float64 { return x * y })
}

// Scale returns s·a.
func Scale(a *Array, s float64) *Array {
	return unary(a, func(x float64) float64 { return s * x })
}

// Sigmoid is 1/(1+e^−x).
func Sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// SiLUValue is x·σ(x).
func SiLUValue(x float64) float64 { return x * Sigmoid(x) }

// SiLU returns x·σ(x) elementwise.
func SiLU(a *Array) *Array { return unary(a, SiLUValue) }

// GELUErfValue is the exact GELU x/2·(1+erf(x/√2)).
func GELUErfValue(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }

// GELUTanhValue is the tanh approximation
// x/2·(1+tanh(√(2/π)·(x+0.044715·x³))).
func GELUTanhValue(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

// GELU returns GELU(a) in the exact (tanh=false) or tanh form.
func GELU(a *Array, tanh bool) *Array {
	if tanh {
		return unary(a, GELUTanhValue)
	}
	return unary(a, GELUErfValue)
}

// SoftplusValue is log(1+eˣ), computed as x past 20 (PyTorch's threshold).
func SoftplusValue(x float64) float64 {
	if x > 20 {
		return x
	}
	return math.Log1p(math.Exp(x))
}

// ---------------------------------------------------------------------------
// Layout.

// SliceCols returns columns [col0, col0+cols) of src[rows, srcCols] (rows =
// product of the leading dimensions), shaped like src with the last
// dimension cols.
func SliceCols(src *Array, col0, cols int) (*Array, error) {
	rows, srcCols, err := lastDim(src, "slicecols src")
	if err != nil {
		return nil, err
	}
	if col0 < 0 || cols <= 0 || col0+cols > srcCols {
		return nil, fmt.Errorf("slicecols: columns [%d,%d) outside [0,%d)", col0, col0+cols, srcCols)
	}
	shape := append(slices.Clone(src.Shape[:len(src.Shape)-1]), cols)
	out := New(shape...)
	for r := 0; r < rows; r++ {
		for j := 0; j < cols; j++ {
			out.Data[r*cols+j] = src.Data[r*srcCols+col0+j]
		}
	}
	return out, nil
}

// RepeatHeads returns out[rows, heads·dim] from src[rows, srcHeads·dim] with
// out head h = src head h/(heads/srcHeads) (repeat_interleave). The result
// has the shape [rows, heads·dim].
func RepeatHeads(src *Array, srcHeads, heads, dim int) (*Array, error) {
	if src == nil {
		return nil, fmt.Errorf("repeatheads: src is nil")
	}
	if srcHeads <= 0 || heads <= 0 || dim <= 0 || heads%srcHeads != 0 {
		return nil, fmt.Errorf("repeatheads: heads %d not a positive multiple of srcHeads %d (dim %d)", heads, srcHeads, dim)
	}
	if src.Len()%(srcHeads*dim) != 0 {
		return nil, fmt.Errorf("repeatheads: src %v is not a whole number of rows of %d×%d", src.Shape, srcHeads, dim)
	}
	rows := src.Len() / (srcHeads * dim)
	rep := heads / srcHeads
	out := New(rows, heads*dim)
	for r := 0; r < rows; r++ {
		for h := 0; h < heads; h++ {
			for d := 0; d < dim; d++ {
				out.Data[(r*heads+h)*dim+d] = src.Data[(r*srcHeads+h/rep)*dim+d]
			}
		}
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Normalisation.

// LayerNorm returns (x−mean)/√(var+eps)·weight + bias over the last
// dimension (biased variance); bias may be nil.
func LayerNorm(x, weight, bias *Array, eps float64) (*Array, error) {
	rows, n, err := lastDim(x, "layernorm x")
	if err != nil {
		return nil, err
	}
	if err := want(weight, "layernorm weight", n); err != nil {
		return nil, err
	}
	if bias != nil {
		if err := want(bias, "layernorm bias", n); err != nil {
			return nil, err
		}
	}
	out := x.Clone()
	for r := 0; r < rows; r++ {
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
		for j, v := range row {
			o := (v - mean) * inv * weight.Data[j]
			if bias != nil {
				o += bias.Data[j]
			}
			out.Data[r*n+j] = o
		}
	}
	return out, nil
}

// RMSNorm returns x/√(mean(x²)+eps)·weight over the last dimension.
func RMSNorm(x, weight *Array, eps float64) (*Array, error) {
	return GatedRMSNorm(x, nil, weight, lastOf(x), eps)
}

func lastOf(a *Array) int {
	if a == nil || len(a.Shape) == 0 {
		return 0
	}
	return a.Shape[len(a.Shape)-1]
}

// GatedRMSNorm returns, per group of groupSize contiguous channels of the
// last dimension, g/√(mean(g²)+eps)·weight with g = y·silu(z) (z nil: g = y).
func GatedRMSNorm(y, z, weight *Array, groupSize int, eps float64) (*Array, error) {
	rows, n, err := lastDim(y, "gatedrmsnorm y")
	if err != nil {
		return nil, err
	}
	if z != nil && !slices.Equal(z.Shape, y.Shape) {
		return nil, fmt.Errorf("gatedrmsnorm: z %v and y %v differ", z.Shape, y.Shape)
	}
	if err := want(weight, "gatedrmsnorm weight", n); err != nil {
		return nil, err
	}
	if groupSize <= 0 || n%groupSize != 0 {
		return nil, fmt.Errorf("gatedrmsnorm: group size %d does not divide %d", groupSize, n)
	}
	out := y.Clone()
	g := make([]float64, groupSize)
	for r := 0; r < rows; r++ {
		for c0 := 0; c0 < n; c0 += groupSize {
			var ms float64
			for j := 0; j < groupSize; j++ {
				v := y.Data[r*n+c0+j]
				if z != nil {
					v *= SiLUValue(z.Data[r*n+c0+j])
				}
				g[j] = v
				ms += v * v
			}
			ms /= float64(groupSize)
			inv := 1 / math.Sqrt(ms+eps)
			for j := 0; j < groupSize; j++ {
				out.Data[r*n+c0+j] = g[j] * inv * weight.Data[c0+j]
			}
		}
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Mamba-2 pieces.

// DtSoftplus returns softplus(dtRaw[b,l,h] + bias[h]); bias may be nil.
func DtSoftplus(dtRaw, bias *Array) (*Array, error) {
	rows, h, err := lastDim(dtRaw, "dtsoftplus dt")
	if err != nil {
		return nil, err
	}
	if bias != nil {
		if err := want(bias, "dtsoftplus bias", h); err != nil {
			return nil, err
		}
	}
	out := dtRaw.Clone()
	for r := 0; r < rows; r++ {
		for j := 0; j < h; j++ {
			v := dtRaw.Data[r*h+j]
			if bias != nil {
				v += bias.Data[j]
			}
			out.Data[r*h+j] = SoftplusValue(v)
		}
	}
	return out, nil
}

// CausalConv1d returns the depthwise causal convolution of u[b,l,c] with
// weight[c,k] and bias[c] (may be nil):
// out[t,c] = bias[c] + Σ_{j<k} w[c,j]·u[t−k+1+j,c], then SiLU when silu.
func CausalConv1d(u, weight, bias *Array, silu bool) (*Array, error) {
	if u == nil || len(u.Shape) != 3 {
		return nil, fmt.Errorf("causalconv1d u must be [batch, seqlen, channels], got %v", shapeOf(u))
	}
	nb, l, c := u.Shape[0], u.Shape[1], u.Shape[2]
	if weight == nil || len(weight.Shape) != 2 || weight.Shape[0] != c || weight.Shape[1] == 0 {
		return nil, fmt.Errorf("causalconv1d weight must be [%d, k], got %v", c, shapeOf(weight))
	}
	k := weight.Shape[1]
	if bias != nil {
		if err := want(bias, "causalconv1d bias", c); err != nil {
			return nil, err
		}
	}
	out := New(nb, l, c)
	for b := 0; b < nb; b++ {
		for t := 0; t < l; t++ {
			for ch := 0; ch < c; ch++ {
				var s float64
				if bias != nil {
					s = bias.Data[ch]
				}
				for j := 0; j < k; j++ {
					tt := t - k + 1 + j
					if tt < 0 {
						continue
					}
					s += weight.Data[ch*k+j] * u.Data[(b*l+tt)*c+ch]
				}
				if silu {
					s = SiLUValue(s)
				}
				out.Data[(b*l+t)*c+ch] = s
			}
		}
	}
	return out, nil
}

// SSDShape holds the sizes of a Mamba-2 scan.
type SSDShape struct{ Batch, Len, Heads, HeadDim, Groups, DState int }

// CheckSSD validates the shapes of a scan's operands and returns its sizes.
// D and state may be nil.
func CheckSSD(x, dt, A, B, C, D, state *Array) (SSDShape, error) {
	var s SSDShape
	if x == nil || len(x.Shape) != 4 {
		return s, fmt.Errorf("ssd x must be [batch, seqlen, heads, headdim], got %v", shapeOf(x))
	}
	s.Batch, s.Len, s.Heads, s.HeadDim = x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	if B == nil || len(B.Shape) != 4 {
		return s, fmt.Errorf("ssd B must be [batch, seqlen, groups, dstate], got %v", shapeOf(B))
	}
	s.Groups, s.DState = B.Shape[2], B.Shape[3]
	if err := want(B, "ssd B", s.Batch, s.Len, s.Groups, s.DState); err != nil {
		return s, err
	}
	if s.Groups == 0 || s.Heads%s.Groups != 0 {
		return s, fmt.Errorf("ssd: %d heads not a multiple of %d groups", s.Heads, s.Groups)
	}
	if err := want(C, "ssd C", s.Batch, s.Len, s.Groups, s.DState); err != nil {
		return s, err
	}
	if err := want(dt, "ssd dt", s.Batch, s.Len, s.Heads); err != nil {
		return s, err
	}
	if err := want(A, "ssd A", s.Heads); err != nil {
		return s, err
	}
	if D != nil {
		if err := want(D, "ssd D", s.Heads); err != nil {
			return s, err
		}
	}
	if state != nil {
		if err := want(state, "ssd state", s.Batch, s.Heads, s.HeadDim, s.DState); err != nil {
			return s, err
		}
	}
	return s, nil
}

// SSDRecurrence runs the Mamba-2 recurrence sequentially:
// S_t = exp(dt_t·A_h)·S_{t−1} + dt_t·x_t⊗B_t, y_t = S_t·C_t + D_h·x_t, head h
// reading group h/(heads/groups). state [b,h,p,n] is the initial state (nil:
// zero). It returns y [b,l,h,p] and the final state [b,h,p,n].
func SSDRecurrence(x, dt, A, B, C, D, state *Array) (y, final *Array, err error) {
	s, err := CheckSSD(x, dt, A, B, C, D, state)
	if err != nil {
		return nil, nil, err
	}
	H, P, G, N := s.Heads, s.HeadDim, s.Groups, s.DState
	rep := H / G
	y = New(s.Batch, s.Len, H, P)
	final = New(s.Batch, H, P, N)
	if state != nil {
		copy(final.Data, state.Data)
	}
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < H; h++ {
			g := h / rep
			S := final.Data[(b*H+h)*P*N : (b*H+h+1)*P*N]
			for t := 0; t < s.Len; t++ {
				d := dt.Data[(b*s.Len+t)*H+h]
				decay := math.Exp(d * A.Data[h])
				xt := x.Data[((b*s.Len+t)*H+h)*P:]
				Bt := B.Data[((b*s.Len+t)*G+g)*N:]
				Ct := C.Data[((b*s.Len+t)*G+g)*N:]
				for p := 0; p < P; p++ {
					var acc float64
					for n := 0; n < N; n++ {
						S[p*N+n] = decay*S[p*N+n] + d*xt[p]*Bt[n]
						acc += S[p*N+n] * Ct[n]
					}
					if D != nil {
						acc += D.Data[h] * xt[p]
					}
					y.Data[((b*s.Len+t)*H+h)*P+p] = acc
				}
			}
		}
	}
	return y, final, nil
}

// SSDChunked computes the same function as SSDRecurrence by the chunked
// (state-space-dual) algorithm of SPEC §3 with chunk length chunk, in
// float64. It exists to check the algorithm itself against the recurrence.
func SSDChunked(x, dt, A, B, C, D, state *Array, chunk int) (y, final *Array, err error) {
	s, err := CheckSSD(x, dt, A, B, C, D, state)
	if err != nil {
		return nil, nil, err
	}
	if chunk <= 0 {
		return nil, nil, fmt.Errorf("ssd chunked: chunk length %d, want > 0", chunk)
	}
	H, P, G, N, L := s.Heads, s.HeadDim, s.Groups, s.DState, s.Len
	rep := H / G
	y = New(s.Batch, L, H, P)
	final = New(s.Batch, H, P, N)
	if state != nil {
		copy(final.Data, state.Data)
	}
	xAt := func(b, t, h, p int) float64 { return x.Data[((b*L+t)*H+h)*P+p] }
	bAt := func(b, t, g, n int) float64 { return B.Data[((b*L+t)*G+g)*N+n] }
	cAt := func(b, t, g, n int) float64 { return C.Data[((b*L+t)*G+g)*N+n] }
	cs := make([]float64, chunk)
	for b := 0; b < s.Batch; b++ {
		for h := 0; h < H; h++ {
			g := h / rep
			Hc := final.Data[(b*H+h)*P*N : (b*H+h+1)*P*N]
			for c0 := 0; c0 < L; c0 += chunk {
				q := min(chunk, L-c0)
				var run float64
				for i := 0; i < q; i++ {
					run += dt.Data[(b*L+c0+i)*H+h] * A.Data[h]
					cs[i] = run
				}
				for l := 0; l < q; l++ {
					for p := 0; p < P; p++ {
						// Off-diagonal part: the state entering the chunk.
						var off float64
						for n := 0; n < N; n++ {
							off += Hc[p*N+n] * cAt(b, c0+l, g, n)
						}
						acc := math.Exp(min(cs[l], 0)) * off
						// Diagonal part: tokens of this chunk up to l.
						for si := 0; si <= l; si++ {
							var cb float64
							for n := 0; n < N; n++ {
								cb += cAt(b, c0+l, g, n) * bAt(b, c0+si, g, n)
							}
							dts := dt.Data[(b*L+c0+si)*H+h]
							acc += cb * math.Exp(min(cs[l]-cs[si], 0)) * dts * xAt(b, c0+si, h, p)
						}
						if D != nil {
							acc += D.Data[h] * xAt(b, c0+l, h, p)
						}
						y.Data[((b*L+c0+l)*H+h)*P+p] = acc
					}
				}
				// State leaving the chunk.
				last := cs[q-1]
				for p := 0; p < P; p++ {
					for n := 0; n < N; n++ {
						v := math.Exp(min(last, 0)) * Hc[p*N+n]
						for si := 0; si < q; si++ {
							dts := dt.Data[(b*L+c0+si)*H+h]
							v += math.Exp(min(last-cs[si], 0)) * dts * xAt(b, c0+si, h, p) * bAt(b, c0+si, g, n)
						}
						Hc[p*N+n] = v
					}
				}
			}
		}
	}
	return y, final, nil
}

// ---------------------------------------------------------------------------
// Attention.

// checkAttention validates q [b,l,H,p], k and v [b,l,Hkv,p].
func checkAttention(q, k, v *Array) (nb, l, H, Hkv, p int, err error) {
	if q == nil || len(q.Shape) != 4 {
		return 0, 0, 0, 0, 0, fmt.Errorf("attention q must be [batch, seqlen, heads, headdim], got %v", shapeOf(q))
	}
	nb, l, H, p = q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	if k == nil || len(k.Shape) != 4 {
		return 0, 0, 0, 0, 0, fmt.Errorf("attention k must be [batch, seqlen, kvheads, headdim], got %v", shapeOf(k))
	}
	Hkv = k.Shape[2]
	if err := want(k, "attention k", nb, l, Hkv, p); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	if err := want(v, "attention v", nb, l, Hkv, p); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	if Hkv == 0 || H%Hkv != 0 {
		return 0, 0, 0, 0, 0, fmt.Errorf("attention: %d heads not a multiple of %d kv heads", H, Hkv)
	}
	return nb, l, H, Hkv, p, nil
}

// LinearAttention returns the causal, softmax-free, unscaled attention
// out_t = Σ_{s≤t} (q_t·k_s)·v_s, computed pair by pair (O(L²)).
func LinearAttention(q, k, v *Array) (*Array, error) {
	nb, l, H, Hkv, p, err := checkAttention(q, k, v)
	if err != nil {
		return nil, err
	}
	rep := H / Hkv
	out := New(nb, l, H, p)
	for b := 0; b < nb; b++ {
		for h := 0; h < H; h++ {
			hk := h / rep
			for t := 0; t < l; t++ {
				o := out.Data[((b*l+t)*H+h)*p:][:p]
				for s := 0; s <= t; s++ {
					var dot float64
					for i := 0; i < p; i++ {
						dot += q.Data[((b*l+t)*H+h)*p+i] * k.Data[((b*l+s)*Hkv+hk)*p+i]
					}
					for i := 0; i < p; i++ {
						o[i] += dot * v.Data[((b*l+s)*Hkv+hk)*p+i]
					}
				}
			}
		}
	}
	return out, nil
}

// SoftmaxAttention returns out_t = Σ_s softmax_s(scale·q_t·k_s)·v_s over
// s ≤ t when causal, all s otherwise.
func SoftmaxAttention(q, k, v *Array, scale float64, causal bool) (*Array, error) {
	nb, l, H, Hkv, p, err := checkAttention(q, k, v)
	if err != nil {
		return nil, err
	}
	rep := H / Hkv
	out := New(nb, l, H, p)
	scores := make([]float64, l)
	for b := 0; b < nb; b++ {
		for h := 0; h < H; h++ {
			hk := h / rep
			for t := 0; t < l; t++ {
				last := l - 1
				if causal {
					last = t
				}
				maxv := math.Inf(-1)
				for s := 0; s <= last; s++ {
					var dot float64
					for i := 0; i < p; i++ {
						dot += q.Data[((b*l+t)*H+h)*p+i] * k.Data[((b*l+s)*Hkv+hk)*p+i]
					}
					scores[s] = scale * dot
					maxv = max(maxv, scores[s])
				}
				var sum float64
				for s := 0; s <= last; s++ {
					scores[s] = math.Exp(scores[s] - maxv)
					sum += scores[s]
				}
				o := out.Data[((b*l+t)*H+h)*p:][:p]
				for s := 0; s <= last; s++ {
					w := scores[s] / sum
					for i := 0; i < p; i++ {
						o[i] += w * v.Data[((b*l+s)*Hkv+hk)*p+i]
					}
				}
			}
		}
	}
	return out, nil
}

// RoPE returns x[b,l,h,p] with the first rotaryDim dims of each head rotated
// by position pos0+t in the rotate-half form: for i < rotaryDim/2 with
// θ_i = (pos0+t)·theta^(−2i/rotaryDim),
// out_i = x_i·cos θ_i − x_{i+r/2}·sin θ_i, out_{i+r/2} = x_{i+r/2}·cos θ_i + x_i·sin θ_i.
func RoPE(x *Array, rotaryDim int, theta float64, pos0 int) (*Array, error) {
	if x == nil || len(x.Shape) != 4 {
		return nil, fmt.Errorf("rope x must be [batch, seqlen, heads, headdim], got %v", shapeOf(x))
	}
	nb, l, H, p := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	if rotaryDim <= 0 || rotaryDim%2 != 0 || rotaryDim > p {
		return nil, fmt.Errorf("rope: rotary dim %d must be even and in (0, %d]", rotaryDim, p)
	}
	if theta <= 0 {
		return nil, fmt.Errorf("rope: theta %g must be positive", theta)
	}
	half := rotaryDim / 2
	out := x.Clone()
	for b := 0; b < nb; b++ {
		for t := 0; t < l; t++ {
			pos := float64(pos0 + t)
			for h := 0; h < H; h++ {
				base := ((b*l+t)*H + h) * p
				for i := 0; i < half; i++ {
					ang := pos * math.Pow(theta, -2*float64(i)/float64(rotaryDim))
					c, s := math.Cos(ang), math.Sin(ang)
					x1, x2 := x.Data[base+i], x.Data[base+i+half]
					out.Data[base+i] = x1*c - x2*s
					out.Data[base+i+half] = x2*c + x1*s
				}
			}
		}
	}
	return out, nil
}
