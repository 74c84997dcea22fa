package cpu

import (
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// softplus is log(1+eˣ) in float64, x itself past 20 (PyTorch's threshold).
func softplus(x float64) float64 {
	if x > 20 {
		return x
	}
	return math.Log1p(math.Exp(x))
}

// DtSoftplus writes softplus(dtRaw[..., h] + bias[h]); bias may be nil.
func (be *Backend) DtSoftplus(out, dtRaw, bias kernels.Tensor) error {
	o, err := be.f32Tensor(out, "dtsoftplus out")
	if err != nil {
		return err
	}
	d, err := be.f32Tensor(dtRaw, "dtsoftplus dt")
	if err != nil {
		return err
	}
	if !slices.Equal(o.shape, d.shape) {
		return fmt.Errorf("dtsoftplus: dt %v and out %v differ in shape", d.shape, o.shape)
	}
	b, err := be.optF32(bias, "dtsoftplus bias")
	if err != nil {
		return err
	}
	_, h := lastDim(d)
	if b != nil {
		if err := wantShape(b, "dtsoftplus bias", h); err != nil {
			return err
		}
	}
	be.parallelFor(len(d.f32), grainElementwise/8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			v := float64(d.f32[i])
			if b != nil {
				v += float64(b.f32[i%h])
			}
			o.f32[i] = float32(softplus(v))
		}
	})
	return nil
}

// CausalConv1d writes the depthwise causal convolution of u[b,l,c] with
// weight[c,k] and bias[c] (may be nil), summed in float64, then SiLU when
// silu is true: out[t,c] = bias[c] + Σ_{j<k} w[c,j]·u[t−k+1+j,c].
func (be *Backend) CausalConv1d(out, u, weight, bias kernels.Tensor, silu bool) error {
	o, err := be.f32Tensor(out, "causalconv1d out")
	if err != nil {
		return err
	}
	ut, err := be.f32Tensor(u, "causalconv1d u")
	if err != nil {
		return err
	}
	if len(ut.shape) != 3 {
		return fmt.Errorf("causalconv1d: u must be [batch, seqlen, channels], got %v", ut.shape)
	}
	if !slices.Equal(o.shape, ut.shape) {
		return fmt.Errorf("causalconv1d: u %v and out %v differ in shape", ut.shape, o.shape)
	}
	nb, l, c := ut.shape[0], ut.shape[1], ut.shape[2]
	w, err := be.f32Tensor(weight, "causalconv1d weight")
	if err != nil {
		return err
	}
	if len(w.shape) != 2 || w.shape[0] != c {
		return fmt.Errorf("causalconv1d: weight must be [%d, k], got %v", c, w.shape)
	}
	k := w.shape[1]
	b, err := be.optF32(bias, "causalconv1d bias")
	if err != nil {
		return err
	}
	if b != nil {
		if err := wantShape(b, "causalconv1d bias", c); err != nil {
			return err
		}
	}
	if o.f32 != nil && &o.f32[0] == &ut.f32[0] {
		return fmt.Errorf("causalconv1d: out must not alias u")
	}
	// wT[j][c] = w[c][j], so that the inner loop runs along the channels.
	wT := make([]float64, k*c)
	for ch := range c {
		for j := range k {
			wT[j*c+ch] = float64(w.f32[ch*k+j])
		}
	}
	rows := nb * l
	be.parallelFor(rows, max(1, 8192/c), func(lo, hi int) {
		acc := make([]float64, c)
		for r := lo; r < hi; r++ {
			t := r % l
			if b != nil {
				for ch := range c {
					acc[ch] = float64(b.f32[ch])
				}
			} else {
				clear(acc)
			}
			for j := max(0, k-1-t); j < k; j++ {
				src := ut.f32[(r-k+1+j)*c : (r-k+2+j)*c]
				wj := wT[j*c : (j+1)*c]
				for ch, v := range src {
					acc[ch] += wj[ch] * float64(v)
				}
			}
			dst := o.f32[r*c : (r+1)*c]
			for ch, v := range acc {
				if silu {
					v /= 1 + math.Exp(-v)
				}
				dst[ch] = float32(v)
			}
		}
	})
	return nil
}

// ssdToken advances a P×N scan state S by one token of one head:
// S[p,:] = decay·S[p,:] + (dt·x[p])·b, y[p] = S[p,:]·c + dh·x[p], with
// P = len(x), N = len(b). Replaced by an assembly version where the CPU
// has one.
var ssdToken = ssdTokenGo

func ssdTokenGo(S, x, b, c, y []float32, decay, dt, dh float32) {
	N := len(b)
	c = c[:N]
	for p, xv := range x {
		row := S[p*N : (p+1)*N]
		xp := dt * xv
		var acc float32
		for n, bv := range b {
			v := decay*row[n] + xp*bv
			row[n] = v
			acc += v * c[n]
		}
		y[p] = acc + dh*xv
	}
}

// ssdOperands are the checked operands of a scan.
type ssdOperands struct {
	y, x, dt, A, B, C, D, state *Tensor
	nb, l, h, p, g, n           int
}

func (be *Backend) ssdOperands(op string, y, x, dt, A, B, C, D, state kernels.Tensor) (*ssdOperands, error) {
	var s ssdOperands
	var err error
	load := func(dst **Tensor, t kernels.Tensor, name string, optional bool) {
		if err != nil {
			return
		}
		if optional {
			*dst, err = be.optF32(t, op+" "+name)
		} else {
			*dst, err = be.f32Tensor(t, op+" "+name)
		}
	}
	load(&s.y, y, "y", false)
	load(&s.x, x, "x", false)
	load(&s.dt, dt, "dt", false)
	load(&s.A, A, "A", false)
	load(&s.B, B, "B", false)
	load(&s.C, C, "C", false)
	load(&s.D, D, "D", true)
	load(&s.state, state, "state", true)
	if err != nil {
		return nil, err
	}
	if len(s.x.shape) != 4 {
		return nil, fmt.Errorf("%s: x must be [batch, seqlen, heads, headdim], got %v", op, s.x.shape)
	}
	if len(s.B.shape) != 4 {
		return nil, fmt.Errorf("%s: B must be [batch, seqlen, groups, dstate], got %v", op, s.B.shape)
	}
	s.nb, s.l, s.h, s.p = s.x.shape[0], s.x.shape[1], s.x.shape[2], s.x.shape[3]
	s.g, s.n = s.B.shape[2], s.B.shape[3]
	if s.h%s.g != 0 {
		return nil, fmt.Errorf("%s: %d heads is not a multiple of %d groups", op, s.h, s.g)
	}
	checks := []struct {
		t     *Tensor
		name  string
		shape []int
	}{
		{s.y, "y", []int{s.nb, s.l, s.h, s.p}},
		{s.dt, "dt", []int{s.nb, s.l, s.h}},
		{s.A, "A", []int{s.h}},
		{s.B, "B", []int{s.nb, s.l, s.g, s.n}},
		{s.C, "C", []int{s.nb, s.l, s.g, s.n}},
		{s.D, "D", []int{s.h}},
		{s.state, "state", []int{s.nb, s.h, s.p, s.n}},
	}
	for _, c := range checks {
		if c.t != nil {
			if err := wantShape(c.t, op+" "+c.name, c.shape...); err != nil {
				return nil, err
			}
		}
	}
	if &s.y.f32[0] == &s.x.f32[0] {
		return nil, fmt.Errorf("%s: y must not alias x", op)
	}
	return &s, nil
}

// SSDRecurrence runs the Mamba-2 recurrence token by token, in parallel over
// batch × heads: S_t = exp(dt_t·A_h)·S_{t−1} + dt_t·x_t⊗B_t,
// y_t = S_t·C_t + D_h·x_t. The state is float32, decays are computed in
// float64.
func (be *Backend) SSDRecurrence(y, x, dt, A, B, C, D, state kernels.Tensor) error {
	s, err := be.ssdOperands("ssdrecurrence", y, x, dt, A, B, C, D, state)
	if err != nil {
		return err
	}
	P, N, H, G, L := s.p, s.n, s.h, s.g, s.l
	rep := H / G
	scratch := make([][]float32, be.workerCount(s.nb*H))
	be.parallelTasks(s.nb*H, func(w, task int) {
		b, h := task/H, task%H
		g := h / rep
		if scratch[w] == nil {
			scratch[w] = make([]float32, P*N)
		}
		S := scratch[w]
		if s.state != nil {
			copy(S, s.state.f32[task*P*N:(task+1)*P*N])
		} else {
			clear(S)
		}
		a := float64(s.A.f32[h])
		var dh float32
		if s.D != nil {
			dh = s.D.f32[h]
		}
		for t := range L {
			d := s.dt.f32[(b*L+t)*H+h]
			decay := float32(math.Exp(float64(d) * a))
			xt := s.x.f32[((b*L+t)*H+h)*P:][:P]
			bt := s.B.f32[((b*L+t)*G+g)*N:][:N]
			ct := s.C.f32[((b*L+t)*G+g)*N:][:N]
			yt := s.y.f32[((b*L+t)*H+h)*P:][:P]
			ssdToken(S, xt, bt, ct, yt, decay, d, dh)
		}
		if s.state != nil {
			copy(s.state.f32[task*P*N:(task+1)*P*N], S)
		}
	})
	return nil
}

// SSDChunkScan computes SSDRecurrence's function by the chunked algorithm
// (SPEC §3), in parallel over batch × heads, each head walking its chunks in
// order. Within a chunk of q ≤ chunk tokens, with cs the cumulative sum of
// a = dt·A from the chunk start:
//
//	y_l = Σ_{s≤l} (C_l·B_s)·exp(cs_l−cs_s)·dt_s·x_s + exp(cs_l)·H·C_l + D·x_l
//	H  ← exp(cs_last)·H + Σ_s exp(cs_last−cs_s)·dt_s·x_s⊗B_s
//
// Every decay is ≤ 1, so A ≤ 0 and dt ≥ 0 are required (an error
// otherwise; the recurrence has no such restriction). The segment decays
// exp(cs_l − cs_s) are formed in float64 as running products of the
// per-token decays exp(a_j) ≤ 1 (Π_{s<j≤l}), which is the same number
// without subtracting cumulative sums and with q exponentials per chunk
// instead of q²/2: nothing is ever split into exp(a)·exp(−b), nothing
// overflows, and tokens past l are skipped rather than masked with
// exp(−∞). The four products per chunk run on the gemm micro-kernel, with
// the operands packed once per chunk and the tiles above the diagonal
// skipped.
//
// On a CPU this form does more arithmetic than the recurrence: per token
// and head ≈ 4·chunk·N + 4·P·N flops against 4·P·N (46k against 26k at
// Phi-2 sizes, chunk 64); being matrix products it runs at about the
// recurrence's speed (BenchmarkSSDChunkScan, BenchmarkSSDRecurrence). It
// is here to mirror the GPU algorithm and to check it against the
// recurrence.
func (be *Backend) SSDChunkScan(y, x, dt, A, B, C, D, state kernels.Tensor, chunk int) error {
	s, err := be.ssdOperands("ssdchunkscan", y, x, dt, A, B, C, D, state)
	if err != nil {
		return err
	}
	if chunk <= 0 {
		return fmt.Errorf("ssdchunkscan: chunk length %d, want > 0", chunk)
	}
	// The chunked form clamps every exponent to ≤ 0: it equals the
	// recurrence only when every decay exp(dt·A) is ≤ 1.
	for h, a := range s.A.f32 {
		if a > 0 {
			return fmt.Errorf("ssdchunkscan: A[%d] = %g > 0; the chunked scan needs A ≤ 0 (decays ≤ 1), use SSDRecurrence", h, a)
		}
	}
	for i, d := range s.dt.f32 {
		if d < 0 {
			return fmt.Errorf("ssdchunkscan: dt element %d = %g < 0; the chunked scan needs dt ≥ 0 (decays ≤ 1), use SSDRecurrence", i, d)
		}
	}
	P, N, H, G, L := s.p, s.n, s.h, s.g, s.l
	Q := min(chunk, L)
	rep := H / G
	// Per-worker buffers. Operands of the four products are packed once per
	// chunk into the micro-kernel's strip layouts (packA, packB); M and
	// Xwᵀ are written straight into theirs.
	type buffers struct {
		decay []float64 // exp(dt·A) of the chunk's tokens
		dt    []float32 // dt of the chunk's tokens
		cA    []float32 // C packed as A: [Q×N]
		bT    []float32 // Bᵀ packed as B: k = N, Q columns
		g     []float32 // C·Bᵀ, [Q×Q] row-major, lower triangle used
		mA    []float32 // M = (C·Bᵀ)∘decay∘dt packed as A: [Q×Q]
		xB    []float32 // x packed as B: k = Q, P columns
		hB    []float32 // Hᵀ packed as B: k = N, P columns
		off   []float32 // C·Hᵀ, [Q×P]
		xwA   []float32 // Xwᵀ packed as A: [P×Q]
		bB    []float32 // B packed as B: k = Q, N columns
		hs    []float32 // [P×N] state
		tile  []float32
	}
	qm, qn := roundUp(Q, gemmMR), roundUp(Q, gemmNR)
	pm, pn, nn := roundUp(P, gemmMR), roundUp(P, gemmNR), roundUp(N, gemmNR)
	scratch := make([]*buffers, be.workerCount(s.nb*H))
	be.parallelTasks(s.nb*H, func(w, task int) {
		b, h := task/H, task%H
		g := h / rep
		if scratch[w] == nil {
			scratch[w] = &buffers{
				decay: make([]float64, Q), dt: make([]float32, Q),
				cA: make([]float32, qm*N), bT: make([]float32, N*qn), g: make([]float32, Q*Q),
				mA: make([]float32, qm*Q), xB: make([]float32, Q*pn), hB: make([]float32, N*pn),
				off: make([]float32, Q*P), xwA: make([]float32, pm*Q), bB: make([]float32, Q*nn),
				hs: make([]float32, P*N), tile: make([]float32, gemmMR*gemmNR),
			}
		}
		buf := scratch[w]
		hs, tile := buf.hs, buf.tile
		nonzero := s.state != nil // whether hs may hold a non-zero state
		if nonzero {
			copy(hs, s.state.f32[task*P*N:(task+1)*P*N])
		} else {
			clear(hs)
		}
		a := float64(s.A.f32[h])
		var dh float32
		if s.D != nil {
			dh = s.D.f32[h]
		}
		ldx, ldb := H*P, G*N
		for t0 := 0; t0 < L; t0 += Q {
			q := min(Q, L-t0)
			xc := s.x.f32[((b*L+t0)*H+h)*P:]
			yc := s.y.f32[((b*L+t0)*H+h)*P:]
			bc := s.B.f32[((b*L+t0)*G+g)*N:]
			cc := s.C.f32[((b*L+t0)*G+g)*N:]
			dtc := buf.dt[:q]
			for i := range dtc {
				dtc[i] = s.dt.f32[(b*L+t0+i)*H+h]
			}
			// decay[j] = exp(dt_j·A) ≤ 1 (float64): every segment decay below
			// is a running product of these, exp(cs_l − cs_s) = Π_{s<j≤l} decay[j].
			decay := buf.decay[:q]
			for i, d := range dtc {
				decay[i] = math.Exp(min(float64(d)*a, 0))
			}

			// G = C·Bᵀ on the tiles that touch the lower triangle.
			packA(false, cc, ldb, 0, 0, q, N, buf.cA)
			packB(true, bc, ldb, 0, 0, N, q, buf.bT)
			gm := buf.g[:q*q]
			for ir := 0; ir < q; ir += gemmMR {
				mr := min(gemmMR, q-ir)
				for jr := 0; jr < min(q, ir+mr); jr += gemmNR {
					tileProduct(N, buf.cA[ir*N:], buf.bT[jr*N:], gm[ir*q+jr:], q, mr, min(gemmNR, q-jr), false, tile)
				}
			}

			// M = G ∘ exp(cs_l − cs_s) ∘ dt_s on s ≤ l, zero above, packed
			// as A (strips of gemmMR rows, k-major): y = M·x, where strip r
			// only needs k < its last row + 1.
			mA := buf.mA[:roundUp(q, gemmMR)*q]
			if q%gemmMR != 0 {
				clear(mA[(q/gemmMR)*gemmMR*q:])
			}
			for l := range q {
				base, i := (l/gemmMR)*gemmMR*q, l%gemmMR
				row := gm[l*q : l*q+l+1]
				seg := 1.0 // exp(cs_l − cs_s), walking s down from l
				for si := l; si >= 0; si-- {
					mA[base+si*gemmMR+i] = row[si] * float32(seg) * dtc[si]
					seg *= decay[si]
				}
				for si := l + 1; si < min(q, (l/gemmMR+1)*gemmMR); si++ {
					mA[base+si*gemmMR+i] = 0
				}
			}
			packB(false, xc, ldx, 0, 0, q, P, buf.xB)
			for ir := 0; ir < q; ir += gemmMR {
				mr := min(gemmMR, q-ir)
				kr := min(q, ir+gemmMR)
				for jr := 0; jr < P; jr += gemmNR {
					tileProduct(kr, buf.mA[ir*q:], buf.xB[jr*q:], yc[ir*ldx+jr:], ldx, mr, min(gemmNR, P-jr), false, tile)
				}
			}

			// Off-diagonal: the state entering the chunk, and the skip term.
			off := buf.off[:q*P]
			if nonzero {
				packB(true, hs, N, 0, 0, N, P, buf.hB)
				packedProduct(q, P, N, buf.cA, buf.hB, off, P, false, tile)
			}
			in := 1.0 // exp(cs_l): decay from the chunk's entry to token l
			for l := range q {
				yr := yc[l*ldx : l*ldx+P]
				xr := xc[l*ldx : l*ldx+P]
				in *= decay[l]
				if nonzero {
					e := float32(in)
					or := off[l*P : (l+1)*P]
					for p := range yr {
						yr[p] += e*or[p] + dh*xr[p]
					}
				} else if dh != 0 {
					for p := range yr {
						yr[p] += dh * xr[p]
					}
				}
			}

			// State leaving the chunk: H ← exp(cs_last)·H + Xwᵀ·B with
			// Xw_s = x_s·dt_s·exp(cs_last − cs_s), Xwᵀ packed as A.
			xwA := buf.xwA[:pm*q]
			if P%gemmMR != 0 {
				clear(xwA[(P/gemmMR)*gemmMR*q:])
			}
			out := 1.0 // exp(cs_last − cs_s), walking s down from the last token
			for si := q - 1; si >= 0; si-- {
				f := float32(out) * dtc[si]
				for p, v := range xc[si*ldx : si*ldx+P] {
					xwA[(p/gemmMR)*gemmMR*q+si*gemmMR+p%gemmMR] = f * v
				}
				out *= decay[si]
			}
			if nonzero {
				e := float32(in) // exp(cs_last)
				for i := range hs {
					hs[i] *= e
				}
			}
			packB(false, bc, ldb, 0, 0, q, N, buf.bB)
			packedProduct(P, N, q, xwA, buf.bB, hs, N, nonzero, tile)
			nonzero = true
		}
		if s.state != nil {
			copy(s.state.f32[task*P*N:(task+1)*P*N], hs)
		}
	})
	return nil
}
