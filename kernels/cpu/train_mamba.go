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
// max(1, 32768/n) rows (32768 elements or more each, so the accumulators
// are a small part of the work): the result depends on the shape alone,
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
						dp *= siluGrad(pre[ch])
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
// It is the chunked algorithm's backward, in parallel over batch × heads.
// Each task runs the chunks forward to keep the (float32) state entering
// each one, as SSDChunkScan computes it; then, from the last chunk to the
// first, it recomputes what a chunk needs from that state and carries
// the gradient of the state backwards from chunk to chunk
// (ssdGradWork.backward has the formulas). Per chunk that is ten matrix
// products on the gemm micro-kernel (float32, as the forward's) and O(q²)
// float64 work for the decay's gradient, which follows from the
// recurrent formula da_t = exp(a_t)·⟨∂L/∂S_t, S_{t−1}⟩ regrouped into
// sums of products, never from a difference of cumulative sums. Every
// exponent is dt·A ≤ 0: the segment decays are running products of the
// per-token decays. Then dx = dt·dx̄ + D·dy, ddt = A·da + ⟨dx̄, x⟩,
// dA += Σ dt·da, dD += Σ ⟨dy, x⟩ (float64 sums). A group's dB and dC sum
// its heads in head order (through a float64 buffer of every head's
// share when a group has several heads); dA and dD sum the batch in
// order. The result is the same, bit for bit, for any number of workers.
// Memory per worker: the chunks' entering states (⌈L/chunk⌉·P·N floats)
// and O(chunk·(chunk + P + N)) of buffers.
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

	Q := min(chunk, L)
	chunks := (L + Q - 1) / Q
	rep := H / G
	// dB and dC of a group with several heads go through every head's
	// share, [b, l, h, n] in float64; with one head per group they are
	// written directly.
	var dBh, dCh []float64
	if rep > 1 {
		dBh, dCh = make([]float64, nb*L*H*N), make([]float64, nb*L*H*N)
	}
	sumA, sumD := make([]float64, nb*H), make([]float64, nb*H)
	scratch := make([]*ssdGradWork, be.workerCount(nb*H))
	be.parallelTasks(nb*H, func(wk, task int) {
		if scratch[wk] == nil {
			scratch[wk] = newSSDGradWork(Q, chunks, P, N)
		}
		wb := scratch[wk]
		bi, h := task/H, task%H
		g := h / rep
		a := float64(At.f32[h])
		var dh float64
		if Dt != nil {
			dh = float64(Dt.f32[h])
		}
		ldx, ldb := H*P, G*N
		chunkOf := func(c int) ssdGradChunk {
			t0 := c * Q
			return ssdGradChunk{
				q:  min(Q, L-t0),
				x:  xs[((bi*L+t0)*H+h)*P:],
				dy: dyt.f32[((bi*L+t0)*H+h)*P:],
				dt: dtt.f32[(bi*L+t0)*H+h:],
				B:  Bs[((bi*L+t0)*G+g)*N:],
				C:  Cs[((bi*L+t0)*G+g)*N:],
				dx: dxt.f32[((bi*L+t0)*H+h)*P:], ddt: ddtt.f32[(bi*L+t0)*H+h:],
				ldx: ldx, ldb: ldb, ldt: H,
			}
		}
		// Forward: the state entering each chunk.
		clear(wb.states[:P*N])
		for c := 1; c < chunks; c++ {
			wb.advance(chunkOf(c-1), a, wb.states[(c-1)*P*N:][:P*N], wb.states[c*P*N:][:P*N])
		}
		// Backward, from the last chunk to the first.
		clear(wb.gout)
		var accA, accD float64
		for c := chunks - 1; c >= 0; c-- {
			ch := chunkOf(c)
			sa, sd := wb.backward(ch, a, dh, wb.states[c*P*N:][:P*N], c > 0, c < chunks-1)
			accA += sa
			accD += sd
			t0 := c * Q
			for i := range ch.q {
				dbi, dci := wb.dB[i*N:][:N], wb.dC[i*N:][:N]
				if rep == 1 {
					r := ((bi*L+t0+i)*G + g) * N
					copy(dBt.f32[r:r+N], dbi)
					copy(dCt.f32[r:r+N], dci)
					continue
				}
				r := ((bi*L+t0+i)*H + h) * N
				for j := range N {
					dBh[r+j], dCh[r+j] = float64(dbi[j]), float64(dci[j])
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

// ssdGradChunk is one chunk of one (batch, head) of the scan's backward:
// its q tokens' operands (x and dy rows of stride ldx, B and C of stride
// ldb, dt of stride ldt) and where its dx and ddt go.
type ssdGradChunk struct {
	q               int
	x, dy, dt, B, C []float32
	dx, ddt         []float32
	ldx, ldb, ldt   int
}

// ssdGradWork is one worker's buffers for the scan's backward, for chunks
// of at most Q tokens and states of P×N.
type ssdGradWork struct {
	Q, P, N int
	states  []float32 // [chunks][P×N]: the state entering each chunk
	gout    []float32 // [P×N]: ∂L/∂(state leaving the chunk) from later tokens
	// Per token of a chunk, in float64: the per-token decay exp(a_i), the
	// decay from the chunk's entry exp(cs_i) and to its exit
	// exp(cs_last − cs_i), and the decay gradient's pieces.
	dt, dtw        []float64 // dt_i, dt_i·out_i
	decay, in, out []float64
	suf, rect      []float64 // column suffix sums (then da); R_t
	inl, v         []float64 // in_l·⟨dy_l, H·C_l⟩; out_s·⟨x̄_s, Gout·B_s⟩
	xb, xw, dye    []float32 // [Q×P]: x̄ = dt·x, out∘x̄, in∘dy
	bw             []float32 // [Q×N]: out∘B
	cb, dxt        []float32 // [Q×Q]: C·Bᵀ and dY·X̄ᵀ, then M and K in place
	dxb, bg, cht   []float32 // [Q×P]: dX̄, (out∘B)·Goutᵀ, C·Hᵀ
	dB, dC         []float32 // [Q×N]
}

func newSSDGradWork(Q, chunks, P, N int) *ssdGradWork {
	f64 := func(n int) []float64 { return make([]float64, n) }
	f32 := func(n int) []float32 { return make([]float32, n) }
	return &ssdGradWork{
		Q: Q, P: P, N: N,
		states: f32(chunks * P * N), gout: f32(P * N),
		dt: f64(Q), dtw: f64(Q), decay: f64(Q), in: f64(Q), out: f64(Q), suf: f64(Q), rect: f64(Q), inl: f64(Q), v: f64(Q),
		xb: f32(Q * P), xw: f32(Q * P), dye: f32(Q * P), bw: f32(Q * N),
		cb: f32(Q * Q), dxt: f32(Q * Q),
		dxb: f32(Q * P), bg: f32(Q * P), cht: f32(Q * P),
		dB: f32(Q * N), dC: f32(Q * N),
	}
}

// decays fills dt, decay, in and out for chunk ch and head decay a ≤ 0 (dt ≥ 0):
// every exponent is dt·a ≤ 0, and the segment decays are running products
// of the per-token ones, never exp(x)·exp(−y). It returns exp(cs_last).
func (w *ssdGradWork) decays(ch ssdGradChunk, a float64) float64 {
	q := ch.q
	run := 1.0
	for i := range q {
		w.dt[i] = float64(ch.dt[i*ch.ldt])
		w.decay[i] = math.Exp(min(w.dt[i]*a, 0))
		run *= w.decay[i]
		w.in[i] = run
	}
	run = 1.0
	for i := q - 1; i >= 0; i-- {
		w.out[i] = run
		run *= w.decay[i]
	}
	return w.in[q-1]
}

// scaleRowsInto writes dst[i,:] = f[i]·src[i,:] for len(f) rows of n
// (src of stride lds, dst packed), each product in float64 and rounded
// once; when dst2 is not nil it also writes dst2[i,:] = f2[i]·src[i,:].
func scaleRowsInto(dst []float32, f []float64, dst2 []float32, f2 []float64, src []float32, lds, n int) {
	for i, fi := range f {
		s, d := src[i*lds:][:n], dst[i*n:][:n]
		if dst2 == nil {
			for j, v := range s {
				d[j] = float32(fi * float64(v))
			}
			continue
		}
		d2, fi2 := dst2[i*n:][:n], f2[i]
		for j, v := range s {
			d[j], d2[j] = float32(fi*float64(v)), float32(fi2*float64(v))
		}
	}
}

// advance writes the state leaving chunk ch into next from the state
// entering it, S: next = exp(cs_last)·S + X̄ᵀ·(out∘B).
func (w *ssdGradWork) advance(ch ssdGradChunk, a float64, S, next []float32) {
	q, P, N := ch.q, w.P, w.N
	last := float32(w.decays(ch, a))
	scaleRowsInto(w.xb, w.dt[:q], nil, nil, ch.x, ch.ldx, P)
	scaleRowsInto(w.bw, w.out[:q], nil, nil, ch.B, ch.ldb, N)
	for i, v := range S {
		next[i] = last * v
	}
	gemm(true, false, P, N, q, w.xb, P, w.bw, N, 1, next, N)
}

// backward runs chunk ch given the state entering it (hin, zero when
// !hasIn) and w.gout, the gradient of the state leaving it (zero when
// !hasOut), which it replaces by the gradient of the state entering it.
// It writes the chunk's dx and ddt, leaves dB and dC in w.dB and w.dC,
// and returns the chunk's shares of dA (Σ dt·da) and dD (Σ ⟨dy, x⟩).
//
// With X̄ = dt∘x, L[l,s] = exp(cs_l − cs_s) for s ≤ l (zero above),
// M = L∘(C·Bᵀ) and K = L∘(dY·X̄ᵀ):
//
//	dX̄ = Mᵀ·dY + out∘(B·Goutᵀ)      dC = K·B + in∘(dY·H)
//	dB = Kᵀ·C + out∘(X̄·Gout)        G_in = exp(cs_last)·Gout + (in∘dY)ᵀ·C
//
// and the decay's gradient da_t = exp(a_t)·⟨G_t, S_{t−1}⟩ expands, with
// every exponential of a product folding into one segment decay, to
//
//	da_t = Σ_{s<t≤l} M[l,s]·(dY·X̄ᵀ)[l,s] + Σ_{l≥t} in_l·⟨dy_l, H·C_l⟩
//	     + Σ_{s<t} out_s·⟨x̄_s, Gout·B_s⟩ + exp(cs_last)·⟨Gout, H⟩
//
// four sums of products in float64 — a rectangle of the lower triangle
// (its columns' suffix sums), a suffix, a prefix and a constant — with no
// difference of cumulative sums to cancel.
func (w *ssdGradWork) backward(ch ssdGradChunk, a, dh float64, hin []float32, hasIn, hasOut bool) (sumA, sumD float64) {
	q, P, N := ch.q, w.P, w.N
	last := w.decays(ch, a)
	dtw := w.dtw[:q]
	for i, d := range w.dt[:q] {
		dtw[i] = d * w.out[i]
	}
	scaleRowsInto(w.xb, w.dt[:q], w.xw, dtw, ch.x, ch.ldx, P)
	scaleRowsInto(w.dye, w.in[:q], nil, nil, ch.dy, ch.ldx, P)
	scaleRowsInto(w.bw, w.out[:q], nil, nil, ch.B, ch.ldb, N)

	// C·Bᵀ and dY·X̄ᵀ, then M and K in place, and the decay gradient's
	// rectangle sums R_t = Σ_{s<t} Σ_{l≥t} M[l,s]·(dY·X̄ᵀ)[l,s], walking the
	// rows up with each column's suffix sum in suf.
	cb, dxt := w.cb[:q*q], w.dxt[:q*q]
	gemm(false, true, q, q, w.N, ch.C, ch.ldb, ch.B, ch.ldb, 0, cb, q)
	gemm(false, true, q, q, P, ch.dy, ch.ldx, w.xb, P, 0, dxt, q)
	suf, rect := w.suf[:q], w.rect[:q]
	clear(suf)
	for l := q - 1; l >= 0; l-- {
		mrow, krow := cb[l*q:][:q], dxt[l*q:][:q]
		seg := 1.0 // exp(cs_l − cs_s), walking s down from l
		for s := l; s >= 0; s-- {
			m := seg * float64(mrow[s])
			k := seg * float64(krow[s])
			if s < l {
				suf[s] += m * float64(krow[s])
			}
			mrow[s], krow[s] = float32(m), float32(k)
			seg *= w.decay[s]
		}
		for s := l + 1; s < q; s++ {
			mrow[s], krow[s] = 0, 0
		}
		var r float64
		for s := range l {
			r += suf[s]
		}
		rect[l] = r
	}

	dxb, dB, dC := w.dxb[:q*P], w.dB[:q*N], w.dC[:q*N]
	gemm(true, false, q, P, q, cb, q, ch.dy, ch.ldx, 0, dxb, P) // Mᵀ·dY
	gemm(false, false, q, N, q, dxt, q, ch.B, ch.ldb, 0, dC, N) // K·B
	gemm(true, false, q, N, q, dxt, q, ch.C, ch.ldb, 0, dB, N)  // Kᵀ·C
	var constant float64
	v := w.v[:q]
	clear(v)
	if hasOut {
		bg := w.bg[:q*P]
		gemm(false, true, q, P, N, w.bw, N, w.gout, N, 0, bg, P) // (out∘B)·Goutᵀ
		for s := range q {
			var vs float64
			for p, g := range bg[s*P : (s+1)*P] {
				vs += float64(w.xb[s*P+p]) * float64(g)
				dxb[s*P+p] += g
			}
			v[s] = vs
		}
		gemm(false, false, q, N, P, w.xw, P, w.gout, N, 1, dB, N) // + (out∘X̄)·Gout
	}
	inTerm := w.inl[:q]
	clear(inTerm)
	if hasIn {
		chm := w.cht[:q*P]
		gemm(false, true, q, P, N, ch.C, ch.ldb, hin, N, 0, chm, P) // C·Hᵀ
		for l := range q {
			var ul float64
			for p, c := range chm[l*P : (l+1)*P] {
				ul += float64(w.dye[l*P+p]) * float64(c)
			}
			inTerm[l] = ul
		}
		gemm(false, false, q, N, P, w.dye, P, hin, N, 1, dC, N) // + (in∘dY)·H
		if hasOut {
			for i, g := range w.gout {
				constant += float64(g) * float64(hin[i])
			}
			constant *= last
		}
	}

	// G_in = exp(cs_last)·Gout + (in∘dY)ᵀ·C.
	if hasOut {
		l32 := float32(last)
		for i := range w.gout {
			w.gout[i] *= l32
		}
	}
	gemm(true, false, P, N, q, w.dye, P, ch.C, ch.ldb, 1, w.gout, N)

	// Per token: da, ddt, dx.
	var prefixV, suffix float64
	da := w.suf[:q] // the column sums are spent: reuse
	for t := q - 1; t >= 0; t-- {
		suffix += inTerm[t]
		da[t] = rect[t] + suffix + constant
	}
	for t := range q {
		da[t] += prefixV
		prefixV += v[t]
		d := w.dt[t]
		xr, gyr, dxr := ch.x[t*ch.ldx:][:P], ch.dy[t*ch.ldx:][:P], ch.dx[t*ch.ldx:][:P]
		var dtx, xgy float64
		for p, g := range dxb[t*P : (t+1)*P] {
			xv, gy := float64(xr[p]), float64(gyr[p])
			dtx += float64(g) * xv
			xgy += gy * xv
			dxr[p] = float32(d*float64(g) + dh*gy)
		}
		ch.ddt[t*ch.ldt] = float32(a*da[t] + dtx)
		sumA += d * da[t]
		sumD += xgy
	}
	return sumA, sumD
}
