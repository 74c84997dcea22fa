package distill

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/matsurgery/matsurgery/kernels"
)

// matrix is a weight [rows, cols] in row-major order (a PyTorch Linear
// weight is [out, in]): float32, or the bfloat16 bits a frozen weight was
// stored with, widened to float32 one panel at a time when used, so that a
// checkpoint's frozen matrices never exist as float32 all at once.
type matrix struct {
	rows, cols int
	f32        []float32
	bf16       []uint16
}

// panelRows bounds the rows of a bf16 matrix widened at once by one task.
const panelRows = 256

// widenRows writes rows [r0, r1) of a bf16 matrix as float32 into dst.
func (m matrix) widenRows(dst []float32, r0, r1 int) []float32 {
	dst = dst[:(r1-r0)*m.cols]
	for i, b := range m.bf16[r0*m.cols : r1*m.cols] {
		dst[i] = math.Float32frombits(uint32(b) << 16)
	}
	return dst
}

// widenCols writes columns [c0, c1) of every row of a bf16 matrix as a
// float32 [rows, c1−c0] matrix into dst.
func (m matrix) widenCols(dst []float32, c0, c1 int) []float32 {
	w := c1 - c0
	dst = dst[:m.rows*w]
	for r := range m.rows {
		src := m.bf16[r*m.cols+c0 : r*m.cols+c1]
		row := dst[r*w : (r+1)*w]
		for i, b := range src {
			row[i] = math.Float32frombits(uint32(b) << 16)
		}
	}
	return dst
}

// sgemm is C = alpha·op(A)·op(B) + beta·C for row-major matrices (gonum's
// sgemm: it splits C into fixed 64×64 blocks, each summed over k in order,
// so its result does not depend on scheduling).
func sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	ta, tb := blas.NoTrans, blas.NoTrans
	if transA {
		ta = blas.Trans
	}
	if transB {
		tb = blas.Trans
	}
	blas32.Implementation().Sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// backendProduct is the size m·n·k from which a Linear's product runs on
// the CPU backend (kernels/cpu): its operands are copied in and out, which
// costs about 10/m of the product's time, and its kernels are several
// times faster than gonum's sgemm (a Phi-2-sized mixer step went from 7.7 s
// to 1.2 s, BenchmarkMixerPhi2). Smaller products run on gonum's sgemm;
// on the phi-tiny step (BenchmarkStudentStep) 2^18 did better than 2^16,
// 2^20 and 2^22.
const backendProduct = 1 << 18

// backendMatMul computes a·bᵀ (transB) or a·b on the CPU backend, a being
// [m, k] and b a weight matrix (float32 or bf16), and hands the [m, n]
// result to use. The callers' shapes are consistent by construction, so a
// backend error is a bug of this package: it panics.
func (p *pool) backendMatMul(a []float32, m, k int, b matrix, transB bool, use func([]float32)) {
	check := func(what string, err error) {
		if err != nil {
			panic(fmt.Sprintf("distill: internal error: cpu backend %s: %v", what, err))
		}
	}
	at, err := p.be.Upload(a[:m*k], kernels.F32, m, k)
	check("upload", err)
	defer p.be.Free(at)
	var bt kernels.Tensor
	if b.bf16 != nil {
		bt, err = p.be.UploadBF16(b.bf16, b.rows, b.cols)
	} else {
		bt, err = p.be.Upload(b.f32[:b.rows*b.cols], kernels.F32, b.rows, b.cols)
	}
	check("upload", err)
	defer p.be.Free(bt)
	n := b.cols
	if transB {
		n = b.rows
	}
	ot, err := p.be.Alloc(kernels.F32, m, n)
	check("alloc", err)
	defer p.be.Free(ot)
	check("matmul", p.be.MatMul(ot, at, bt, transB))
	v, err := p.be.Download(ot)
	check("download", err)
	use(v)
}

// linearForward writes y[n, w.rows] = x[n, w.cols]·wᵀ + b (b may be nil).
func linearForward(p *pool, y, x []float32, n int, w matrix, b []float32) {
	out, in := w.rows, w.cols
	if n*out*in >= backendProduct {
		p.backendMatMul(x, n, in, w, true, func(v []float32) { copy(y, v) })
	} else if w.bf16 == nil {
		sgemm(false, true, n, out, in, 1, x, in, w.f32, in, 0, y, out)
	} else {
		panels := (out + panelRows - 1) / panelRows
		scratch := make([][]float32, p.workers)
		p.tasks(panels, func(wk, i int) {
			if scratch[wk] == nil {
				scratch[wk] = make([]float32, panelRows*in)
			}
			r0, r1 := i*panelRows, min(out, (i+1)*panelRows)
			wp := w.widenRows(scratch[wk], r0, r1)
			sgemm(false, true, n, r1-r0, in, 1, x, in, wp, in, 0, y[r0:], out)
		})
	}
	if b != nil {
		addBias(p, y, n, b)
	}
}

// addBias adds b[cols] to every row of y[n, cols].
func addBias(p *pool, y []float32, n int, b []float32) {
	cols := len(b)
	p.rows(n, grainFor(cols), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := y[r*cols : (r+1)*cols]
			for j, v := range b {
				row[j] += v
			}
		}
	})
}

// linearBackwardInput adds dy[n, w.rows]·w to dx[n, w.cols]: the gradient
// of a Linear's input.
func linearBackwardInput(p *pool, dx, dy []float32, n int, w matrix) {
	out, in := w.rows, w.cols
	if n*out*in >= backendProduct {
		p.backendMatMul(dy, n, out, w, false, func(v []float32) { addTo(dx, v) })
		return
	}
	if w.bf16 == nil {
		sgemm(false, false, n, in, out, 1, dy, out, w.f32, in, 1, dx, in)
		return
	}
	// Panels of input columns: each task widens w[:, c0:c1] and owns
	// dx[:, c0:c1], summing over every output row in one product.
	width := max(16, panelRows*in/max(1, out))
	width = min(in, (width+15)/16*16)
	panels := (in + width - 1) / width
	scratch := make([][]float32, p.workers)
	p.tasks(panels, func(wk, i int) {
		if scratch[wk] == nil {
			scratch[wk] = make([]float32, out*width)
		}
		c0, c1 := i*width, min(in, (i+1)*width)
		wp := w.widenCols(scratch[wk], c0, c1)
		sgemm(false, false, n, c1-c0, out, 1, dy, out, wp, c1-c0, 1, dx[c0:], in)
	})
}

// linearBackwardWeight adds dyᵀ·x to dw[out, in] and the column sums of
// dy[n, out] to db (summed in float64; db may be nil).
func linearBackwardWeight(p *pool, dw, db, dy, x []float32, n, out, in int) {
	if n*out*in >= backendProduct {
		dyT := make([]float32, out*n)
		p.rows(out, grainFor(n), func(lo, hi int) {
			for j := lo; j < hi; j++ {
				for r := range n {
					dyT[j*n+r] = dy[r*out+j]
				}
			}
		})
		p.backendMatMul(dyT, out, n, matrix{rows: n, cols: in, f32: x}, false, func(v []float32) { addTo(dw, v) })
	} else {
		sgemm(true, false, out, in, n, 1, dy, out, x, in, 1, dw, in)
	}
	if db != nil {
		columnSums(p, db, dy, n, out)
	}
}

// addTo adds v to dst elementwise.
func addTo(dst, v []float32) {
	for i, x := range v {
		dst[i] += x
	}
}

// columnSums adds the float64 column sums of a[n, cols] to dst[cols].
func columnSums(p *pool, dst, a []float32, n, cols int) {
	const block = 64
	p.rows(cols, block, func(lo, hi int) {
		var acc [block]float64
		for r := range n {
			row := a[r*cols : (r+1)*cols]
			for j := lo; j < hi; j++ {
				acc[j-lo] += float64(row[j])
			}
		}
		for j := lo; j < hi; j++ {
			dst[j] += float32(acc[j-lo])
		}
	})
}

// linear is a frozen PyTorch Linear: y = x·wᵀ + b (b may be nil).
type linear struct {
	w matrix
	b []float32
}

func (l linear) forward(p *pool, y, x []float32, n int) { linearForward(p, y, x, n, l.w, l.b) }

// backward adds the gradient of the input to dx (a frozen Linear has no
// weight gradients).
func (l linear) backward(p *pool, dx, dy []float32, n int) { linearBackwardInput(p, dx, dy, n, l.w) }

// trainableLinear is a Linear whose weight (and bias, when present) train.
type trainableLinear struct {
	w, b *Param
}

func (l trainableLinear) matrix() matrix {
	return matrix{rows: l.w.Shape[0], cols: l.w.Shape[1], f32: l.w.Data}
}

func (l trainableLinear) bias() []float32 {
	if l.b == nil {
		return nil
	}
	return l.b.Data
}

func (l trainableLinear) forward(p *pool, y, x []float32, n int) {
	linearForward(p, y, x, n, l.matrix(), l.bias())
}

// backward accumulates the weight (and bias) gradients and, when dx is not
// nil, adds the input gradient to dx.
func (l trainableLinear) backward(p *pool, dx, dy, x []float32, n int) {
	m := l.matrix()
	var db []float32
	if l.b != nil {
		db = l.b.Grad
	}
	linearBackwardWeight(p, l.w.Grad, db, dy, x, n, m.rows, m.cols)
	if dx != nil {
		linearBackwardInput(p, dx, dy, n, m)
	}
}
