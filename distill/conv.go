package distill

// convShape describes a depthwise causal convolution of kernel k over n
// tokens of c channels. The input u is a column range of a wider buffer:
// channel j of token t is u[t·uStride + uOff + j].
type convShape struct {
	n, c, k       int
	uStride, uOff int
}

// convBlock is the number of channels one task handles.
const convBlock = 64

// causalConvForward writes, for each token t and channel j,
//
//	pre[t, j] = b[j] + Σ_{i<k} w[j, i]·u[t−k+1+i, j]   (u at t < 0 is 0)
//
// summed in float64, and act = silu(pre) ([n, c] each). b may be nil.
func causalConvForward(p *pool, sh convShape, pre, act, u, w, b []float32) {
	n, c, k := sh.n, sh.c, sh.k
	p.rows(c, convBlock, func(lo, hi int) {
		for t := range n {
			for j := lo; j < hi; j++ {
				var s float64
				if b != nil {
					s = float64(b[j])
				}
				wj := w[j*k : (j+1)*k]
				for i := max(0, k-1-t); i < k; i++ {
					s += float64(wj[i]) * float64(u[(t-k+1+i)*sh.uStride+sh.uOff+j])
				}
				pre[t*c+j] = float32(s)
				act[t*c+j] = float32(silu(s))
			}
		}
	})
}

// causalConvBackward, given dact (the gradient of the SiLU output) and
// the forward's pre and u, writes the input gradient into du (laid out
// like u: du[t·uStride + uOff + j]) and adds the weight and bias gradients
// to dw and db (db may be nil):
//
//	dpre = dact·silu′(pre), db[j] += Σ_t dpre[t,j],
//	dw[j,i] += Σ_t dpre[t,j]·u[t−k+1+i,j], du[s,j] = Σ_i dpre[s+k−1−i,j]·w[j,i].
func causalConvBackward(p *pool, sh convShape, du, dw, db, dact, pre, u, w []float32) {
	n, c, k := sh.n, sh.c, sh.k
	p.rows(c, convBlock, func(lo, hi int) {
		width := hi - lo
		dpre := make([]float64, n*width)
		for t := range n {
			for j := lo; j < hi; j++ {
				dpre[t*width+j-lo] = float64(dact[t*c+j]) * siluGrad(float64(pre[t*c+j]))
			}
		}
		accW := make([]float64, width*k)
		accB := make([]float64, width)
		for t := range n {
			for j := lo; j < hi; j++ {
				g := dpre[t*width+j-lo]
				accB[j-lo] += g
				for i := max(0, k-1-t); i < k; i++ {
					accW[(j-lo)*k+i] += g * float64(u[(t-k+1+i)*sh.uStride+sh.uOff+j])
				}
			}
		}
		for s := range n {
			for j := lo; j < hi; j++ {
				var v float64
				for i := range k {
					if t := s + k - 1 - i; t < n {
						v += dpre[t*width+j-lo] * float64(w[j*k+i])
					}
				}
				du[s*sh.uStride+sh.uOff+j] = float32(v)
			}
		}
		for j := lo; j < hi; j++ {
			for i := range k {
				dw[j*k+i] += float32(accW[(j-lo)*k+i])
			}
			if db != nil {
				db[j] += float32(accB[j-lo])
			}
		}
	})
}
