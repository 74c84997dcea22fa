package cuda

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// The dense family of kernels.Trainer (train.go of package kernels): the
// backward of the dense, attention and layout operations. Kernels are in
// train_dense.cu; products go to cuBLAS (cublas_train.go).

var _ kernels.DenseGrad = (*Backend)(nil)

func init() {
	moduleFiles["train_dense"] = []string{"prelude.cu", "train_dense.cu"}
}

// denseKernel launches fn of train_dense.cu as a grid-stride kernel over n
// items.
func (be *Backend) denseKernel(what, fn string, n int64, args ...any) error {
	f, err := be.kernel("train_dense", fn)
	if err != nil {
		return err
	}
	return be.launch(what, f, dims{be.gridFor(n, blockElementwise), 1, 1}, dims{blockElementwise, 1, 1}, 0, args...)
}

// widenedF32 returns t, or for a BF16 t a float32 copy (exact) and a
// function that frees it. Owner goroutine only.
func (be *Backend) widenedF32(what string, t *Tensor) (*Tensor, func(), error) {
	if t.dtype != kernels.BF16 {
		return t, func() {}, nil
	}
	tmp, err := be.alloc(kernels.F32, t.shape, t.n)
	if err != nil {
		return nil, nil, err
	}
	if err := be.elementwise(what+" widen", "k_unary", int64(t.n), tmp, 0, t, 1, int64(t.n), 0, float32(0)); err != nil {
		be.release(tmp)
		return nil, nil, err
	}
	return tmp, func() { be.release(tmp) }, nil
}

// MatMulAT computes out[m,n] = aᵀ·b for a [k,m] and b [k,n] (leading
// dimensions flattened into k), written or, when accumulate, added into
// out (cuBLAS with beta = 1). Like MatMul: f32·f32 by sgemm in full
// float32 (no TF32), bf16·bf16 by GemmEx with float32 accumulation, a
// mixed pair with its bf16 operand first widened to f32 (exact).
func (be *Backend) MatMulAT(out, a, b kernels.Tensor, accumulate bool) error {
	o := be.ops("matmulat")
	ot, at, bt := o.out(out, "out"), o.any(a, "a"), o.any(b, "b")
	var m, n, k int
	if o.err == nil {
		var kb int
		k, m = lastDim(at)
		kb, n = lastDim(bt)
		if k != kb {
			o.fail("aᵀ·b with a %v and b %v: %d and %d rows differ", at.shape, bt.shape, k, kb)
		} else if om, on := lastDim(ot); om != m || on != n {
			o.fail("out %v, want %d rows of %d (a %v, b %v)", ot.shape, m, n, at.shape, bt.shape)
		}
		o.noAlias(ot, at, "a")
		o.noAlias(ot, bt, "b")
	}
	return o.run(func() error {
		ap, bp := at, bt
		dtype := cudaR32F
		if at.dtype == kernels.BF16 && bt.dtype == kernels.BF16 {
			dtype = cudaR16BF
		} else {
			for _, pp := range []**Tensor{&ap, &bp} {
				w, free, err := be.widenedF32(o.op, *pp)
				if err != nil {
					return err
				}
				defer free()
				*pp = w
			}
		}
		beta := float32(0)
		if accumulate {
			beta = 1
		}
		return be.blas.gemmRows(be.handle, true, false, m, n, k, 1,
			mat{ptr: ap.ptr, ld: m}, mat{ptr: bp.ptr, ld: n}, beta, mat{ptr: ot.ptr, ld: n}, 1, dtype)
	})
}

// sumRowsChunks is how SumRows splits rows rows of n columns: chunks of
// rowsPer rows, each summed by one thread a column, then the chunk sums
// added in chunk order. A function of the shape only, so the order of
// every sum is fixed.
func sumRowsChunks(rows, n int) (rowsPer, chunks int) {
	const maxPartial = 8 << 20 // doubles of partial sums (64 MiB)
	chunks = min((rows+63)/64, 1024, max(1, maxPartial/n))
	rowsPer = (rows + chunks - 1) / chunks
	return rowsPer, (rows + rowsPer - 1) / rowsPer
}

// SumRows computes out[n] = Σ_r a[r,n] (leading dimensions of a
// flattened), written or accumulated: per column, chunks of rows summed
// in double in row order, then the chunks in chunk order (no atomics:
// the same inputs give the same bits).
func (be *Backend) SumRows(out, a kernels.Tensor, accumulate bool) error {
	o := be.ops("sumrows")
	ot, at := o.out(out, "out"), o.t(a, "a")
	var rows, n int
	if o.err == nil {
		rows, n = lastDim(at)
		if ot.n != n {
			o.fail("out %v, want %d elements (the columns of a %v)", ot.shape, n, at.shape)
		}
		o.noAlias(ot, at, "a")
	}
	return o.run(func() error {
		rowsPer, chunks := sumRowsChunks(rows, n)
		part, err := be.drv.alloc(uint64(8*chunks*n), be.stream)
		if err != nil {
			return err
		}
		defer func() { _ = be.drv.free(part, be.stream) }()
		f, err := be.kernel("train_dense", "k_sum_rows_partial")
		if err != nil {
			return err
		}
		const block = 256
		cols := (n + block - 1) / block
		if err := be.launch(o.op, f, dims{cols, chunks, 1}, dims{block, 1, 1}, 0, devPtr(part), at, rows, n, rowsPer); err != nil {
			return err
		}
		if f, err = be.kernel("train_dense", "k_sum_rows_final"); err != nil {
			return err
		}
		return be.launch(o.op, f, dims{cols, 1, 1}, dims{block, 1, 1}, 0, ot, devPtr(part), chunks, n, accumulate)
	})
}

// activationGrad checks dx, dy and x: F32, one shape.
func (be *Backend) activationGrad(op string, dx, dy, x kernels.Tensor) (*ops, *Tensor, *Tensor, *Tensor) {
	o := be.ops(op)
	dxt, dyt, xt := o.out(dx, "dx"), o.t(dy, "dy"), o.t(x, "x")
	if o.err == nil {
		o.shape(dyt, "dy", dxt.shape...)
		o.shape(xt, "x", dxt.shape...)
	}
	return o, dxt, dyt, xt
}

// GELUBackward writes dx = dy·gelu'(x) for the given form, the derivative
// evaluated in double: Φ(x) + x·φ(x) (erf form), or the tanh form's
// 0.5(1+t) + 0.5x(1−t²)·c(1 + 3·0.044715x²). dx may alias dy or x.
func (be *Backend) GELUBackward(dx, dy, x kernels.Tensor, form kernels.GELUForm) error {
	o, dxt, dyt, xt := be.activationGrad("gelubackward", dx, dy, x)
	tanhForm := 0
	switch form {
	case kernels.GELUErf:
	case kernels.GELUTanh:
		tanhForm = 1
	default:
		o.fail("unknown GELU form %d", form)
	}
	return o.run(func() error {
		n := int64(dxt.n)
		if !rowOpsV1 && vecAligned(dxt, dyt, xt) {
			return be.denseKernel(o.op, "k_gelu_backward_v4", (n+3)/4, dxt, dyt, xt, n, tanhForm)
		}
		return be.denseKernel(o.op, "k_gelu_backward", n, dxt, dyt, xt, n, tanhForm)
	})
}

// SiLUBackward writes dx = dy·σ(x)·(1 + x·(1 − σ(x))), in double. dx may
// alias dy or x.
func (be *Backend) SiLUBackward(dx, dy, x kernels.Tensor) error {
	o, dxt, dyt, xt := be.activationGrad("silubackward", dx, dy, x)
	return o.run(func() error {
		return be.denseKernel(o.op, "k_silu_backward", int64(dxt.n), dxt, dyt, xt, int64(dxt.n))
	})
}

// normBackward runs k_norm_backward: a block of 256 threads per row,
// float32 loads, statistics and sums in double.
func (be *Backend) normBackward(op string, dx, dy, x, weight kernels.Tensor, eps float32, mode int) error {
	o := be.ops(op)
	dxt, dyt, xt, wt := o.out(dx, "dx"), o.t(dy, "dy"), o.t(x, "x"), o.t(weight, "weight")
	var rows, n int
	if o.err == nil {
		o.shape(dyt, "dy", dxt.shape...)
		o.shape(xt, "x", dxt.shape...)
		rows, n = lastDim(dxt)
		o.shape(wt, "weight", n)
	}
	checkEps(o, eps)
	return o.run(func() error {
		fn := "k_norm_backward"
		if v := normBackwardV(n); !rowOpsV1 && v > 0 {
			fn = fmt.Sprintf("k_norm_backward_v%d", v)
		}
		f, err := be.kernel("train_dense", fn)
		if err != nil {
			return err
		}
		return be.launch(op, f, dims{rows, 1, 1}, dims{256, 1, 1}, 0, dxt, dyt, xt, wt, n, eps, mode)
	})
}

// normBackwardV is the channels a thread of k_norm_backward_v holds for
// rows of n (rowOpsV1 = false): the smallest instantiated V with n ≤
// 256·V, or 0 when n is longer (k_norm_backward then).
func normBackwardV(n int) int {
	for _, v := range []int{1, 2, 4, 8, 12, 16} {
		if n <= 256*v {
			return v
		}
	}
	return 0
}

// LayerNormBackward writes dx for out = LayerNorm(x, weight, bias, eps)
// given dy: with x̂ = (x − mean)/√(var + eps) and g = dy·weight,
// dx = (g − mean(g) − x̂·mean(g·x̂))/√(var + eps), the statistics
// recomputed from x. dx may alias dy or x.
func (be *Backend) LayerNormBackward(dx, dy, x, weight kernels.Tensor, eps float32) error {
	return be.normBackward("layernormbackward", dx, dy, x, weight, eps, 1)
}

// RMSNormBackward writes dx for out = RMSNorm(x, weight, eps) given dy:
// with r = 1/√(mean(x²) + eps) and g = dy·weight,
// dx = r·g − x·r³·mean(g·x). dx may alias dy or x.
func (be *Backend) RMSNormBackward(dx, dy, x, weight kernels.Tensor, eps float32) error {
	return be.normBackward("rmsnormbackward", dx, dy, x, weight, eps, 0)
}

// RoPEInverse rotates x[b,l,h,p] in place by the negative of RoPE's
// angles (RoPE's own angle, sine and cosine in double, the sine negated):
// RoPE undone, and RoPE's backward on a gradient.
func (be *Backend) RoPEInverse(x kernels.Tensor, rotaryDim int, theta float64, pos0 int) error {
	o := be.ops("ropeinverse")
	xt := ropeOperand(o, x, rotaryDim, theta, pos0)
	return o.run(func() error {
		l, H, p := xt.shape[1], xt.shape[2], xt.shape[3]
		pairs := int64(xt.n / p * (rotaryDim / 2))
		return be.denseKernel(o.op, "k_rope_inverse", pairs, xt, pairs, l, H, p, rotaryDim, theta, pos0)
	})
}

// SumHeads writes out[rows, srcHeads·dim], source head s the sum (in
// double, in head order) of heads s·r … s·r+r−1 of src[rows, heads·dim],
// r = heads/srcHeads: RepeatHeads' backward. Only element counts are
// checked, as in RepeatHeads.
func (be *Backend) SumHeads(out, src kernels.Tensor, srcHeads, heads, dim int) error {
	o := be.ops("sumheads")
	ot, st := o.out(out, "out"), o.t(src, "src")
	if o.err == nil {
		switch {
		case srcHeads <= 0 || heads <= 0 || dim <= 0 || heads%srcHeads != 0:
			o.fail("heads %d is not a positive multiple of srcHeads %d (dim %d)", heads, srcHeads, dim)
		case ot.n%(srcHeads*dim) != 0:
			o.fail("out %v is not a whole number of rows of %d×%d", ot.shape, srcHeads, dim)
		case st.n != ot.n/(srcHeads*dim)*heads*dim:
			o.fail("src %v does not hold %d rows of %d×%d", st.shape, ot.n/(srcHeads*dim), heads, dim)
		}
		o.noAlias(ot, st, "src")
	}
	return o.run(func() error {
		return be.denseKernel(o.op, "k_sum_heads", int64(ot.n), ot, st, int64(ot.n), srcHeads, heads/srcHeads, dim)
	})
}

// SetCols overwrites columns [col0, col0+cols) of dst[rows, dstCols] with
// src[rows, cols] (rows: the leading dimensions flattened); the other
// columns are left as they are. SliceCols' backward.
func (be *Backend) SetCols(dst, src kernels.Tensor, col0 int) error {
	o := be.ops("setcols")
	dt, st := o.out(dst, "dst"), o.t(src, "src")
	cols, dcols := colRange(o, st, "src", dt, "dst", col0)
	if o.err == nil {
		o.noAlias(dt, st, "src")
	}
	return o.run(func() error {
		return be.denseKernel(o.op, "k_set_cols", int64(st.n), dt, st, int64(st.n), cols, dcols, col0)
	})
}

// Fill writes v into every element of t (F32).
func (be *Backend) Fill(t kernels.Tensor, v float32) error {
	o := be.ops("fill")
	tt := o.out(t, "t")
	return o.run(func() error { return be.fill(o.op, tt.ptr, tt.n, v) })
}

// fill writes v into n floats at p. Owner goroutine only.
func (be *Backend) fill(what string, p uint64, n int, v float32) error {
	return be.denseKernel(what, "k_fill", int64(n), devPtr(p), int64(n), v)
}

// Dropout writes out = x·mask (x and out [rows, d], leading dimensions
// flattened): element (i, j) is kept and scaled by float32(1/(1−prob))
// when the j-th Uint64 of rand.NewPCG(seed, splitmix64(i)), shifted right
// by 11, is ≥ uint64(prob·2⁵³), zeroed otherwise — package distill's
// masks, bit for bit. Each element's generator state is the row's seed
// advanced j+1 steps, from a table of the LCG's j-step multipliers and
// increments (k_pcg_jump), so every element is drawn independently. out
// may alias x.
func (be *Backend) Dropout(out, x kernels.Tensor, seed uint64, prob float64) error {
	o := be.ops("dropout")
	ot, xt := o.out(out, "out"), o.t(x, "x")
	if o.err == nil {
		o.shape(xt, "x", ot.shape...)
		if !(prob >= 0 && prob < 1) {
			o.fail("drop probability %g outside [0, 1)", prob)
		}
	}
	return o.run(func() error {
		_, d := lastDim(xt)
		table, err := be.pcgJumpTable(o.op, d)
		if err != nil {
			return err
		}
		thr := uint64(prob * (1 << 53))
		scale := float32(1 / (1 - prob))
		if !rowOpsV1 {
			f, err := be.kernel("train_dense", "k_dropout_rows")
			if err != nil {
				return err
			}
			rows := xt.n / max(d, 1)
			return be.launch(o.op, f, rowGrid(rows, d), dims{rowBlock, 1, 1}, 0, ot, xt, devPtr(table), rows, d, int64(seed), int64(thr), scale)
		}
		return be.denseKernel(o.op, "k_dropout", int64(xt.n), ot, xt, devPtr(table), int64(xt.n), d, int64(seed), int64(thr), scale)
	})
}

// pcgJumpTable returns the device table of the LCG's 1 … d-step jumps
// (k_pcg_jump, 32 bytes an entry) for rows of d, computed on first use
// and kept in be.pcgJump until Close: it depends on d alone. On the owner
// goroutine.
func (be *Backend) pcgJumpTable(what string, d int) (uint64, error) {
	if p, ok := be.pcgJump[d]; ok {
		return p, nil
	}
	table, err := be.drv.alloc(uint64(32*max(d, 1)), be.stream)
	if err != nil {
		return 0, fmt.Errorf("dropout jump table for rows of %d: %w", d, err)
	}
	f, err := be.kernel("train_dense", "k_pcg_jump")
	if err == nil {
		err = be.launch(what, f, dims{max(1, (d+127)/128), 1, 1}, dims{128, 1, 1}, 0, devPtr(table), d)
	}
	if err != nil {
		_ = be.drv.free(table, be.stream)
		return 0, err
	}
	if be.pcgJump == nil {
		be.pcgJump = map[int]uint64{}
	}
	be.pcgJump[d] = table
	return table, nil
}
