package cpu

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// attnOperands checks out and q [b,l,H,p], k and v [b,l,Hkv,p].
func (be *Backend) attnOperands(op string, out, q, k, v kernels.Tensor) (o, qt, kt, vt *Tensor, nb, l, H, Hkv, p int, err error) {
	if o, err = be.f32Tensor(out, op+" out"); err != nil {
		return
	}
	if qt, err = be.f32Tensor(q, op+" q"); err != nil {
		return
	}
	if kt, err = be.f32Tensor(k, op+" k"); err != nil {
		return
	}
	if vt, err = be.f32Tensor(v, op+" v"); err != nil {
		return
	}
	if len(qt.shape) != 4 || len(kt.shape) != 4 {
		err = fmt.Errorf("%s: q %v and k %v must be [batch, seqlen, heads, headdim]", op, qt.shape, kt.shape)
		return
	}
	nb, l, H, p = qt.shape[0], qt.shape[1], qt.shape[2], qt.shape[3]
	Hkv = kt.shape[2]
	if err = wantShape(kt, op+" k", nb, l, Hkv, p); err != nil {
		return
	}
	if err = wantShape(vt, op+" v", nb, l, Hkv, p); err != nil {
		return
	}
	if err = wantShape(o, op+" out", nb, l, H, p); err != nil {
		return
	}
	if H%Hkv != 0 {
		err = fmt.Errorf("%s: %d heads is not a multiple of %d kv heads", op, H, Hkv)
		return
	}
	for _, in := range []*Tensor{qt, kt, vt} {
		if &in.f32[0] == &o.f32[0] {
			err = fmt.Errorf("%s: out must not alias an input", op)
			return
		}
	}
	return
}

// LinearAttention writes the causal, softmax-free, unscaled attention
// out_t = Σ_{s≤t} (q_t·k_s)·v_s in O(L·p²) per head through the running
// state H_t = H_{t−1} + v_t k_tᵀ (float64), out_t = H_t q_t.
func (be *Backend) LinearAttention(out, q, k, v kernels.Tensor) error {
	o, qt, kt, vt, nb, l, H, Hkv, p, err := be.attnOperands("linearattention", out, q, k, v)
	if err != nil {
		return err
	}
	rep := H / Hkv
	scratch := make([][]float64, be.workerCount(nb*H))
	be.parallelTasks(nb*H, func(w, task int) {
		b, h := task/H, task%H
		hk := h / rep
		if scratch[w] == nil {
			scratch[w] = make([]float64, p*p+p)
		}
		S, kv := scratch[w][:p*p], scratch[w][p*p:]
		clear(S)
		for t := range l {
			kr := kt.f32[((b*l+t)*Hkv+hk)*p:][:p]
			vr := vt.f32[((b*l+t)*Hkv+hk)*p:][:p]
			qr := qt.f32[((b*l+t)*H+h)*p:][:p]
			or := o.f32[((b*l+t)*H+h)*p:][:p]
			for j, kv0 := range kr {
				kv[j] = float64(kv0)
			}
			for i, vv := range vr {
				row := S[i*p : (i+1)*p]
				vf := float64(vv)
				var acc float64
				for j, kj := range kv {
					row[j] += vf * kj
					acc += row[j] * float64(qr[j])
				}
				or[i] = float32(acc)
			}
		}
	})
	return nil
}

// softmaxRows is the number of query rows per SoftmaxAttention task.
const softmaxRows = 64

// SoftmaxAttention writes out_t = Σ_s softmax_s(scale·q_t·k_s)·v_s over
// s ≤ t when causal, all s otherwise. Per block of query rows, the scores
// against the keys it can see are one float32 product, the softmax runs in
// float64 (max subtracted), and the weighted sum of values is a second
// product: memory is rows×L per worker, never L×L.
func (be *Backend) SoftmaxAttention(out, q, k, v kernels.Tensor, scale float32, causal bool) error {
	o, qt, kt, vt, nb, l, H, Hkv, p, err := be.attnOperands("softmaxattention", out, q, k, v)
	if err != nil {
		return err
	}
	if math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
		return fmt.Errorf("softmaxattention: scale %g is not finite", scale)
	}
	rep := H / Hkv
	blocks := (l + softmaxRows - 1) / softmaxRows
	scratch := make([][]float32, be.workerCount(nb*H*blocks))
	be.parallelTasks(nb*H*blocks, func(w, task int) {
		b, h, blk := task/(H*blocks), task/blocks%H, task%blocks
		hk := h / rep
		t0 := blk * softmaxRows
		r := min(softmaxRows, l-t0)
		nk := l // keys visible to the block
		if causal {
			nk = t0 + r
		}
		if scratch[w] == nil {
			scratch[w] = make([]float32, softmaxRows*l)
		}
		sc := scratch[w][:r*nk]
		qb := qt.f32[((b*l+t0)*H+h)*p:]
		kb := kt.f32[(b*l*Hkv+hk)*p:]
		vb := vt.f32[(b*l*Hkv+hk)*p:]
		gemm(false, true, r, nk, p, qb, H*p, kb, Hkv*p, 0, sc, nk)
		for i := range r {
			row := sc[i*nk : (i+1)*nk]
			vis := nk
			if causal {
				vis = t0 + i + 1
			}
			m := math.Inf(-1)
			for _, s := range row[:vis] {
				m = max(m, float64(scale)*float64(s))
			}
			var sum float64
			for j, s := range row[:vis] {
				e := math.Exp(float64(scale)*float64(s) - m)
				sum += e
				row[j] = float32(e)
			}
			inv := 1 / sum
			for j := range row[:vis] {
				row[j] = float32(float64(row[j]) * inv)
			}
			clear(row[vis:])
		}
		gemm(false, false, r, p, nk, sc, nk, vb, Hkv*p, 0, o.f32[((b*l+t0)*H+h)*p:], H*p)
	})
	return nil
}

// RoPE rotates, in place, the first rotaryDim dims of each head of
// x[b,l,h,p] by position pos0+t in the rotate-half form. Angles
// (pos0+t)·theta^(−2i/rotaryDim) and their sines and cosines are float64.
func (be *Backend) RoPE(x kernels.Tensor, rotaryDim int, theta float64, pos0 int) error {
	return be.rope("rope", x, rotaryDim, theta, pos0, 1)
}

// rope rotates by sign·angle: 1 is RoPE, −1 RoPEInverse (the sines
// negated, which is exact). what names the operation in errors.
func (be *Backend) rope(what string, x kernels.Tensor, rotaryDim int, theta float64, pos0 int, sign float64) error {
	xt, err := be.f32Tensor(x, what+" x")
	if err != nil {
		return err
	}
	if len(xt.shape) != 4 {
		return fmt.Errorf("%s: x must be [batch, seqlen, heads, headdim], got %v", what, xt.shape)
	}
	l, H, p := xt.shape[1], xt.shape[2], xt.shape[3]
	if rotaryDim <= 0 || rotaryDim%2 != 0 || rotaryDim > p {
		return fmt.Errorf("%s: rotary dim %d must be even and in (0, %d]", what, rotaryDim, p)
	}
	if !(theta > 0) || math.IsInf(theta, 0) {
		return fmt.Errorf("%s: theta %g must be a positive number", what, theta)
	}
	if pos0 < 0 {
		return fmt.Errorf("%s: start position %d is negative", what, pos0)
	}
	half := rotaryDim / 2
	invFreq := make([]float64, half)
	for i := range half {
		invFreq[i] = math.Pow(theta, -2*float64(i)/float64(rotaryDim))
	}
	rows := xt.Len() / (H * p)
	be.parallelFor(rows, max(1, 4096/(H*p)), func(lo, hi int) {
		cos, sin := make([]float64, half), make([]float64, half)
		for r := lo; r < hi; r++ {
			pos := float64(pos0 + r%l)
			for i, f := range invFreq {
				sin[i], cos[i] = math.Sincos(pos * f)
				sin[i] *= sign
			}
			for h := range H {
				v := xt.f32[(r*H+h)*p:][:rotaryDim]
				for i := range half {
					x1, x2 := float64(v[i]), float64(v[i+half])
					v[i] = float32(x1*cos[i] - x2*sin[i])
					v[i+half] = float32(x2*cos[i] + x1*sin[i])
				}
			}
		}
	})
	return nil
}
