package distill

import "math"

// ssdShape describes one Mamba-2 scan (SPEC §3): n tokens, heads heads of
// size headDim (x [n, heads, headDim], dt [n, heads]), groups groups of
// state size dstate (B, C [n, groups, dstate]); head h reads group
// h/(heads/groups). The backward pass recomputes the states inside each
// chunk of chunk tokens from the state saved at its start.
type ssdShape struct {
	n, heads, headDim, groups, dstate, chunk int
}

func (s ssdShape) chunks() int     { return (s.n + s.chunk - 1) / s.chunk }
func (s ssdShape) stateSize() int  { return s.headDim * s.dstate }
func (s ssdShape) statesSize() int { return s.chunks() * s.heads * s.stateSize() }

// ssdStep advances a head's state S [headDim, dstate] by one token:
// S = e·S + (dt·x) ⊗ B. The forward pass and the backward's recomputation
// both go through it, so the recomputed states equal the forward's bit
// for bit.
func ssdStep(S []float64, e, dt float64, x, B []float32) {
	N := len(B)
	for i, xv := range x {
		xb := dt * float64(xv)
		row := S[i*N : (i+1)*N]
		for j, b := range B {
			row[j] = e*row[j] + xb*float64(b)
		}
	}
}

// ssdForward runs the recurrence in float64, per head,
//
//	S_t = exp(dt_t·A_h)·S_{t−1} + dt_t·x_t ⊗ B_t,  y_t = S_t·C_t + D_h·x_t,
//
// from a zero state and writes y [n, heads, headDim]. A is the negative
// decay (−exp(A_log)); D may be nil. When states is not nil
// ([chunks, heads, headDim·dstate]) the state entering each chunk is saved
// there for ssdBackward.
func ssdForward(p *pool, sh ssdShape, y, x, dt []float32, A []float64, B, C, D []float32, states []float64) {
	H, P, G, N := sh.heads, sh.headDim, sh.groups, sh.dstate
	rep, PN := H/G, sh.stateSize()
	p.tasks(H, func(_, h int) {
		g := h / rep
		S := make([]float64, PN)
		var d float64
		if D != nil {
			d = float64(D[h])
		}
		for t := range sh.n {
			if states != nil && t%sh.chunk == 0 {
				copy(states[((t/sh.chunk)*H+h)*PN:][:PN], S)
			}
			dtt := float64(dt[t*H+h])
			xt := x[(t*H+h)*P : (t*H+h+1)*P]
			ct := C[(t*G+g)*N : (t*G+g+1)*N]
			ssdStep(S, math.Exp(dtt*A[h]), dtt, xt, B[(t*G+g)*N:(t*G+g+1)*N])
			yt := y[(t*H+h)*P : (t*H+h+1)*P]
			for i := range P {
				row := S[i*N : (i+1)*N]
				var acc float64
				for j, c := range ct {
					acc += row[j] * float64(c)
				}
				yt[i] = float32(acc + d*float64(xt[i]))
			}
		}
	})
}

// ssdBackward computes the gradients of the scan given dy and the
// forward's inputs and saved chunk states, walking t from last to first
// with G = ∂L/∂S_t (SPEC §3, recurrent form):
//
//	G += gy_t ⊗ C_t; dC_t = S_tᵀ·gy_t; dx̄_t = G·B_t; dB_t = Gᵀ·x̄_t;
//	da_t = exp(a_t)·⟨G, S_{t−1}⟩; G *= exp(a_t)
//
// with x̄ = dt·x and a = dt·A, then dx = dt·dx̄ + D·gy, ddt = A·da + ⟨dx̄, x⟩,
// dA_h = Σ_t dt·da, dD_h = Σ_t ⟨gy, x⟩. The decay gradient comes from the
// recurrent formula, never from a reverse cumulative sum. Inside a chunk
// the states are recomputed from the saved state at its start.
//
// dx, ddt, dB and dC are written; dA and dD ([heads], float64) are written
// per head (dD may be nil). dB and dC of a group are the sums over its
// heads, in head order.
func ssdBackward(p *pool, sh ssdShape, dx, ddt []float32, dA, dD []float64, dB, dC []float32,
	dy, x, dt []float32, A []float64, B, C, D []float32, states []float64) {
	H, P, G, N, Q := sh.heads, sh.headDim, sh.groups, sh.dstate, sh.chunk
	rep, PN := H/G, sh.stateSize()
	dBh := make([]float64, sh.n*H*N)
	dCh := make([]float64, sh.n*H*N)
	scratch := make([][]float64, p.workers)
	p.tasks(H, func(w, h int) {
		if scratch[w] == nil {
			scratch[w] = make([]float64, (Q+1)*PN+PN)
		}
		buf := scratch[w][:(Q+1)*PN]
		Gs := scratch[w][(Q+1)*PN:]
		clear(Gs)
		g := h / rep
		var d float64
		if D != nil {
			d = float64(D[h])
		}
		var sumA, sumD float64
		for c := sh.chunks() - 1; c >= 0; c-- {
			c0, c1 := c*Q, min(sh.n, (c+1)*Q)
			copy(buf[:PN], states[(c*H+h)*PN:][:PN])
			for t := c0; t < c1; t++ {
				cur := buf[(t-c0+1)*PN : (t-c0+2)*PN]
				copy(cur, buf[(t-c0)*PN:(t-c0+1)*PN])
				dtt := float64(dt[t*H+h])
				ssdStep(cur, math.Exp(dtt*A[h]), dtt, x[(t*H+h)*P:(t*H+h+1)*P], B[(t*G+g)*N:(t*G+g+1)*N])
			}
			for t := c1 - 1; t >= c0; t-- {
				St := buf[(t-c0+1)*PN : (t-c0+2)*PN]
				Sp := buf[(t-c0)*PN : (t-c0+1)*PN]
				dtt := float64(dt[t*H+h])
				e := math.Exp(dtt * A[h])
				gy := dy[(t*H+h)*P : (t*H+h+1)*P]
				xt := x[(t*H+h)*P : (t*H+h+1)*P]
				bt := B[(t*G+g)*N : (t*G+g+1)*N]
				ct := C[(t*G+g)*N : (t*G+g+1)*N]
				dCt := dCh[(t*H+h)*N : (t*H+h+1)*N]
				dBt := dBh[(t*H+h)*N : (t*H+h+1)*N]
				var dot, dtx float64
				for i := range P {
					gyi, xv := float64(gy[i]), float64(xt[i])
					xb := dtt * xv
					row, srow, prow := Gs[i*N:(i+1)*N], St[i*N:(i+1)*N], Sp[i*N:(i+1)*N]
					var dxb float64
					for j := range N {
						gv := row[j] + gyi*float64(ct[j])
						dCt[j] += srow[j] * gyi
						dxb += gv * float64(bt[j])
						dBt[j] += gv * xb
						dot += gv * prow[j]
						row[j] = gv * e
					}
					dx[(t*H+h)*P+i] = float32(dtt*dxb + d*gyi)
					dtx += dxb * xv
					sumD += gyi * xv
				}
				da := e * dot
				ddt[t*H+h] = float32(A[h]*da + dtx)
				sumA += dtt * da
			}
		}
		dA[h] = sumA
		if dD != nil {
			dD[h] = sumD
		}
	})
	p.rows(sh.n, grainFor(H*N), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			for g := range G {
				for j := range N {
					var sb, sc float64
					for h := g * rep; h < (g+1)*rep; h++ {
						sb += dBh[(t*H+h)*N+j]
						sc += dCh[(t*H+h)*N+j]
					}
					dB[(t*G+g)*N+j] = float32(sb)
					dC[(t*G+g)*N+j] = float32(sc)
				}
			}
		}
	})
}
