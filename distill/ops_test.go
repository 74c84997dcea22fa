package distill

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Tolerances of the block checks: float32 forward vs the float64
// reference (relative 2-norm), and float32 analytic gradients vs float64
// central differences.
const (
	fwdTol  = 2e-6
	gradTol = 1e-4
)

// Linears of both product paths: gonum's sgemm (small) and the CPU
// backend (m·n·k ≥ backendProduct), with float32 and bf16 weights (more
// output rows than a bf16 panel).
func TestLinear(t *testing.T) {
	for _, c := range []struct{ n, in, out int }{{9, 21, 300}, {64, 256, 300}} {
		t.Run(fmt.Sprintf("%dx%dx%d", c.n, c.in, c.out), func(t *testing.T) {
			testLinear(t, c.n, c.in, c.out)
		})
	}
}

func testLinear(t *testing.T, n, in, out int) {
	fd := defaultFD
	if n*in*out >= backendProduct {
		fd.full = 0 // directional derivatives: the float64 reference product is slow
	}
	rng := newRand(1)
	p := newPool(3)
	x, w, b := randn(rng, n*in, 1), randn(rng, out*in, 0.3), randn(rng, out, 0.5)
	x64, w64, b64 := widen(x), widen(w), widen(b)
	ref := func() *reference.Array {
		y := must(t)(reference.MatMul(arr(t, x64, n, in), arr(t, w64, out, in), true))
		return must(t)(reference.AddBias(y, arr(t, b64, out)))
	}
	y := make([]float32, n*out)
	linearForward(p, y, x, n, matrix{rows: out, cols: in, f32: w}, b)
	checkRel(t, "forward", y, ref().Data, fwdTol)

	up := randn(rng, n*out, 1)
	tl := trainableLinear{w: &Param{Shape: []int{out, in}, Data: w, Grad: make([]float32, out*in)}, b: &Param{Shape: []int{out}, Data: b, Grad: make([]float32, out)}}
	dx := make([]float32, n*in)
	tl.backward(p, dx, up, x, n)
	checkGradients(t, rng, "linear", func() float64 { return dot(up, ref()) },
		[]gradInput{{"x", x64, dx}, {"weight", w64, tl.w.Grad}, {"bias", b64, tl.b.Grad}}, fd)

	// A bf16 matrix gives the products of its widened values.
	bits := make([]uint16, len(w))
	wide := make([]float32, len(w))
	for i, v := range w {
		bits[i] = reference.BF16Bits(float64(v))
		wide[i] = float32(reference.BF16Value(bits[i]))
	}
	ybf, yf := make([]float32, n*out), make([]float32, n*out)
	linearForward(p, ybf, x, n, matrix{rows: out, cols: in, bf16: bits}, b)
	linearForward(p, yf, x, n, matrix{rows: out, cols: in, f32: wide}, b)
	checkRel(t, "bf16 forward vs widened f32", ybf, widen(yf), 1e-6)
	dxbf, dxf := make([]float32, n*in), make([]float32, n*in)
	linearBackwardInput(p, dxbf, up, n, matrix{rows: out, cols: in, bf16: bits})
	linearBackwardInput(p, dxf, up, n, matrix{rows: out, cols: in, f32: wide})
	checkRel(t, "bf16 input gradient vs widened f32", dxbf, widen(dxf), 1e-6)
}

func TestNorms(t *testing.T) {
	rng := newRand(2)
	p := newPool(2)
	const n, d = 7, 33
	x := randn(rng, n*d, 2)
	for i := range x { // an offset so that the mean matters
		x[i] += 0.7
	}
	w, b := uniform(rng, d, 0.5, 1.5), randn(rng, d, 0.2)
	x64 := widen(x)
	up := randn(rng, n*d, 1)
	const eps = 1e-5

	t.Run("layernorm", func(t *testing.T) {
		ref := func() *reference.Array {
			return must(t)(reference.LayerNorm(arr(t, x64, n, d), arr(t, widen(w), d), arr(t, widen(b), d), eps))
		}
		y := make([]float32, n*d)
		mean, rstd := make([]float64, n), make([]float64, n)
		layerNormForward(p, y, x, n, d, w, b, eps, mean, rstd)
		checkRel(t, "forward", y, ref().Data, fwdTol)
		dx := make([]float32, n*d)
		layerNormBackward(p, dx, up, x, n, d, w, mean, rstd)
		checkGradients(t, rng, "layernorm", func() float64 { return dot(up, ref()) }, []gradInput{{"x", x64, dx}}, defaultFD)
	})
	t.Run("rmsnorm", func(t *testing.T) {
		ref := func() *reference.Array {
			return must(t)(reference.RMSNorm(arr(t, x64, n, d), arr(t, widen(w), d), eps))
		}
		y := make([]float32, n*d)
		rstd := make([]float64, n)
		rmsNormForward(p, y, x, n, d, w, eps, rstd)
		checkRel(t, "forward", y, ref().Data, fwdTol)
		dx := make([]float32, n*d)
		rmsNormBackward(p, dx, up, x, n, d, w, rstd)
		checkGradients(t, rng, "rmsnorm", func() float64 { return dot(up, ref()) }, []gradInput{{"x", x64, dx}}, defaultFD)
	})
	t.Run("gated", func(t *testing.T) {
		const group = 11 // 3 groups per row
		z := randn(rng, n*d, 1.5)
		z64, w64 := widen(z), widen(w)
		ref := func() *reference.Array {
			return must(t)(reference.GatedRMSNorm(arr(t, x64, n, d), arr(t, z64, n, d), arr(t, w64, d), group, eps))
		}
		y := make([]float32, n*d)
		rstd := make([]float64, n*d/group)
		gatedRMSNormForward(p, y, x, z, n, d, group, w, eps, rstd)
		checkRel(t, "forward", y, ref().Data, fwdTol)
		dy, dz, dw := make([]float32, n*d), make([]float32, n*d), make([]float32, d)
		gatedRMSNormBackward(p, dy, dz, dw, up, x, z, n, d, group, w, rstd)
		checkGradients(t, rng, "gated rmsnorm", func() float64 { return dot(up, ref()) },
			[]gradInput{{"y", x64, dy}, {"z", z64, dz}, {"weight", w64, dw}}, defaultFD)
	})
}

func TestActivations(t *testing.T) {
	rng := newRand(3)
	p := newPool(2)
	// Points spread over the interesting range, past softplus' threshold too.
	xs := append(randn(rng, 200, 3), -30, -8, 0, 8, 19.5, 20.5, 35)
	x64 := widen(xs)
	up := randn(rng, len(xs), 1)
	elementwise := func(f func(float64) float64) func() float64 {
		return func() float64 {
			var s float64
			for i, v := range x64 {
				s += float64(up[i]) * f(v)
			}
			return s
		}
	}
	for _, c := range []struct {
		name string
		kind geluKind
		ref  func(float64) float64
	}{{"gelu erf", geluErf, reference.GELUErfValue}, {"gelu tanh", geluTanh, reference.GELUTanhValue}} {
		y := make([]float32, len(xs))
		geluForward(p, c.kind, y, xs)
		want := make([]float64, len(xs))
		for i, v := range x64 {
			want[i] = c.ref(v)
		}
		checkRel(t, c.name+" forward", y, want, fwdTol)
		dx := make([]float32, len(xs))
		geluBackward(p, c.kind, dx, up, xs)
		checkGradients(t, rng, c.name, elementwise(c.ref), []gradInput{{"x", x64, dx}}, defaultFD)
	}
	scalar := func(name string, f, df func(float64) float64, ref func(float64) float64) {
		g := make([]float32, len(xs))
		for i, v := range x64 {
			if r := ref(v); math.Abs(f(v)-r) > 1e-12*max(1, math.Abs(r)) {
				t.Errorf("%s(%g) = %g, reference %g", name, v, f(v), r)
			}
			g[i] = float32(float64(up[i]) * df(v))
		}
		checkGradients(t, rng, name, elementwise(ref), []gradInput{{"x", x64, g}}, defaultFD)
	}
	scalar("silu", silu, siluGrad, reference.SiLUValue)
	scalar("softplus", softplus, softplusGrad, reference.SoftplusValue)

	// SwiGLU on a fused gate | up buffer.
	const n, inter = 5, 9
	gu := randn(rng, n*2*inter, 2)
	gu64 := widen(gu)
	upS := randn(rng, n*inter, 1)
	ref := func() float64 {
		var s float64
		for r := range n {
			for j := range inter {
				s += float64(upS[r*inter+j]) * reference.SiLUValue(gu64[2*r*inter+j]) * gu64[(2*r+1)*inter+j]
			}
		}
		return s
	}
	out := make([]float32, n*inter)
	swigluForward(p, out, gu, n, inter)
	want := make([]float64, n*inter)
	for r := range n {
		for j := range inter {
			want[r*inter+j] = reference.SiLUValue(gu64[2*r*inter+j]) * gu64[(2*r+1)*inter+j]
		}
	}
	checkRel(t, "swiglu forward", out, want, fwdTol)
	dgu := make([]float32, n*2*inter)
	swigluBackward(p, dgu, upS, gu, n, inter)
	checkGradients(t, rng, "swiglu", ref, []gradInput{{"gate|up", gu64, dgu}}, defaultFD)
}

func TestCausalConv(t *testing.T) {
	rng := newRand(4)
	p := newPool(3)
	// u is a column range of a wider buffer, as in the mixer's in_proj output;
	// 70 channels make two channel blocks; n < k checks the start.
	for _, n := range []int{2, 13} {
		t.Run(fmt.Sprintf("n%d", n), func(t *testing.T) {
			const c, k, stride, off = 70, 4, 83, 6
			buf := randn(rng, n*stride, 1)
			w, b := uniform(rng, c*k, -0.5, 0.5), uniform(rng, c, -0.5, 0.5)
			u64 := make([]float64, n*c)
			for tt := range n {
				for j := range c {
					u64[tt*c+j] = float64(buf[tt*stride+off+j])
				}
			}
			w64, b64 := widen(w), widen(b)
			ref := func() *reference.Array {
				return must(t)(reference.CausalConv1d(arr(t, u64, 1, n, c), arr(t, w64, c, k), arr(t, b64, c), true))
			}
			sh := convShape{n: n, c: c, k: k, uStride: stride, uOff: off}
			pre, act := make([]float32, n*c), make([]float32, n*c)
			causalConvForward(p, sh, pre, act, buf, w, b)
			checkRel(t, "forward", act, ref().Data, fwdTol)
			up := randn(rng, n*c, 1)
			dbuf := make([]float32, n*stride)
			dw, db := make([]float32, c*k), make([]float32, c)
			causalConvBackward(p, sh, dbuf, dw, db, up, pre, buf, w)
			du := make([]float32, n*c)
			for tt := range n {
				copy(du[tt*c:(tt+1)*c], dbuf[tt*stride+off:])
			}
			checkGradients(t, rng, "conv", func() float64 { return dot(up, ref()) },
				[]gradInput{{"u", u64, du}, {"weight", w64, dw}, {"bias", b64, db}}, defaultFD)
		})
	}
}

func TestRepeatHeads(t *testing.T) {
	rng := newRand(5)
	p := newPool(2)
	const n, srcHeads, heads, dim, stride, off = 6, 2, 6, 5, 17, 3
	buf := randn(rng, n*stride, 1)
	src64 := make([]float64, n*srcHeads*dim)
	for tt := range n {
		for j := range srcHeads * dim {
			src64[tt*srcHeads*dim+j] = float64(buf[tt*stride+off+j])
		}
	}
	ref := func() *reference.Array {
		return must(t)(reference.RepeatHeads(arr(t, src64, n, srcHeads*dim), srcHeads, heads, dim))
	}
	out := make([]float32, n*heads*dim)
	repeatForward(p, out, buf, n, stride, off, srcHeads, heads, dim)
	checkRel(t, "forward", out, ref().Data, 0)
	up := randn(rng, n*heads*dim, 1)
	dbuf := make([]float32, n*stride)
	repeatBackward(p, dbuf, up, n, stride, off, srcHeads, heads, dim)
	dsrc := make([]float32, n*srcHeads*dim)
	for tt := range n {
		copy(dsrc[tt*srcHeads*dim:(tt+1)*srcHeads*dim], dbuf[tt*stride+off:])
	}
	checkGradients(t, rng, "repeat", func() float64 { return dot(up, ref()) }, []gradInput{{"src", src64, dsrc}}, defaultFD)
}

func TestRoPE(t *testing.T) {
	rng := newRand(6)
	p := newPool(2)
	const n, heads, hd, rot, stride, off = 11, 3, 10, 4, 37, 5
	theta := 10000.0
	buf := randn(rng, n*stride, 1)
	x64 := make([]float64, n*heads*hd)
	for tt := range n {
		for j := range heads * hd {
			x64[tt*heads*hd+j] = float64(buf[tt*stride+off+j])
		}
	}
	ref := func() *reference.Array { return must(t)(reference.RoPE(arr(t, x64, 1, n, heads, hd), rot, theta, 0)) }
	tab := newRopeTable(n+5, rot, theta) // a longer table serves shorter sequences
	fwd := slices.Clone(buf)
	ropeRotate(p, fwd, n, stride, off, heads, hd, tab, false)
	got := make([]float32, n*heads*hd)
	for tt := range n {
		copy(got[tt*heads*hd:(tt+1)*heads*hd], fwd[tt*stride+off:])
	}
	checkRel(t, "forward", got, ref().Data, fwdTol)
	// Columns outside the heads are untouched.
	for tt := range n {
		for j := range stride {
			if (j < off || j >= off+heads*hd) && fwd[tt*stride+j] != buf[tt*stride+j] {
				t.Fatalf("row %d column %d outside the heads changed", tt, j)
			}
		}
	}
	up := randn(rng, n*heads*hd, 1)
	dbuf := make([]float32, n*stride)
	for tt := range n {
		copy(dbuf[tt*stride+off:], up[tt*heads*hd:(tt+1)*heads*hd])
	}
	ropeRotate(p, dbuf, n, stride, off, heads, hd, tab, true)
	dx := make([]float32, n*heads*hd)
	for tt := range n {
		copy(dx[tt*heads*hd:(tt+1)*heads*hd], dbuf[tt*stride+off:])
	}
	checkGradients(t, rng, "rope", func() float64 { return dot(up, ref()) }, []gradInput{{"x", x64, dx}}, defaultFD)
}

func TestSoftmaxAttention(t *testing.T) {
	for _, c := range []struct {
		name                 string
		n, heads, kv, hd     int
		causal               bool
		qOff, kOff, vOff, st int
	}{
		// GQA, two row blocks (n > attnBlock), q|k|v fused as in a decoder layer.
		{"causal-gqa", 70, 4, 2, 6, true, 0, 24, 36, 48},
		// Non-causal (the vision tower), MHA, operands in another order with padding.
		{"full-mha", 19, 3, 3, 5, false, 20, 2, 36, 53},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(7)
			p := newPool(3)
			sh := attnShape{n: c.n, heads: c.heads, kvHeads: c.kv, headDim: c.hd, stride: c.st, qOff: c.qOff, kOff: c.kOff, vOff: c.vOff,
				scale: float32(1 / math.Sqrt(float64(c.hd))), causal: c.causal}
			qkv := randn(rng, c.n*c.st, 1.5)
			extract := func(off, heads int) []float64 {
				out := make([]float64, c.n*heads*c.hd)
				for tt := range c.n {
					for j := range heads * c.hd {
						out[tt*heads*c.hd+j] = float64(qkv[tt*c.st+off+j])
					}
				}
				return out
			}
			q64, k64, v64 := extract(c.qOff, c.heads), extract(c.kOff, c.kv), extract(c.vOff, c.kv)
			ref := func() *reference.Array {
				return must(t)(reference.SoftmaxAttention(arr(t, q64, 1, c.n, c.heads, c.hd), arr(t, k64, 1, c.n, c.kv, c.hd),
					arr(t, v64, 1, c.n, c.kv, c.hd), float64(sh.scale), c.causal))
			}
			o := make([]float32, c.n*c.heads*c.hd)
			lse := make([]float64, c.heads*c.n)
			attentionForward(p, sh, o, qkv, lse)
			checkRel(t, "forward", o, ref().Data, fwdTol)
			up := randn(rng, len(o), 1)
			dqkv := make([]float32, len(qkv))
			attentionBackward(p, sh, dqkv, up, o, qkv, lse)
			grab := func(off, heads int) []float32 {
				out := make([]float32, c.n*heads*c.hd)
				for tt := range c.n {
					copy(out[tt*heads*c.hd:(tt+1)*heads*c.hd], dqkv[tt*c.st+off:])
				}
				return out
			}
			checkGradients(t, rng, "attention", func() float64 { return dot(up, ref()) },
				[]gradInput{{"q", q64, grab(c.qOff, c.heads)}, {"k", k64, grab(c.kOff, c.kv)}, {"v", v64, grab(c.vOff, c.kv)}}, defaultFD)
		})
	}
}
