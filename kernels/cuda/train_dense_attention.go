package cuda

import (
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// Softmax attention through cuBLAS: the scores of a block of query rows
// against the keys they see are one strided-batched product (a batch of
// kv heads), the softmax a row kernel (k_attn_softmax_rows), and every
// other step a product again. At training sizes (sequence 1428, 32 heads
// of 80) the products run on the tensor cores (bf16) or at sgemm speed
// (f32), far above the CUDA-core flash kernel of attention.cu, and the
// scratch is bounded: no l×l matrix for a long sequence, only a block of
// query rows against its keys.

// attnScratchBytes caps the scratch of one attention call (scores and
// their gradient for a block of query rows); the block's row count is
// chosen to fit it.
var attnScratchBytes = 256 << 20

// attnBlockRows, when > 0, fixes the query rows of a block (tests and
// benchmarks); 0 lets attnRows and attnForwardRows choose.
var attnBlockRows = 0

// attnRows is the query rows of a block of the backward: as many as fit
// attnScratchBytes with bytesPerScore bytes per (kv head, row, key) at
// rows of scoreLD(l) keys, at most 512, at least 1. Fewer, larger
// products beat skipping more of the causal mask: on an H200 at l = 1428,
// 32 heads of 80, the bf16 backward took 1.13 / 0.92 / 0.89 / 0.87 ms
// with blocks of 128 / 192 / 256 / 480 rows (f32: 2.07 / 1.87 / 1.76 /
// 1.69 ms at 128 / 192 / 256 / 512); at l = 4096 the scratch allows 160
// (bf16) and 256 (f32) rows, and 128 was slower in both.
func attnRows(l, hkv, bytesPerScore int) int {
	rows := 512
	if attnBlockRows > 0 {
		rows = attnBlockRows
	}
	return max(1, min(rows, attnFit(l, hkv, bytesPerScore), l))
}

// attnForwardRows is the query rows of a block of softmaxAttentionGEMM:
// without a causal mask as many as fit; with one, about l/8 (rounded up
// to 64), the setting its benchmark measured (BenchmarkSoftmaxAttention-
// ForwardPaths).
func attnForwardRows(l, hkv int, causal bool, bytesPerScore int) int {
	rows := l
	if causal {
		rows = max(64, (l/8+63)/64*64)
	}
	if attnBlockRows > 0 {
		rows = attnBlockRows
	}
	return max(1, min(rows, attnFit(l, hkv, bytesPerScore), l))
}

// attnFit is how many query rows of scoreLD(l) keys for hkv kv heads fit
// attnScratchBytes at bytesPerScore bytes a score (whole tiles of 16 from
// 64 up).
func attnFit(l, hkv, bytesPerScore int) int {
	fit := attnScratchBytes / (hkv * scoreLD(l) * bytesPerScore)
	if fit >= 64 {
		fit = fit / 16 * 16
	}
	return fit
}

// scoreLD is the distance between rows of a block's scores over lk keys:
// lk rounded up to 8 elements, so that every row of the bf16 (and f32)
// operands starts 16-byte aligned, as cuBLAS's tensor-core kernels want.
func scoreLD(lk int) int { return (lk + 7) / 8 * 8 }

// elemOffset is the address of element i of t.
func elemOffset(t *Tensor, i int) uint64 { return t.ptr + uint64(i*t.dtype.Size()) }

// attnBlock is the part of an attention call shared by its query blocks.
type attnBlock struct {
	be                         *Backend
	what                       string
	q, k, v, out               *Tensor // operands of the products (F32, or all of q, k, v BF16)
	nb, l, h, hkv, p, rep      int
	scale                      float32
	causal                     bool
	dtype                      int    // cudaR32F or cudaR16BF
	sBuf, dpBuf, pbBuf, dsbBuf uint64 // scratch: scores, their gradient (f32), P and dS in bf16 (bf16 only)
}

// softmaxRows launches k_attn_softmax_rows for rows [i0, i0+rows) of
// batch bi, query heads g·rep+j, keys [0, lk). dout and out (F32) are nil
// in the forward.
func (a *attnBlock) softmaxRows(bi, i0, rows, lk, j int, dout, out *Tensor) error {
	ld := scoreLD(lk)
	be := a.be
	f, err := be.kernel("train_dense", "k_attn_softmax_rows")
	if err != nil {
		return err
	}
	var dP, dO, O devPtr
	if dout != nil {
		row := (bi*a.l + i0) * a.h * a.p
		dP, dO, O = devPtr(a.dpBuf), devPtr(elemOffset(dout, row)), devPtr(elemOffset(out, row))
	}
	bf := 0
	if a.dtype == cudaR16BF {
		bf = 1
	}
	return be.launch(a.what, f, dims{(rows + 3) / 4, a.hkv, 1}, dims{128, 1, 1}, 0,
		devPtr(a.sBuf), dP, devPtr(a.pbBuf), devPtr(a.dsbBuf), bf, dO, O, rows, lk, ld, i0, a.h, a.p, a.rep, j, a.scale, a.causal)
}

// qMat is rows of a [b,l,H,p] tensor from (bi, i0), heads j, j+rep, …
// (one a kv head); kvMat is rows of a [b,l,Hkv,p] tensor from (bi, 0),
// one kv head after another.
func (a *attnBlock) qMat(t *Tensor, bi, i0, j int) mat {
	return mat{ptr: elemOffset(t, ((bi*a.l+i0)*a.h+j)*a.p), ld: a.h * a.p, stride: int64(a.rep * a.p)}
}

func (a *attnBlock) kvMat(t *Tensor, bi int) mat {
	return mat{ptr: elemOffset(t, bi*a.l*a.hkv*a.p), ld: a.hkv * a.p, stride: int64(a.p)}
}

func (a *attnBlock) gemm(transA, transB bool, m, n, k int, alpha float32, x, y mat, beta float32, c mat) error {
	return a.be.blas.gemmRows(a.be.handle, transA, transB, m, n, k, alpha, x, y, beta, c, a.hkv, a.dtype)
}

// attnGradOperands checks the operands of SoftmaxAttentionBackward.
func (be *Backend) attnGradOperands(o *ops, dq, dk, dv, dout, q, k, v, out kernels.Tensor, scale float32) (s *scan, dqt, dkt, dvt, dot *Tensor) {
	s = be.attnOperands(o, out, q, k, v)
	dqt, dkt, dvt, dot = o.out(dq, "dq"), o.out(dk, "dk"), o.out(dv, "dv"), o.t(dout, "dout")
	if o.err != nil {
		return
	}
	o.shape(dqt, "dq", s.nb, s.l, s.h, s.p)
	o.shape(dot, "dout", s.nb, s.l, s.h, s.p)
	o.shape(dkt, "dk", s.nb, s.l, s.hb, s.p)
	o.shape(dvt, "dv", s.nb, s.l, s.hb, s.p)
	if math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
		o.fail("scale %g is not a finite number", scale)
	}
	grads := []struct {
		t    *Tensor
		name string
	}{{dqt, "dq"}, {dkt, "dk"}, {dvt, "dv"}}
	for i, g := range grads {
		for _, in := range []struct {
			t    *Tensor
			name string
		}{{s.C, "q"}, {s.B, "k"}, {s.x, "v"}, {s.y, "out"}, {dot, "dout"}} {
			if o.err == nil && g.t.ptr == in.t.ptr {
				o.fail("%s must not alias %s", g.name, in.name)
			}
		}
		for _, h := range grads[i+1:] {
			if o.err == nil && g.t.ptr == h.t.ptr {
				o.fail("%s must not alias %s", g.name, h.name)
			}
		}
	}
	return
}

// SoftmaxAttentionBackward writes dq [b,l,H,p] and dk, dv [b,l,Hkv,p]
// given out = SoftmaxAttention(q, k, v, scale, causal) and dout, by
// strided-batched cuBLAS products over blocks of query rows (attnRows),
// for each block and kv head (GQA: the query heads of a kv head one
// product batch after another, so their dk and dv contributions add up):
//
//	S = Q·Kᵀ; P = softmax(scale·S) (causal mask; keys past the block's
//	last row skipped); D = rowsum(dout∘out); dP = dout·Vᵀ;
//	dS = P∘(dP − D); dq = scale·dS·K; dk += scale·dSᵀ·Q; dv += Pᵀ·dout.
//
// The probabilities are recomputed from the full rows of S (each row's
// maximum and sum of exponentials), never stored for the whole sequence.
// F32 q, k, v: f32 products (sgemm, no TF32), exponentials in float32,
// sums in double. BF16 q, k and v (all three; a mixed set is widened to
// f32 first): the products take bf16 operands with float32 accumulation,
// which rounds dout, P and dS to bf16 as flash-attention does (D and the
// softmax still from float32 values); relative error about 3e-3.
func (be *Backend) SoftmaxAttentionBackward(dq, dk, dv, dout, q, k, v, out kernels.Tensor, scale float32, causal bool) error {
	o := be.ops("softmaxattentionbackward")
	s, dqt, dkt, dvt, dot := be.attnGradOperands(o, dq, dk, dv, dout, q, k, v, out, scale)
	return o.run(func() error {
		if be.useFlash(s) { // flash unless MATSURGERY_CUDA_ATTENTION=blocked (flash_attention.go)
			return be.flashBackward(o.op, s, dqt, dkt, dvt, dot, scale, causal)
		}
		a := &attnBlock{be: be, what: o.op, q: s.C, k: s.B, v: s.x, out: s.y, nb: s.nb, l: s.l, h: s.h, hkv: s.hb, p: s.p,
			rep: s.h / s.hb, scale: scale, causal: causal, dtype: cudaR32F}
		if a.q.dtype == kernels.BF16 && a.k.dtype == kernels.BF16 && a.v.dtype == kernels.BF16 {
			a.dtype = cudaR16BF
		} else {
			for _, pp := range []**Tensor{&a.q, &a.k, &a.v} {
				w, free, err := be.widenedF32(o.op, *pp)
				if err != nil {
					return err
				}
				defer free()
				*pp = w
			}
		}
		// dout as a product operand: itself, or rounded to bf16.
		doutOp := dot
		bytesPerScore := 8
		if a.dtype == cudaR16BF {
			bytesPerScore = 12
			tmp, err := be.alloc(kernels.BF16, dot.shape, dot.n)
			if err != nil {
				return err
			}
			defer be.release(tmp)
			if err := be.elementwise(o.op+" dout to bf16", "k_unary", int64(dot.n), tmp, 1, dot, 0, int64(dot.n), 0, float32(0)); err != nil {
				return err
			}
			doutOp = tmp
		}
		for _, t := range []*Tensor{dkt, dvt} {
			if err := be.fill(o.op, t.ptr, t.n, 0); err != nil {
				return err
			}
		}
		bq := attnRows(a.l, a.hkv, bytesPerScore)
		scores := a.hkv * bq * scoreLD(a.l)
		buf, err := be.drv.alloc(uint64(scores*bytesPerScore), be.stream)
		if err != nil {
			return err
		}
		defer func() { _ = be.drv.free(buf, be.stream) }()
		a.sBuf, a.dpBuf = buf, buf+uint64(4*scores)
		if a.dtype == cudaR16BF {
			a.pbBuf, a.dsbBuf = buf+uint64(8*scores), buf+uint64(10*scores)
		}
		P, dS := a.sBuf, a.dpBuf
		if a.dtype == cudaR16BF {
			P, dS = a.pbBuf, a.dsbBuf
		}
		for bi := range a.nb {
			K, V := a.kvMat(a.k, bi), a.kvMat(a.v, bi)
			dK, dV := a.kvMat(dkt, bi), a.kvMat(dvt, bi)
			for i0 := 0; i0 < a.l; i0 += bq {
				rows := min(bq, a.l-i0)
				lk := a.l
				if causal {
					lk = i0 + rows
				}
				ld := scoreLD(lk)
				sc := mat{ptr: a.sBuf, ld: ld, stride: int64(rows * ld)}
				dp := mat{ptr: a.dpBuf, ld: ld, stride: sc.stride}
				pm, dsm := mat{ptr: P, ld: ld, stride: sc.stride}, mat{ptr: dS, ld: ld, stride: sc.stride}
				for j := range a.rep {
					Q, dO, dQ := a.qMat(a.q, bi, i0, j), a.qMat(doutOp, bi, i0, j), a.qMat(dqt, bi, i0, j)
					if err := a.gemm(false, true, rows, lk, a.p, 1, Q, K, 0, sc); err != nil {
						return err
					}
					if err := a.gemm(false, true, rows, lk, a.p, 1, dO, V, 0, dp); err != nil {
						return err
					}
					if err := a.softmaxRows(bi, i0, rows, lk, j, dot, a.out); err != nil {
						return err
					}
					if err := a.gemm(false, false, rows, a.p, lk, scale, dsm, K, 0, dQ); err != nil {
						return err
					}
					if err := a.gemm(true, false, lk, a.p, rows, scale, dsm, Q, 1, dK); err != nil {
						return err
					}
					if err := a.gemm(true, false, lk, a.p, rows, 1, pm, dO, 1, dV); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
}

// attnGEMMMinLen is the sequence length from which SoftmaxAttention's
// causal attention takes the blocked products. On an H200, one sequence
// of 32 heads of 80, f32, flash kernel against products (ms): l = 128
// 0.064 / 0.107, 256 0.125 / 0.151, 512 0.309 / 0.264, 1024 0.98 / 0.51,
// 1428 1.77 / 0.85, 2048 3.39 / 1.44, 4096 12.5 / 4.86; the outputs
// differ by ≤ 6e-7 (relative). Full (non-causal) attention stays on the
// flash kernel until it is measured.
const attnGEMMMinLen = 512

// useAttentionGEMM says whether SoftmaxAttention runs s through
// softmaxAttentionGEMM.
func useAttentionGEMM(s *scan, causal bool) bool { return causal && s.l >= attnGEMMMinLen }

// softmaxAttentionGEMM is SoftmaxAttention by the same blocked products:
// S = Q·Kᵀ, P = softmax(scale·S), out = P·V, for long sequences where the
// products beat the flash kernel. With q, k and v all BF16 the products
// take bf16 operands on the tensor cores (P rounded to bf16, as
// flash-attention does; scores, softmax and out in float32); otherwise
// everything is float32 (a BF16 operand widened first). Owner goroutine
// only; s is checked.
func (be *Backend) softmaxAttentionGEMM(what string, s *scan, scale float32, causal bool) error {
	a := &attnBlock{be: be, what: what, q: s.C, k: s.B, v: s.x, out: s.y, nb: s.nb, l: s.l, h: s.h, hkv: s.hb, p: s.p,
		rep: s.h / s.hb, scale: scale, causal: causal, dtype: cudaR32F}
	bytesPerScore := 4
	if a.q.dtype == kernels.BF16 && a.k.dtype == kernels.BF16 && a.v.dtype == kernels.BF16 {
		a.dtype, bytesPerScore = cudaR16BF, 6
	} else {
		for _, pp := range []**Tensor{&a.q, &a.k, &a.v} {
			w, free, err := be.widenedF32(what, *pp)
			if err != nil {
				return err
			}
			defer free()
			*pp = w
		}
	}
	bq := attnForwardRows(a.l, a.hkv, causal, bytesPerScore)
	scores := a.hkv * bq * scoreLD(a.l)
	buf, err := be.drv.alloc(uint64(scores*bytesPerScore), be.stream)
	if err != nil {
		return err
	}
	defer func() { _ = be.drv.free(buf, be.stream) }()
	a.sBuf = buf
	P := a.sBuf
	if a.dtype == cudaR16BF {
		a.pbBuf = buf + uint64(4*scores)
		P = a.pbBuf
	}
	for bi := range a.nb {
		K, V := a.kvMat(a.k, bi), a.kvMat(a.v, bi)
		for i0 := 0; i0 < a.l; i0 += bq {
			rows := min(bq, a.l-i0)
			lk := a.l
			if causal {
				lk = i0 + rows
			}
			ld := scoreLD(lk)
			sc := mat{ptr: a.sBuf, ld: ld, stride: int64(rows * ld)}
			for j := range a.rep {
				if err := a.gemm(false, true, rows, lk, a.p, 1, a.qMat(a.q, bi, i0, j), K, 0, sc); err != nil {
					return err
				}
				if err := a.softmaxRows(bi, i0, rows, lk, j, nil, nil); err != nil {
					return err
				}
				pm := mat{ptr: P, ld: ld, stride: sc.stride}
				if err := a.gemm(false, false, rows, a.p, lk, 1, pm, V, 0, a.qMat(a.out, bi, i0, j)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
