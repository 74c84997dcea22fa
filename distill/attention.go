package distill

import "math"

// ropeTable holds cos and sin of the rotary angles (pos·θ^(−2i/rot) for
// positions 0…n−1 and i < rot/2), computed in float64.
type ropeTable struct {
	n, rot   int
	cos, sin []float64 // [n, rot/2]
}

func newRopeTable(n, rot int, theta float64) *ropeTable {
	half := rot / 2
	t := &ropeTable{n: n, rot: rot, cos: make([]float64, n*half), sin: make([]float64, n*half)}
	inv := make([]float64, half)
	for i := range inv {
		inv[i] = math.Pow(theta, -2*float64(i)/float64(rot))
	}
	for pos := range n {
		for i, f := range inv {
			t.sin[pos*half+i], t.cos[pos*half+i] = math.Sincos(float64(pos) * f)
		}
	}
	return t
}

// ropeRotate rotates in place, in the rotate-half form, the first rot dims
// of heads heads of size headDim that start at column off of each of the n
// rows of buf (row stride stride): x_i, x_{i+rot/2} become
// x_i·cos − x_{i+rot/2}·sin, x_{i+rot/2}·cos + x_i·sin. inverse applies the
// transposed rotation, which is the backward pass of the forward one.
func ropeRotate(p *pool, buf []float32, n, stride, off, heads, headDim int, t *ropeTable, inverse bool) {
	half := t.rot / 2
	p.rows(n, grainFor(heads*headDim), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			cs, sn := t.cos[r*half:(r+1)*half], t.sin[r*half:(r+1)*half]
			for h := range heads {
				v := buf[r*stride+off+h*headDim:][:t.rot]
				for i := range half {
					x1, x2 := float64(v[i]), float64(v[i+half])
					s := sn[i]
					if inverse {
						s = -s
					}
					v[i] = float32(x1*cs[i] - x2*s)
					v[i+half] = float32(x2*cs[i] + x1*s)
				}
			}
		}
	})
}

// attnShape describes one softmax attention: n tokens, heads query heads
// and kvHeads key/value heads (GQA: query head h reads kv head
// h/(heads/kvHeads)) of size headDim. q, k and v are column ranges of one
// buffer with row stride stride: head h of q starts at column qOff+h·headDim,
// kv head g of k at kOff+g·headDim, of v at vOff+g·headDim. The output has
// rows of heads·headDim.
type attnShape struct {
	n, heads, kvHeads, headDim int
	stride, qOff, kOff, vOff   int
	scale                      float32
	causal                     bool
}

// attnBlock is the number of query rows whose scores one task holds at
// once ([attnBlock, n] floats).
const attnBlock = 64

// scoresBlock writes the probabilities of query rows [t0, t0+m) of head h
// over keys [0, cols) into pr ([m, cols]) and returns pr. With lseIn nil it
// computes each row's log-sum-exp (stored into lseOut when not nil); with
// lseIn it reuses the forward's, which reproduces the forward's
// probabilities exactly. Scores are float32 products; the exponentials and
// sums are float64.
func scoresBlock(sh attnShape, qkv []float32, h, t0, m, cols int, pr []float32, lseIn, lseOut []float64) []float32 {
	P := sh.headDim
	hk := h / (sh.heads / sh.kvHeads)
	pr = pr[:m*cols]
	sgemm(false, true, m, cols, P, sh.scale, qkv[t0*sh.stride+sh.qOff+h*P:], sh.stride, qkv[sh.kOff+hk*P:], sh.stride, 0, pr, cols)
	for i := range m {
		t := t0 + i
		last := cols - 1
		if sh.causal {
			last = t
		}
		row := pr[i*cols : (i+1)*cols]
		var lse float64
		if lseIn != nil {
			lse = lseIn[h*sh.n+t]
		} else {
			mx := math.Inf(-1)
			for _, v := range row[:last+1] {
				mx = max(mx, float64(v))
			}
			var sum float64
			for _, v := range row[:last+1] {
				sum += math.Exp(float64(v) - mx)
			}
			lse = mx + math.Log(sum)
			if lseOut != nil {
				lseOut[h*sh.n+t] = lse
			}
		}
		for s := range last + 1 {
			row[s] = float32(math.Exp(float64(row[s]) - lse))
		}
		clear(row[last+1:])
	}
	return pr
}

// attentionForward writes o[n, heads·headDim] = softmax(scale·q·kᵀ)·v
// (causal when sh.causal) and, when lse is not nil ([heads·n]), the
// log-sum-exp of each query row's scores for the backward pass.
func attentionForward(p *pool, sh attnShape, o, qkv []float32, lse []float64) {
	P, HP := sh.headDim, sh.heads*sh.headDim
	hk := func(h int) int { return h / (sh.heads / sh.kvHeads) }
	scratch := make([][]float32, p.workers)
	p.tasks(sh.heads, func(w, h int) {
		if scratch[w] == nil {
			scratch[w] = make([]float32, attnBlock*sh.n)
		}
		for t0 := 0; t0 < sh.n; t0 += attnBlock {
			m := min(attnBlock, sh.n-t0)
			cols := sh.n
			if sh.causal {
				cols = t0 + m
			}
			pr := scoresBlock(sh, qkv, h, t0, m, cols, scratch[w], nil, lse)
			sgemm(false, false, m, P, cols, 1, pr, cols, qkv[sh.vOff+hk(h)*P:], sh.stride, 0, o[t0*HP+h*P:], HP)
		}
	})
}

// attentionBackward adds to dqkv (laid out like qkv) the gradients of q, k
// and v given do, the forward's output o, its inputs qkv and lse:
//
//	D_t = do_t·o_t, dS = P∘(do·vᵀ − D), dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·do,
//
// with P recomputed from the saved log-sum-exp. Each query head sums its
// k and v gradients separately; a kv head's are then the sum over its
// query heads in order.
func attentionBackward(p *pool, sh attnShape, dqkv, do, o, qkv []float32, lse []float64) {
	n, P, HP := sh.n, sh.headDim, sh.heads*sh.headDim
	rep := sh.heads / sh.kvHeads
	dk := make([]float32, sh.heads*n*P)
	dv := make([]float32, sh.heads*n*P)
	type buffers struct{ pr, dp []float32 }
	scratch := make([]*buffers, p.workers)
	p.tasks(sh.heads, func(w, h int) {
		if scratch[w] == nil {
			scratch[w] = &buffers{pr: make([]float32, attnBlock*n), dp: make([]float32, attnBlock*n)}
		}
		b := scratch[w]
		hk := h / rep
		dkh, dvh := dk[h*n*P:(h+1)*n*P], dv[h*n*P:(h+1)*n*P]
		for t0 := 0; t0 < n; t0 += attnBlock {
			m := min(attnBlock, n-t0)
			cols := n
			if sh.causal {
				cols = t0 + m
			}
			pr := scoresBlock(sh, qkv, h, t0, m, cols, b.pr, lse, nil)
			dp := b.dp[:m*cols]
			sgemm(false, true, m, cols, P, 1, do[t0*HP+h*P:], HP, qkv[sh.vOff+hk*P:], sh.stride, 0, dp, cols)
			for i := range m {
				t := t0 + i
				var dt float64
				for j, v := range do[t*HP+h*P : t*HP+(h+1)*P] {
					dt += float64(v) * float64(o[t*HP+h*P+j])
				}
				prow, drow := pr[i*cols:(i+1)*cols], dp[i*cols:(i+1)*cols]
				for s := range drow {
					drow[s] = float32(float64(prow[s]) * (float64(drow[s]) - dt))
				}
			}
			sgemm(false, false, m, P, cols, sh.scale, dp, cols, qkv[sh.kOff+hk*P:], sh.stride, 1, dqkv[t0*sh.stride+sh.qOff+h*P:], sh.stride)
			sgemm(true, false, cols, P, m, sh.scale, dp, cols, qkv[t0*sh.stride+sh.qOff+h*P:], sh.stride, 1, dkh, P)
			sgemm(true, false, cols, P, m, 1, pr, cols, do[t0*HP+h*P:], HP, 1, dvh, P)
		}
	})
	p.rows(n, grainFor(sh.kvHeads*P*2), func(lo, hi int) {
		for s := lo; s < hi; s++ {
			for g := range sh.kvHeads {
				kd := dqkv[s*sh.stride+sh.kOff+g*P:][:P]
				vd := dqkv[s*sh.stride+sh.vOff+g*P:][:P]
				for h := g * rep; h < (g+1)*rep; h++ {
					for j := range P {
						kd[j] += dk[(h*n+s)*P+j]
						vd[j] += dv[(h*n+s)*P+j]
					}
				}
			}
		}
	})
}
