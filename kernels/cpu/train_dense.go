package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/matsurgery/matsurgery/kernels"
)

// The kernels.DenseGrad family (kernels/train.go): backward passes of the
// dense, attention and layout operations. Like the forward operations,
// every output element is computed by a sequence of operations fixed by
// the shapes alone, so results do not depend on the number of workers.

var _ kernels.DenseGrad = (*Backend)(nil)

// matmulATPanelFloats bounds the float32 scratch of a MatMulAT with a
// BF16 operand: it widens panels of rows of the shared dimension k — a
// multiple of gemmKC rows, at most 16·gemmKC — of a and b together
// holding about this many values (a variable so that tests can force
// many panels).
var matmulATPanelFloats = 1 << 22

// matmulATPanelRows is the number of rows of k per panel for a [k,m] and
// b [k,n]: a function of the shapes alone.
func matmulATPanelRows(m, n int) int {
	return gemmKC * max(1, min(16, matmulATPanelFloats/(gemmKC*(m+n))))
}

// MatMulAT computes out[m,n] = aᵀ·b for a [..., m] and b [..., n] whose
// leading dimensions, flattened, are the same k; out is written or, when
// accumulate, added into. a and b may be F32 or BF16; accumulation is
// float32 (gemm's). BF16 operands are widened a panel of rows of k at a
// time (panels fixed by the shapes, each added into out in order).
func (be *Backend) MatMulAT(out, a, b kernels.Tensor, accumulate bool) error {
	o, err := be.f32Tensor(out, "matmulat out")
	if err != nil {
		return err
	}
	at, err := be.tensor(a, "matmulat a")
	if err != nil {
		return err
	}
	bt, err := be.tensor(b, "matmulat b")
	if err != nil {
		return err
	}
	k, m := lastDim(at)
	kb, n := lastDim(bt)
	if k != kb {
		return fmt.Errorf("matmulat: a %v has %d rows, b %v has %d: the shared dimension differs", at.shape, k, bt.shape, kb)
	}
	if om, on := lastDim(o); om != m || on != n {
		return fmt.Errorf("matmulat: out %v, want %d rows of %d (a %v, b %v)", o.shape, m, n, at.shape, bt.shape)
	}
	for _, in := range []*Tensor{at, bt} {
		if in.dtype == kernels.F32 && &in.f32[0] == &o.f32[0] {
			return fmt.Errorf("matmulat: out must not alias an operand")
		}
	}
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	if at.dtype == kernels.F32 && bt.dtype == kernels.F32 {
		be.gemmAT(m, n, k, at.f32, bt.f32, o.f32, beta)
		return nil
	}
	kp := matmulATPanelRows(m, n)
	var aw, bw []float32
	if at.dtype == kernels.BF16 {
		aw = make([]float32, min(kp, k)*m)
	}
	if bt.dtype == kernels.BF16 {
		bw = make([]float32, min(kp, k)*n)
	}
	for p0 := 0; p0 < k; p0 += kp {
		rows := min(kp, k-p0)
		ap := be.widenRows(at, aw, p0, rows, m)
		bp := be.widenRows(bt, bw, p0, rows, n)
		be.gemmAT(m, n, rows, ap, bp, o.f32, beta)
		beta = 1
	}
	return nil
}

// widenRows returns rows [r0, r0+rows) of t seen as [.., cols]: its own
// storage when F32, else widened into scratch.
func (be *Backend) widenRows(t *Tensor, scratch []float32, r0, rows, cols int) []float32 {
	if t.dtype == kernels.F32 {
		return t.f32[r0*cols : (r0+rows)*cols]
	}
	dst := scratch[:rows*cols]
	src := t.bf16[r0*cols : (r0+rows)*cols]
	be.parallelFor(len(dst), 1<<16, func(lo, hi int) { bf16ToF32(dst[lo:hi], src[lo:hi]) })
	return dst
}

// gemmAT computes c[m,n] (+)= a[k,m]ᵀ·b[k,n] in tiles of c spread over the
// workers: row blocks, and column blocks too when there are fewer row
// blocks than workers. Each element's sum over k does not depend on the
// tiling.
func (be *Backend) gemmAT(m, n, k int, a, b, c []float32, beta float32) {
	rowsPer := max(64, (m+be.workers-1)/be.workers)
	rowBlocks := (m + rowsPer - 1) / rowsPer
	colBlocks := 1
	if rowBlocks < be.workers {
		colBlocks = max(1, min((n+127)/128, be.workers/rowBlocks))
	}
	colsPer := roundUp((n+colBlocks-1)/colBlocks, gemmNR)
	colBlocks = (n + colsPer - 1) / colsPer
	be.parallelTasks(rowBlocks*colBlocks, func(_, task int) {
		i0, j0 := task/colBlocks*rowsPer, task%colBlocks*colsPer
		mr, nc := min(rowsPer, m-i0), min(colsPer, n-j0)
		gemm(true, false, mr, nc, k, a[i0:], m, b[j0:], n, beta, c[i0*n+j0:], n)
	})
}

// SumRows computes out[n] = Σ_r a[r,n] over the rows of a (leading
// dimensions flattened) in float64, written or, when accumulate, added
// into out (whose elements must number n).
func (be *Backend) SumRows(out, a kernels.Tensor, accumulate bool) error {
	o, err := be.f32Tensor(out, "sumrows out")
	if err != nil {
		return err
	}
	at, err := be.f32Tensor(a, "sumrows a")
	if err != nil {
		return err
	}
	rows, n := lastDim(at)
	if o.Len() != n {
		return fmt.Errorf("sumrows: out %v, want %d elements for the columns of a %v", o.shape, n, at.shape)
	}
	be.parallelFor(n, max(16, grainElementwise/rows), func(lo, hi int) {
		acc := make([]float64, hi-lo)
		for r := range rows {
			for j, v := range at.f32[r*n+lo : r*n+hi] {
				acc[j] += float64(v)
			}
		}
		dst := o.f32[lo:hi]
		for j, s := range acc {
			if accumulate {
				s += float64(dst[j])
			}
			dst[j] = float32(s)
		}
	})
	return nil
}

// elementwiseGrad writes dx = dy·deriv(x) over equal F32 shapes, each
// element in float64 and rounded once; dx may be dy or x.
func (be *Backend) elementwiseGrad(op string, dx, dy, x kernels.Tensor, deriv func(float64) float64) error {
	o, in, err := be.sameShape(op, dx, dy, x)
	if err != nil {
		return err
	}
	g, xs, d := in[0].f32, in[1].f32, o.f32
	be.parallelFor(len(d), grainElementwise/8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			d[i] = float32(float64(g[i]) * deriv(float64(xs[i])))
		}
	})
	return nil
}

// siluGrad is σ(x)·(1 + x·(1 − σ(x))).
func siluGrad(x float64) float64 {
	s := logistic(x)
	return s * (1 + x*(1-s))
}

// geluErfGrad is Φ(x) + x·φ(x).
func geluErfGrad(x float64) float64 {
	const invSqrt2Pi = 0.3989422804014327 // 1/√(2π)
	return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*invSqrt2Pi*math.Exp(-0.5*x*x)
}

// geluTanhGrad is the derivative of x/2·(1 + tanh(√(2/π)·(x + 0.044715x³))).
func geluTanhGrad(x float64) float64 {
	const c, cubic = 0.7978845608028654, 0.044715 // √(2/π)
	t := math.Tanh(c * (x + cubic*x*x*x))
	return 0.5*(1+t) + 0.5*x*(1-t*t)*c*(1+3*cubic*x*x)
}

// GELUBackward writes dx = dy·gelu'(x) for the given form; dx may be dy or x.
func (be *Backend) GELUBackward(dx, dy, x kernels.Tensor, form kernels.GELUForm) error {
	switch form {
	case kernels.GELUErf:
		return be.elementwiseGrad("gelubackward", dx, dy, x, geluErfGrad)
	case kernels.GELUTanh:
		return be.elementwiseGrad("gelubackward", dx, dy, x, geluTanhGrad)
	}
	return fmt.Errorf("gelubackward: unknown form %d", form)
}

// SiLUBackward writes dx = dy·σ(x)·(1 + x·(1 − σ(x))); dx may be dy or x.
func (be *Backend) SiLUBackward(dx, dy, x kernels.Tensor) error {
	return be.elementwiseGrad("silubackward", dx, dy, x, siluGrad)
}

// normGradOperands loads dx, dy and x (one shape, F32) and weight [last].
func (be *Backend) normGradOperands(op string, dx, dy, x, weight kernels.Tensor, eps float32) (o, g, xt, w *Tensor, err error) {
	o, in, err := be.sameShape(op, dx, dy, x)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	g, xt = in[0], in[1]
	_, n := lastDim(xt)
	if w, err = be.f32Tensor(weight, op+" weight"); err != nil {
		return nil, nil, nil, nil, err
	}
	if err = wantShape(w, op+" weight", n); err != nil {
		return nil, nil, nil, nil, err
	}
	if err = checkEps(op, eps); err != nil {
		return nil, nil, nil, nil, err
	}
	return o, g, xt, w, nil
}

// LayerNormBackward writes dx = r·(g − mean(g) − x̂·mean(g·x̂)) per row,
// with g = dy·weight, x̂ = (x − mean)·r and r = 1/√(var + eps), the
// statistics recomputed from x (two-pass) and every sum in float64. dx
// may be dy or x.
func (be *Backend) LayerNormBackward(dx, dy, x, weight kernels.Tensor, eps float32) error {
	o, g, xt, w, err := be.normGradOperands("layernormbackward", dx, dy, x, weight, eps)
	if err != nil {
		return err
	}
	rows, n := lastDim(xt)
	be.parallelFor(rows, max(1, 4096/n), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, gr, dr := xt.f32[r*n:(r+1)*n], g.f32[r*n:(r+1)*n], o.f32[r*n:(r+1)*n]
			var sum float64
			for _, v := range xr {
				sum += float64(v)
			}
			mean := sum / float64(n)
			var ss float64
			for _, v := range xr {
				d := float64(v) - mean
				ss += d * d
			}
			inv := 1 / math.Sqrt(ss/float64(n)+float64(eps))
			var mg, mgx float64
			for j, v := range xr {
				gj := float64(gr[j]) * float64(w.f32[j])
				mg += gj
				mgx += gj * (float64(v) - mean) * inv
			}
			mg /= float64(n)
			mgx /= float64(n)
			for j, v := range xr {
				gj := float64(gr[j]) * float64(w.f32[j])
				dr[j] = float32(inv * (gj - mg - (float64(v)-mean)*inv*mgx))
			}
		}
	})
	return nil
}

// RMSNormBackward writes dx = r·(g − x̂·mean(g·x̂)) per row, with
// g = dy·weight, r = 1/√(mean(x²) + eps) and x̂ = x·r, in float64. dx may
// be dy or x.
func (be *Backend) RMSNormBackward(dx, dy, x, weight kernels.Tensor, eps float32) error {
	o, g, xt, w, err := be.normGradOperands("rmsnormbackward", dx, dy, x, weight, eps)
	if err != nil {
		return err
	}
	rows, n := lastDim(xt)
	be.parallelFor(rows, max(1, 4096/n), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, gr, dr := xt.f32[r*n:(r+1)*n], g.f32[r*n:(r+1)*n], o.f32[r*n:(r+1)*n]
			var ss float64
			for _, v := range xr {
				ss += float64(v) * float64(v)
			}
			inv := 1 / math.Sqrt(ss/float64(n)+float64(eps))
			var mgx float64
			for j, v := range xr {
				mgx += float64(gr[j]) * float64(w.f32[j]) * float64(v)
			}
			c := mgx / float64(n) * inv * inv
			for j, v := range xr {
				dr[j] = float32(inv * (float64(gr[j])*float64(w.f32[j]) - float64(v)*c))
			}
		}
	})
	return nil
}

// Blocks of SoftmaxAttentionBackward: query rows and keys per block of
// recomputed probabilities (two attnBlockQ×attnBlockK float32 buffers per
// worker, whatever the sequence length).
const (
	attnBlockQ = 64
	attnBlockK = 256
)

// SoftmaxAttentionBackward writes dq [b,l,H,p] and dk, dv [b,l,Hkv,p]
// given out = SoftmaxAttention(q, k, v, scale, causal) and dout. One task
// per (batch, query head) walks blocks of attnBlockQ query rows; for each
// it takes every row's log-sum-exp over blocks of attnBlockK keys (online,
// float64), then, block by block again, recomputes the probabilities
// P = exp(scale·q·k − lse) from the same float32 scores, dP = dout·vᵀ and
// dS = P∘(dP − D) with D_t = dout_t·out_t (float64), and adds
// dq += scale·dS·k, dk += scale·dSᵀ·q, dv += Pᵀ·dout (float32 products).
// No l×l matrix is ever held. With GQA each query head sums into its own
// buffer, and a kv head's gradient is the sum of its heads' in order.
func (be *Backend) SoftmaxAttentionBackward(dq, dk, dv, dout, q, k, v, out kernels.Tensor, scale float32, causal bool) error {
	const op = "softmaxattentionbackward"
	var qt, kt, vt, dot, ot, dqt, dkt, dvt *Tensor
	operands := []struct {
		t    kernels.Tensor
		dst  **Tensor
		what string
	}{{q, &qt, "q"}, {k, &kt, "k"}, {v, &vt, "v"}, {dout, &dot, "dout"}, {out, &ot, "out"}, {dq, &dqt, "dq"}, {dk, &dkt, "dk"}, {dv, &dvt, "dv"}}
	for _, x := range operands {
		var err error
		if *x.dst, err = be.f32Tensor(x.t, op+" "+x.what); err != nil {
			return err
		}
	}
	if len(qt.shape) != 4 || len(kt.shape) != 4 {
		return fmt.Errorf("%s: q %v and k %v must be [batch, seqlen, heads, headdim]", op, qt.shape, kt.shape)
	}
	nb, l, H, p := qt.shape[0], qt.shape[1], qt.shape[2], qt.shape[3]
	Hkv := kt.shape[2]
	if H%Hkv != 0 {
		return fmt.Errorf("%s: %d heads is not a multiple of %d kv heads", op, H, Hkv)
	}
	for i, x := range operands[1:] {
		heads := H
		if i == 0 || i == 1 || i == 5 || i == 6 { // k, v, dk, dv
			heads = Hkv
		}
		if err := wantShape(*x.dst, op+" "+x.what, nb, l, heads, p); err != nil {
			return err
		}
	}
	for i, g := range operands[5:] {
		for j, x := range operands {
			if j != 5+i && &(*x.dst).f32[0] == &(*g.dst).f32[0] {
				return fmt.Errorf("%s: %s must not alias %s", op, g.what, x.what)
			}
		}
	}
	if math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
		return fmt.Errorf("%s: scale %g is not finite", op, scale)
	}
	rep := H / Hkv
	// With GQA, per-head dk and dv ([nb, H, l, p]) summed per kv head at the end.
	var headK, headV []float32
	if rep > 1 {
		headK, headV = make([]float32, nb*H*l*p), make([]float32, nb*H*l*p)
	}
	type buffers struct {
		sc, dp           []float32
		mx, sum, lse, dd []float64
	}
	scratch := make([]*buffers, be.workerCount(nb*H))
	be.parallelTasks(nb*H, func(w, task int) {
		if scratch[w] == nil {
			scratch[w] = &buffers{
				sc: make([]float32, attnBlockQ*attnBlockK), dp: make([]float32, attnBlockQ*attnBlockK),
				mx: make([]float64, attnBlockQ), sum: make([]float64, attnBlockQ),
				lse: make([]float64, attnBlockQ), dd: make([]float64, attnBlockQ),
			}
		}
		bf := scratch[w]
		b, h := task/H, task%H
		hk := h / rep
		ldq, ldk := H*p, Hkv*p
		qb := qt.f32[(b*l*H+h)*p:]
		ob := ot.f32[(b*l*H+h)*p:]
		gb := dot.f32[(b*l*H+h)*p:]
		dqb := dqt.f32[(b*l*H+h)*p:]
		kb := kt.f32[(b*l*Hkv+hk)*p:]
		vb := vt.f32[(b*l*Hkv+hk)*p:]
		dkb, dvb, ldg := dkt.f32[(b*l*Hkv+hk)*p:], dvt.f32[(b*l*Hkv+hk)*p:], ldk
		if rep > 1 {
			dkb, dvb, ldg = headK[task*l*p:(task+1)*l*p], headV[task*l*p:(task+1)*l*p], p
		}
		for s := range l {
			clear(dkb[s*ldg : s*ldg+p])
			clear(dvb[s*ldg : s*ldg+p])
		}
		sc64 := float64(scale)
		for t0 := 0; t0 < l; t0 += attnBlockQ {
			m := min(attnBlockQ, l-t0)
			nk := l
			if causal {
				nk = t0 + m
			}
			// visible is the number of keys of block [s0, s0+kc) row i sees.
			visible := func(i, s0, kc int) int {
				if !causal {
					return kc
				}
				return max(0, min(kc, t0+i+1-s0))
			}
			// Pass 1: each row's log-sum-exp, online over key blocks.
			for i := range m {
				bf.mx[i], bf.sum[i] = math.Inf(-1), 0
			}
			for s0 := 0; s0 < nk; s0 += attnBlockK {
				kc := min(attnBlockK, nk-s0)
				sc := bf.sc[:m*kc]
				gemm(false, true, m, kc, p, qb[t0*ldq:], ldq, kb[s0*ldk:], ldk, 0, sc, kc)
				for i := range m {
					row := sc[i*kc : i*kc+visible(i, s0, kc)]
					if len(row) == 0 {
						continue
					}
					mx := bf.mx[i]
					for _, s := range row {
						mx = max(mx, sc64*float64(s))
					}
					acc := bf.sum[i] * math.Exp(bf.mx[i]-mx) // exp(−Inf) = 0 on the first block
					for _, s := range row {
						acc += math.Exp(sc64*float64(s) - mx)
					}
					bf.mx[i], bf.sum[i] = mx, acc
				}
			}
			for i := range m {
				bf.lse[i] = bf.mx[i] + math.Log(bf.sum[i])
				var d float64
				for j, g := range gb[(t0+i)*ldq : (t0+i)*ldq+p] {
					d += float64(g) * float64(ob[(t0+i)*ldq+j])
				}
				bf.dd[i] = d
			}
			// Pass 2: probabilities again, and the gradients.
			for s0 := 0; s0 < nk; s0 += attnBlockK {
				kc := min(attnBlockK, nk-s0)
				sc, dp := bf.sc[:m*kc], bf.dp[:m*kc]
				gemm(false, true, m, kc, p, qb[t0*ldq:], ldq, kb[s0*ldk:], ldk, 0, sc, kc)
				gemm(false, true, m, kc, p, gb[t0*ldq:], ldq, vb[s0*ldk:], ldk, 0, dp, kc)
				for i := range m {
					vis := visible(i, s0, kc)
					pr, dr := sc[i*kc:(i+1)*kc], dp[i*kc:(i+1)*kc]
					for j := range vis {
						pv := math.Exp(sc64*float64(pr[j]) - bf.lse[i])
						pr[j] = float32(pv)
						dr[j] = float32(sc64 * pv * (float64(dr[j]) - bf.dd[i]))
					}
					clear(pr[vis:])
					clear(dr[vis:])
				}
				beta := float32(1)
				if s0 == 0 {
					beta = 0
				}
				gemm(false, false, m, p, kc, dp, kc, kb[s0*ldk:], ldk, beta, dqb[t0*ldq:], ldq)
				gemm(true, false, kc, p, m, dp, kc, qb[t0*ldq:], ldq, 1, dkb[s0*ldg:], ldg)
				gemm(true, false, kc, p, m, sc, kc, gb[t0*ldq:], ldq, 1, dvb[s0*ldg:], ldg)
			}
		}
	})
	if rep > 1 {
		be.parallelFor(nb*l, max(1, grainElementwise/(H*p)), func(lo, hi int) {
			acc := make([]float64, 2*p)
			for r := lo; r < hi; r++ {
				b, s := r/l, r%l
				for g := range Hkv {
					clear(acc)
					for h := g * rep; h < (g+1)*rep; h++ {
						src := ((b*H+h)*l + s) * p
						for j := range p {
							acc[j] += float64(headK[src+j])
							acc[p+j] += float64(headV[src+j])
						}
					}
					dst := ((b*l+s)*Hkv + g) * p
					for j := range p {
						dkt.f32[dst+j] = float32(acc[j])
						dvt.f32[dst+j] = float32(acc[p+j])
					}
				}
			}
		})
	}
	return nil
}

// RoPEInverse rotates, in place, the first rotaryDim dims of each head of
// x[b,l,h,p] by the negative of RoPE's angles (same arguments, same
// float64 angles and sines): it undoes RoPE and is RoPE's backward.
func (be *Backend) RoPEInverse(x kernels.Tensor, rotaryDim int, theta float64, pos0 int) error {
	return be.rope("ropeinverse", x, rotaryDim, theta, pos0, -1)
}

// SumHeads writes out[rows, srcHeads·dim], head s the float64 sum of the
// heads s·r … s·r+r−1 of src[rows, heads·dim] (r = heads/srcHeads), in
// order. Like RepeatHeads only element counts are checked; out must not
// alias src.
func (be *Backend) SumHeads(out, src kernels.Tensor, srcHeads, heads, dim int) error {
	o, err := be.f32Tensor(out, "sumheads out")
	if err != nil {
		return err
	}
	s, err := be.f32Tensor(src, "sumheads src")
	if err != nil {
		return err
	}
	if srcHeads <= 0 || heads <= 0 || dim <= 0 || heads%srcHeads != 0 {
		return fmt.Errorf("sumheads: heads %d is not a positive multiple of srcHeads %d (dim %d)", heads, srcHeads, dim)
	}
	if o.Len()%(srcHeads*dim) != 0 {
		return fmt.Errorf("sumheads: out %v is not a whole number of rows of %d×%d", o.shape, srcHeads, dim)
	}
	rows := o.Len() / (srcHeads * dim)
	if s.Len() != rows*heads*dim {
		return fmt.Errorf("sumheads: src %v does not hold %d rows of %d×%d", s.shape, rows, heads, dim)
	}
	if &o.f32[0] == &s.f32[0] {
		return fmt.Errorf("sumheads: out must not alias src")
	}
	rep := heads / srcHeads
	be.parallelFor(rows, max(1, grainElementwise/(heads*dim)), func(lo, hi int) {
		acc := make([]float64, dim)
		for r := lo; r < hi; r++ {
			for g := range srcHeads {
				clear(acc)
				for h := g * rep; h < (g+1)*rep; h++ {
					for j, v := range s.f32[(r*heads+h)*dim : (r*heads+h+1)*dim] {
						acc[j] += float64(v)
					}
				}
				dst := o.f32[(r*srcHeads+g)*dim : (r*srcHeads+g+1)*dim]
				for j, v := range acc {
					dst[j] = float32(v)
				}
			}
		}
	})
	return nil
}

// SetCols overwrites columns [col0, col0+cols) of dst[rows, dstCols] with
// src[rows, cols] (rows, the product of the leading dimensions, must
// agree); the other columns are left as they are.
func (be *Backend) SetCols(dst, src kernels.Tensor, col0 int) error {
	d, err := be.f32Tensor(dst, "setcols dst")
	if err != nil {
		return err
	}
	s, err := be.f32Tensor(src, "setcols src")
	if err != nil {
		return err
	}
	rows, dcols := lastDim(d)
	srows, cols := lastDim(s)
	if rows != srows {
		return fmt.Errorf("setcols: dst %v has %d rows, src %v has %d", d.shape, rows, s.shape, srows)
	}
	if col0 < 0 || col0+cols > dcols {
		return fmt.Errorf("setcols: columns [%d,%d) outside dst's %d", col0, col0+cols, dcols)
	}
	if &d.f32[0] == &s.f32[0] {
		return fmt.Errorf("setcols: dst must not alias src")
	}
	be.parallelFor(rows, max(1, grainElementwise/cols), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			copy(d.f32[r*dcols+col0:r*dcols+col0+cols], s.f32[r*cols:(r+1)*cols])
		}
	})
	return nil
}

// Fill writes v into every element of the F32 tensor t.
func (be *Backend) Fill(t kernels.Tensor, v float32) error {
	tt, err := be.f32Tensor(t, "fill")
	if err != nil {
		return err
	}
	be.parallelFor(len(tt.f32), grainElementwise, func(lo, hi int) {
		d := tt.f32[lo:hi]
		for i := range d {
			d[i] = v
		}
	})
	return nil
}

// Dropout writes out = x·mask over rows of the last dimension (inverted
// dropout, drop probability prob in [0, 1)): element (i, j) is kept, and
// multiplied by float32(1/(1−prob)), when the j-th Uint64 of
// rand.NewPCG(seed, kernels.SplitMix64(i)) shifted right by 11 is
// ≥ uint64(prob·2⁵³), and set to 0 otherwise (even when x is not finite).
// out may be x.
func (be *Backend) Dropout(out, x kernels.Tensor, seed uint64, prob float64) error {
	o, in, err := be.sameShape("dropout", out, x)
	if err != nil {
		return err
	}
	if !(prob >= 0 && prob < 1) {
		return fmt.Errorf("dropout: probability %g must be in [0, 1)", prob)
	}
	rows, d := lastDim(o)
	thr := uint64(prob * (1 << 53))
	scale := float32(1 / (1 - prob))
	xs, ys := in[0].f32, o.f32
	be.parallelFor(rows, max(1, grainElementwise/(4*d)), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var src rand.PCG
			src.Seed(seed, kernels.SplitMix64(uint64(i)))
			xr, yr := xs[i*d:(i+1)*d], ys[i*d:(i+1)*d]
			for j, v := range xr {
				if src.Uint64()>>11 >= thr {
					yr[j] = v * scale
				} else {
					yr[j] = 0
				}
			}
		}
	})
	return nil
}
