package cpu

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// The backward of the Mamba-2 mixer's own operations (kernels.MambaGrad).
//
// As in the forward operations, sums that decide accuracy run in float64,
// and every output element is computed by one fixed sequence of
// operations whatever the number of workers: a parameter gradient summed
// over rows is summed over fixed blocks of rows (their size depends on the
// shape alone) and then over the blocks in order, or over rows in order by
// the one task that owns a channel.

var _ kernels.MambaGrad = (*Backend)(nil)

// logistic is σ(x) = 1/(1 + e⁻ˣ) in float64; it is 0 where e⁻ˣ overflows.
func logistic(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// siluDerivative is SiLU's derivative σ(x)·(1 + x·(1 − σ(x))).
func siluDerivative(x float64) float64 {
	s := logistic(x)
	return s * (1 + x*(1-s))
}

// addFloat64Sums adds the float64 sums into the float32 gradient acc (each
// element rounded once).
func addFloat64Sums(acc []float32, sums []float64) {
	for i, v := range sums {
		acc[i] = float32(float64(acc[i]) + v)
	}
}

// fixedBlockSums runs fill over fixed blocks of rows of [0, rows), in
// parallel, each with its own zeroed float64 accumulator of n columns, and
// returns the sum of the accumulators in block order. Blocks hold
// max(1, 32768/n) rows (64 KiB or more of float32 input each, and the
// accumulators an n-th of that): the result depends on the shape alone,
// never on the worker count. fill may also write per-row outputs of its
// rows.
func (be *Backend) fixedBlockSums(rows, n int, fill func(lo, hi int, acc []float64)) []float64 {
	per := max(1, 32768/n)
	blocks := (rows + per - 1) / per
	partial := make([]float64, blocks*n)
	be.parallelTasks(blocks, func(_, blk int) {
		fill(blk*per, min(rows, (blk+1)*per), partial[blk*n:(blk+1)*n])
	})
	sums := make([]float64, n)
	for blk := range blocks {
		for j, v := range partial[blk*n : (blk+1)*n] {
			sums[j] += v
		}
	}
	return sums
}

// CausalConv1dBackward writes du [b,l,c] and accumulates dweight [c,k]
// and dbias [c] (each optional; dbias may be given without a bias: it is
// then the gradient at a zero bias) given out = CausalConv1d(u, weight,
// bias, silu) and dout. The pre-activation is recomputed in float64 and
// every sum runs in float64. Channels are split into blocks of 256, one
// task each, walking the sequence backwards with the last k pre-activation
// gradients in a ring: du[t] = Σ_j w[j]·dpre[t+k−1−j]; a channel's
// parameter gradients are summed over the batch and the tokens in that
// order.
func (be *Backend) CausalConv1dBackward(du, dweight, dbias, dout, u, weight, bias kernels.Tensor, silu bool) error {
	const op = "causalconv1d backward"
	dut, err := be.f32Tensor(du, op+" du")
	if err != nil {
		return err
	}
	gout, err := be.f32Tensor(dout, op+" dout")
	if err != nil {
		return err
	}
	ut, err := be.f32Tensor(u, op+" u")
	if err != nil {
		return err
	}
	if len(ut.shape) != 3 {
		return fmt.Errorf("%s: u must be [batch, seqlen, channels], got %v", op, ut.shape)
	}
	if err := wantShape(gout, op+" dout", ut.shape...); err != nil {
		return err
	}
	if err := wantShape(dut, op+" du", ut.shape...); err != nil {
		return err
	}
	nb, l, c := ut.shape[0], ut.shape[1], ut.shape[2]
	w, err := be.f32Tensor(weight, op+" weight")
	if err != nil {
		return err
	}
	if len(w.shape) != 2 || w.shape[0] != c {
		return fmt.Errorf("%s: weight must be [%d, k], got %v", op, c, w.shape)
	}
	k := w.shape[1]
	var b, dw, db *Tensor
	for _, o := range []struct {
		dst  **Tensor
		t    kernels.Tensor
		name string
		want []int
	}{{&b, bias, "bias", []int{c}}, {&dw, dweight, "dweight", []int{c, k}}, {&db, dbias, "dbias", []int{c}}} {
		if *o.dst, err = be.optF32(o.t, op+" "+o.name); err != nil {
			return err
		}
		if *o.dst != nil {
			if err := wantShape(*o.dst, op+" "+o.name, o.want...); err != nil {
				return err
			}
		}
	}

	const block = 256 // channels per task
	tasks := (c + block - 1) / block
	type buffers struct {
		wT, dwT []float64 // [k][block]: the weight and its gradient, tap-major
		ring    []float64 // [k][block]: pre-activation gradients of tokens t … t+k−1
		pre, du []float64 // [block]
		db      []float64 // [block]
	}
	scratch := make([]*buffers, be.workerCount(tasks))
	be.parallelTasks(tasks, func(wk, task int) {
		if scratch[wk] == nil {
			scratch[wk] = &buffers{
				wT: make([]float64, k*block), dwT: make([]float64, k*block), ring: make([]float64, k*block),
				pre: make([]float64, block), du: make([]float64, block), db: make([]float64, block),
			}
		}
		buf := scratch[wk]
		c0, c1 := task*block, min(c, (task+1)*block)
		cn := c1 - c0
		tap := func(s []float64, j int) []float64 { return s[j*block:][:cn] }
		for j := range k {
			wj := tap(buf.wT, j)
			for ch := range cn {
				wj[ch] = float64(w.f32[(c0+ch)*k+j])
			}
			clear(tap(buf.dwT, j))
		}
		pre, dacc, dbAcc := buf.pre[:cn], buf.du[:cn], buf.db[:cn]
		clear(dbAcc)
		for bi := range nb {
			base := bi * l
			row := func(s []float32, t int) []float32 { return s[(base+t)*c+c0:][:cn] }
			for t := l - 1; t >= 0; t-- {
				// The pre-activation, recomputed.
				if b != nil {
					for ch, v := range b.f32[c0:c1] {
						pre[ch] = float64(v)
					}
				} else {
					clear(pre)
				}
				for j := max(0, k-1-t); j < k; j++ {
					wj, us := tap(buf.wT, j), row(ut.f32, t-k+1+j)
					for ch, v := range us {
						pre[ch] += wj[ch] * float64(v)
					}
				}
				// Its gradient, into the ring and the bias's and weight's sums.
				slot := tap(buf.ring, t%k)
				for ch, g := range row(gout.f32, t) {
					dp := float64(g)
					if silu {
						dp *= siluDerivative(pre[ch])
					}
					slot[ch] = dp
					dbAcc[ch] += dp
				}
				for j := max(0, k-1-t); j < k; j++ {
					dwj, us := tap(buf.dwT, j), row(ut.f32, t-k+1+j)
					for ch, v := range us {
						dwj[ch] += slot[ch] * float64(v)
					}
				}
				// du[t] = Σ_j w[j]·dpre[t+k−1−j] over the tokens that exist.
				clear(dacc)
				for j := max(0, t+k-l); j < k; j++ {
					wj, dp := tap(buf.wT, j), tap(buf.ring, (t+k-1-j)%k)
					for ch := range dacc {
						dacc[ch] += wj[ch] * dp[ch]
					}
				}
				dst := row(dut.f32, t)
				for ch, v := range dacc {
					dst[ch] = float32(v)
				}
			}
		}
		if dw != nil {
			for ch := range cn {
				for j := range k {
					i := (c0+ch)*k + j
					dw.f32[i] = float32(float64(dw.f32[i]) + buf.dwT[j*block+ch])
				}
			}
		}
		if db != nil {
			addFloat64Sums(db.f32[c0:c1], dbAcc)
		}
	})
	return nil
}

// DtSoftplusBackward writes dRaw = ddt·σ(dtRaw + bias) (σ in float64) and
// accumulates the float64 column sums of dRaw into dbias [h] (optional;
// bias may be nil, and dbias may be given without it).
func (be *Backend) DtSoftplusBackward(dRaw, dbias, ddt, dtRaw, bias kernels.Tensor) error {
	const op = "dtsoftplus backward"
	dr, err := be.f32Tensor(dRaw, op+" dRaw")
	if err != nil {
		return err
	}
	gt, err := be.f32Tensor(ddt, op+" ddt")
	if err != nil {
		return err
	}
	raw, err := be.f32Tensor(dtRaw, op+" dt")
	if err != nil {
		return err
	}
	if err := wantShape(gt, op+" ddt", raw.shape...); err != nil {
		return err
	}
	if err := wantShape(dr, op+" dRaw", raw.shape...); err != nil {
		return err
	}
	rows, h := lastDim(raw)
	b, err := be.optF32(bias, op+" bias")
	if err != nil {
		return err
	}
	db, err := be.optF32(dbias, op+" dbias")
	if err != nil {
		return err
	}
	for _, o := range []struct {
		t    *Tensor
		name string
	}{{b, "bias"}, {db, "dbias"}} {
		if o.t != nil {
			if err := wantShape(o.t, op+" "+o.name, h); err != nil {
				return err
			}
		}
	}
	sums := be.fixedBlockSums(rows, h, func(lo, hi int, acc []float64) {
		for r := lo; r < hi; r++ {
			for j := range h {
				i := r*h + j
				v := float64(raw.f32[i])
				if b != nil {
					v += float64(b.f32[j])
				}
				g := float64(gt.f32[i]) * logistic(v)
				dr.f32[i] = float32(g)
				acc[j] += g
			}
		}
	})
	if db != nil {
		addFloat64Sums(db.f32, sums)
	}
	return nil
}

// GatedRMSNormBackward writes dy and dz (dz is nil exactly when z is nil)
// and accumulates dweight (optional) given out = GatedRMSNorm(y, z,
// weight, groupSize, eps) and dout. Per group of n channels, with
// g = y·silu(z), r = 1/√(mean(g²)+eps) recomputed in float64:
//
//	∂L/∂g_j = r·w_j·dout_j − g_j·r³/n·Σ_i w_i·dout_i·g_i,  dweight_j += dout_j·g_j·r
//
// then dy = ∂L/∂g·silu(z), dz = ∂L/∂g·y·silu'(z).
func (be *Backend) GatedRMSNormBackward(dy, dz, dweight, dout, y, z, weight kernels.Tensor, groupSize int, eps float32) error {
	const op = "gatedrmsnorm backward"
	dyt, yt, w, _, err := be.rowOp(op, dy, y, weight, nil)
	if err != nil {
		return err
	}
	gt, err := be.f32Tensor(dout, op+" dout")
	if err != nil {
		return err
	}
	if err := wantShape(gt, op+" dout", yt.shape...); err != nil {
		return err
	}
	zt, err := be.optF32(z, op+" z")
	if err != nil {
		return err
	}
	dzt, err := be.optF32(dz, op+" dz")
	if err != nil {
		return err
	}
	if (zt == nil) != (dzt == nil) {
		return fmt.Errorf("%s: dz must be given exactly when z is (z given: %v, dz given: %v)", op, zt != nil, dzt != nil)
	}
	if zt != nil {
		if err := wantShape(zt, op+" z", yt.shape...); err != nil {
			return err
		}
		if err := wantShape(dzt, op+" dz", yt.shape...); err != nil {
			return err
		}
	}
	rows, n := lastDim(yt)
	dw, err := be.optF32(dweight, op+" dweight")
	if err != nil {
		return err
	}
	if dw != nil {
		if err := wantShape(dw, op+" dweight", n); err != nil {
			return err
		}
	}
	if groupSize <= 0 || n%groupSize != 0 {
		return fmt.Errorf("%s: group size %d does not divide the last dimension %d", op, groupSize, n)
	}
	if err := checkEps(op, eps); err != nil {
		return err
	}
	e := float64(eps)
	sums := be.fixedBlockSums(rows, n, func(lo, hi int, acc []float64) {
		g := make([]float64, groupSize)   // y·silu(z)
		sig := make([]float64, groupSize) // σ(z), one exponential per element
		for r := lo; r < hi; r++ {
			for c0 := 0; c0 < n; c0 += groupSize {
				i0 := r*n + c0
				ys, ws, ds := yt.f32[i0:i0+groupSize], w.f32[c0:c0+groupSize], gt.f32[i0:i0+groupSize]
				var ss float64
				for j, yv := range ys {
					v := float64(yv)
					if zt != nil {
						zv := float64(zt.f32[i0+j])
						sig[j] = logistic(zv)
						v *= zv * sig[j]
					}
					g[j] = v
					ss += v * v
				}
				inv := 1 / math.Sqrt(ss/float64(groupSize)+e)
				var proj float64 // Σ w·dout·g
				for j, wv := range ws {
					proj += float64(wv) * float64(ds[j]) * g[j]
				}
				coef := inv * inv * inv / float64(groupSize) * proj
				for j, dv := range ds {
					d := float64(dv)
					acc[c0+j] += d * g[j] * inv
					dg := inv*float64(ws[j])*d - g[j]*coef
					if zt == nil {
						dyt.f32[i0+j] = float32(dg)
						continue
					}
					zv, sv := float64(zt.f32[i0+j]), sig[j]
					dyt.f32[i0+j] = float32(dg * zv * sv)
					dzt.f32[i0+j] = float32(dg * float64(ys[j]) * sv * (1 + zv*(1-sv)))
				}
			}
		}
	})
	if dw != nil {
		addFloat64Sums(dw.f32, sums)
	}
	return nil
}

// widenedF32 returns t's elements as float32: its own storage when F32, a
// widenedF32 copy when BF16.
func (be *Backend) widenedF32(t *Tensor) []float32 {
	if t.dtype == kernels.F32 {
		return t.f32
	}
	out := make([]float32, len(t.bf16))
	be.parallelFor(len(out), 1<<16, func(lo, hi int) { bf16ToF32(out[lo:hi], t.bf16[lo:hi]) })
	return out
}

// SSDChunkScanBackward writes dx, ddt, dB and dC and accumulates dA and dD
// (dD optional, and nil when D is nil), the gradient of
// SSDChunkScan(y, x, dt, A, B, C, D, nil, chunk) given dy. x, B and C may
// be BF16 (widened exactly); the other operands and every gradient are
// F32. As the forward, it needs A ≤ 0 and dt ≥ 0.
//
// Each (batch, head) is one task. It runs the recurrence forward in
// float64 and keeps the state entering every piece of min(chunk, 16)
// tokens (ssdGradPiece); then, from the last piece to the first, it
// recomputes the piece's states from the saved one (the same float64
// arithmetic, so bit for bit: the result does not depend on chunk) and
// walks its tokens backwards with G = ∂L/∂S_t (SPEC §3):
//
//	G += gy_t ⊗ C_t;  dx̄_t = G·B_t;  dB_t = Gᵀ·x̄_t;  da_t = exp(a_t)·⟨G, S_{t−1}⟩;
//	dC_t = S_tᵀ·gy_t = exp(a_t)·S_{t−1}ᵀ·gy_t + (x̄_t·gy_t)·B_t;  G ← exp(a_t)·G
//
// with x̄ = dt·x and a = dt·A ≤ 0, then dx = dt·dx̄ + D·gy,
// ddt = A·da + ⟨dx̄, x⟩, dA += Σ dt·da, dD += Σ ⟨gy, x⟩. The decay's
// gradient comes from the recurrent formula, never from a reverse
// cumulative sum; the only exponentials are the per-token decays
// exp(a_t) ≤ 1. Memory per worker is ⌈L/piece⌉ + piece + 1 states of
// headdim × dstate float64. A group's dB and dC sum its heads in head
// order (through a float64 buffer of every head's share when a group has
// several heads); dA and dD sum the batch in order.
func (be *Backend) SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D kernels.Tensor, chunk int) error {
	const op = "ssdchunkscan backward"
	var err error
	load := func(t kernels.Tensor, name string, optional, bf16 bool) *Tensor {
		if err != nil {
			return nil
		}
		var ct *Tensor
		switch {
		case optional:
			ct, err = be.optF32(t, op+" "+name)
		case bf16:
			ct, err = be.tensor(t, op+" "+name)
		default:
			ct, err = be.f32Tensor(t, op+" "+name)
		}
		return ct
	}
	dxt, ddtt, dAt := load(dx, "dx", false, false), load(ddt, "ddt", false, false), load(dA, "dA", false, false)
	dBt, dCt, dDt := load(dB, "dB", false, false), load(dC, "dC", false, false), load(dD, "dD", true, false)
	dyt, xt, dtt := load(dy, "dy", false, false), load(x, "x", false, true), load(dt, "dt", false, false)
	At, Bt, Ct, Dt := load(A, "A", false, false), load(B, "B", false, true), load(C, "C", false, true), load(D, "D", true, false)
	if err != nil {
		return err
	}
	if len(xt.shape) != 4 {
		return fmt.Errorf("%s: x must be [batch, seqlen, heads, headdim], got %v", op, xt.shape)
	}
	if len(Bt.shape) != 4 {
		return fmt.Errorf("%s: B must be [batch, seqlen, groups, dstate], got %v", op, Bt.shape)
	}
	nb, L, H, P := xt.shape[0], xt.shape[1], xt.shape[2], xt.shape[3]
	G, N := Bt.shape[2], Bt.shape[3]
	if H%G != 0 {
		return fmt.Errorf("%s: %d heads is not a multiple of %d groups", op, H, G)
	}
	if Dt == nil && dDt != nil {
		return fmt.Errorf("%s: dD given without D", op)
	}
	for _, c := range []struct {
		t     *Tensor
		name  string
		shape []int
	}{
		{dyt, "dy", xt.shape}, {dxt, "dx", xt.shape},
		{dtt, "dt", []int{nb, L, H}}, {ddtt, "ddt", []int{nb, L, H}},
		{At, "A", []int{H}}, {dAt, "dA", []int{H}},
		{Ct, "C", Bt.shape}, {dBt, "dB", Bt.shape}, {dCt, "dC", Bt.shape},
		{Dt, "D", []int{H}}, {dDt, "dD", []int{H}},
	} {
		if c.t != nil {
			if err := wantShape(c.t, op+" "+c.name, c.shape...); err != nil {
				return err
			}
		}
	}
	if chunk <= 0 {
		return fmt.Errorf("%s: chunk length %d, want > 0", op, chunk)
	}
	for h, a := range At.f32 {
		if a > 0 {
			return fmt.Errorf("%s: A[%d] = %g > 0; the chunked scan needs A ≤ 0 (decays ≤ 1)", op, h, a)
		}
	}
	for i, d := range dtt.f32 {
		if d < 0 {
			return fmt.Errorf("%s: dt element %d = %g < 0; the chunked scan needs dt ≥ 0 (decays ≤ 1)", op, i, d)
		}
	}
	xs, Bs, Cs := be.widenedF32(xt), be.widenedF32(Bt), be.widenedF32(Ct)

	// States are saved every Q tokens: the caller's chunk, in pieces of at
	// most ssdGradPiece tokens (see ssdGradPiece).
	Q := min(chunk, ssdGradPiece, L)
	pieces := (L + Q - 1) / Q
	rep, PN := H/G, P*N
	// dB and dC of a group with several heads go through every head's
	// share, [b, l, h, n] in float64; with one head per group they are
	// written directly.
	var dBh, dCh []float64
	if rep > 1 {
		dBh, dCh = make([]float64, nb*L*H*N), make([]float64, nb*L*H*N)
	}
	sumA, sumD := make([]float64, nb*H), make([]float64, nb*H)
	type buffers struct {
		saved  []float64 // [pieces][P·N]: the state entering each piece
		states []float64 // [Q][P·N]: S_{t0−1} … S_{t1−2} of one piece [t0, t1)
		grad   []float64 // [P·N]: G
		b, c   []float64 // B_t, C_t widened to float64
		stepB  []float64 // B_t widened, for step
		db, dc []float64 // one token's dB, and S_{t−1}ᵀ·gy_t
	}
	scratch := make([]*buffers, be.workerCount(nb*H))
	be.parallelTasks(nb*H, func(wk, task int) {
		if scratch[wk] == nil {
			scratch[wk] = &buffers{
				saved: make([]float64, pieces*PN), states: make([]float64, Q*PN), grad: make([]float64, PN),
				b: make([]float64, N), c: make([]float64, N), db: make([]float64, N), dc: make([]float64, N),
				stepB: make([]float64, N),
			}
		}
		buf := scratch[wk]
		bi, h := task/H, task%H
		g := h / rep
		a := float64(At.f32[h])
		var dh float64
		if Dt != nil {
			dh = float64(Dt.f32[h])
		}
		xAt := func(t int) []float32 { return xs[((bi*L+t)*H+h)*P:][:P] }
		bAt := func(t int) []float32 { return Bs[((bi*L+t)*G+g)*N:][:N] }
		cAt := func(t int) []float32 { return Cs[((bi*L+t)*G+g)*N:][:N] }
		dtAt := func(t int) float64 { return float64(dtt.f32[(bi*L+t)*H+h]) }
		// step writes next = exp(a_t)·S + x̄_t ⊗ B_t (next may be S).
		step := func(next, S []float64, t int) {
			d := dtAt(t)
			e := math.Exp(min(d*a, 0))
			bt := buf.stepB
			for j, v := range bAt(t) {
				bt[j] = float64(v)
			}
			for i, xv := range xAt(t) {
				ssdStateRow(next[i*N:][:N], S[i*N:][:N], bt, e, d*float64(xv))
			}
		}

		// Forward: the state entering each piece.
		clear(buf.saved[:PN])
		for c := 1; c < pieces; c++ {
			next := buf.saved[c*PN:][:PN]
			copy(next, buf.saved[(c-1)*PN:][:PN])
			for t := (c - 1) * Q; t < c*Q; t++ {
				step(next, next, t)
			}
		}

		Gs := buf.grad
		clear(Gs)
		var accA, accD float64
		for c := pieces - 1; c >= 0; c-- {
			t0, t1 := c*Q, min(L, (c+1)*Q)
			copy(buf.states[:PN], buf.saved[c*PN:][:PN])
			for t := t0 + 1; t < t1; t++ {
				step(buf.states[(t-t0)*PN:][:PN], buf.states[(t-t0-1)*PN:][:PN], t-1)
			}
			for t := t1 - 1; t >= t0; t-- {
				Sp := buf.states[(t-t0)*PN:][:PN] // S_{t−1}
				d := dtAt(t)
				e := math.Exp(min(d*a, 0))
				bt, ct, dbt, dct := buf.b, buf.c, buf.db, buf.dc
				for j, v := range bAt(t) {
					bt[j] = float64(v)
				}
				for j, v := range cAt(t) {
					ct[j] = float64(v)
				}
				clear(dbt)
				clear(dct)
				gy := dyt.f32[((bi*L+t)*H+h)*P:][:P]
				xv := xAt(t)
				dxr := dxt.f32[((bi*L+t)*H+h)*P:][:P]
				var dot, dtx, xgy float64
				for i := range P {
					gyi, xi := float64(gy[i]), float64(xv[i])
					dxb, dr := ssdGradRow(Gs[i*N:][:N], Sp[i*N:][:N], ct, bt, dct, dbt, gyi, d*xi, e)
					dot += dr
					dxr[i] = float32(d*dxb + dh*gyi)
					dtx += dxb * xi
					xgy += gyi * xi
				}
				accD += xgy
				// dC_t = S_tᵀ·gy_t with S_t = e·S_{t−1} + x̄_t ⊗ B_t.
				for j := range N {
					dct[j] = e*dct[j] + d*xgy*bt[j]
				}
				da := e * dot
				ddtt.f32[(bi*L+t)*H+h] = float32(a*da + dtx)
				accA += d * da
				if rep == 1 {
					for j := range N {
						dBt.f32[((bi*L+t)*G+g)*N+j] = float32(dbt[j])
						dCt.f32[((bi*L+t)*G+g)*N+j] = float32(dct[j])
					}
				} else {
					copy(dBh[((bi*L+t)*H+h)*N:][:N], dbt)
					copy(dCh[((bi*L+t)*H+h)*N:][:N], dct)
				}
			}
		}
		sumA[task], sumD[task] = accA, accD
	})
	if rep > 1 {
		be.parallelFor(nb*L, max(1, 4096/(H*N)), func(lo, hi int) {
			for r := lo; r < hi; r++ {
				for g := range G {
					for j := range N {
						var sb, sc float64
						for h := g * rep; h < (g+1)*rep; h++ {
							sb += dBh[(r*H+h)*N+j]
							sc += dCh[(r*H+h)*N+j]
						}
						dBt.f32[(r*G+g)*N+j] = float32(sb)
						dCt.f32[(r*G+g)*N+j] = float32(sc)
					}
				}
			}
		})
	}
	for h := range H {
		var sa, sd float64
		for bi := range nb {
			sa += sumA[bi*H+h]
			sd += sumD[bi*H+h]
		}
		dAt.f32[h] = float32(float64(dAt.f32[h]) + sa)
		if dDt != nil {
			dDt.f32[h] = float32(float64(dDt.f32[h]) + sd)
		}
	}
	return nil
}

// ssdGradPiece is the most tokens whose states the scan's backward keeps
// at once: 16 states of 80×80 float64 (Phi-2's heads) are 820 KB, which
// stay in a core's L2 cache while the piece is walked backwards; a whole
// chunk of 64 would not.
const ssdGradPiece = 16

// ssdStateRow is one row of a state update: row = e·prev + xb·b (row may
// be prev).
func ssdStateRow(row, prev, b []float64, e, xb float64) {
	n := len(row)
	prev, b = prev[:n], b[:n]
	j := 0
	for ; j+4 <= n; j += 4 {
		r, p, bb := row[j:j+4:j+4], prev[j:j+4:j+4], b[j:j+4:j+4]
		r[0], r[1], r[2], r[3] = e*p[0]+xb*bb[0], e*p[1]+xb*bb[1], e*p[2]+xb*bb[2], e*p[3]+xb*bb[3]
	}
	for ; j < n; j++ {
		row[j] = e*prev[j] + xb*b[j]
	}
}

// ssdGradRow is one row i of a token's backward step on G (the gradient of
// the state S_t, updated in place to exp(a_t)·G for token t−1), with
// gyi = dy_t[i], xb = dt_t·x_t[i] and prow = S_{t−1}[i,:]:
//
//	gv = G[i,:] + gyi·C_t;  sg += prow·gyi;  dB_t += gv·xb;  G[i,:] = e·gv
//
// returning dx̄_t[i] = gv·B_t and this row's share ⟨gv, S_{t−1}[i,:]⟩ of
// the decay's gradient (sg sums S_{t−1}ᵀ·gy_t, from which the caller
// forms dC_t). The sums run as four interleaved float64 chains (a fixed
// order: the same bits for any worker count), which keeps the adds'
// latency off the critical path.
func ssdGradRow(row, prow, ct, bt, sg, dbt []float64, gyi, xb, e float64) (dxb, dot float64) {
	n := len(row)
	prow, ct, bt, sg, dbt = prow[:n], ct[:n], bt[:n], sg[:n], dbt[:n]
	var x0, x1, x2, x3, d0, d1, d2, d3 float64
	j := 0
	for ; j+4 <= n; j += 4 {
		r, p := row[j:j+4:j+4], prow[j:j+4:j+4]
		c, b, s, db := ct[j:j+4:j+4], bt[j:j+4:j+4], sg[j:j+4:j+4], dbt[j:j+4:j+4]
		g0, g1, g2, g3 := r[0]+gyi*c[0], r[1]+gyi*c[1], r[2]+gyi*c[2], r[3]+gyi*c[3]
		s[0] += p[0] * gyi
		s[1] += p[1] * gyi
		s[2] += p[2] * gyi
		s[3] += p[3] * gyi
		x0 += g0 * b[0]
		x1 += g1 * b[1]
		x2 += g2 * b[2]
		x3 += g3 * b[3]
		db[0] += g0 * xb
		db[1] += g1 * xb
		db[2] += g2 * xb
		db[3] += g3 * xb
		d0 += g0 * p[0]
		d1 += g1 * p[1]
		d2 += g2 * p[2]
		d3 += g3 * p[3]
		r[0], r[1], r[2], r[3] = g0*e, g1*e, g2*e, g3*e
	}
	for ; j < n; j++ {
		g := row[j] + gyi*ct[j]
		sg[j] += prow[j] * gyi
		x0 += g * bt[j]
		dbt[j] += g * xb
		d0 += g * prow[j]
		row[j] = g * e
	}
	return (x0 + x1) + (x2 + x3), (d0 + d1) + (d2 + d3)
}
