package cuda

import (
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// Operations check their operands on the calling goroutine and enqueue
// their kernels on the owner; they return before the GPU has finished
// (Sync or Download wait). As on the CPU backend, operands and outputs are
// F32 except where an operation says otherwise: MatMul and Convert take
// BF16 too, and so do the scans' and attentions' activations (x, dt, A, B,
// C, D; q, k, v), which the CPU backend does not offer.

const blockElementwise = 256

// rowOpsV1 switches the row and elementwise operations of the training
// path back to their first kernels: LayerNorm, RMSNorm and GatedRMSNorm
// (k_group_norm, a warp a group, instead of k_row_norm, a block a group
// held in registers), GELU and Convert (k_unary instead of k_gelu_f32,
// k_cvt_f32_bf16, k_cvt_bf16_f32), AddBias and SliceCols (k_add_bias,
// k_slice_cols, a division per element, instead of the 2-D k_add_bias_rows,
// k_slice_cols_rows), GELUBackward and Dropout (k_gelu_backward, k_dropout
// instead of k_gelu_backward_v4, k_dropout_rows). Both give the same
// results (rowops_test.go); false (the default) takes the second kernels,
// which rowops_bench_test.go measures against the first. It switches the
// Mamba path and the norm backwards too: CausalConv1d (k_causal_conv1d
// instead of k_causal_conv1d2_K_CV), CausalConv1dBackward (k_conv1d_bwd_K,
// k_conv1d_bwd2_K_CV), DtSoftplusBackward (k_dt_softplus_bwd,
// k_dt_softplus_bwd2), GatedRMSNormBackward (k_gated_norm_bwd,
// k_gated_norm_bwd_wV) and LayerNorm/RMSNormBackward (k_norm_backward,
// k_norm_backward_vV): mambaops_test.go compares them, and
// mambaops_bench_test.go measures them.
var rowOpsV1 = false

// rowBlock is the block of the 2-D row kernels: rowBlock threads across
// the columns, each walking rows rowStride apart.
const rowBlock = 128

// rowGrid is the grid of a 2-D row kernel over rows rows of colThreads
// threads: about 4 rows a thread.
func rowGrid(rows, colThreads int) dims {
	return dims{max(1, (colThreads+rowBlock-1)/rowBlock), max(1, min((rows+3)/4, 65535)), 1}
}

// vecAligned reports whether every non-nil tensor starts on a 4-element
// boundary (16 bytes f32, 8 bytes bf16), so 4-element vector accesses at
// multiples of 4 elements are aligned.
func vecAligned(ts ...*Tensor) bool {
	for _, t := range ts {
		if t == nil {
			continue
		}
		size := uint64(4)
		if t.dtype == kernels.BF16 {
			size = 2
		}
		if t.ptr%(4*size) != 0 {
			return false
		}
	}
	return true
}

// rowKernel launches kernel fn of the core module on a 2-D row grid.
func (be *Backend) rowKernel(what, fn string, grid dims, args ...any) error {
	f, err := be.kernel("core", fn)
	if err != nil {
		return err
	}
	return be.launch(what, f, grid, dims{rowBlock, 1, 1}, 0, args...)
}

// ops is the checked-operand helper of one call.
type ops struct {
	be  *Backend
	op  string
	err error
}

func (be *Backend) ops(op string) *ops { return &ops{be: be, op: op} }

// t loads a required F32 operand.
func (o *ops) t(t kernels.Tensor, name string) *Tensor {
	ct := o.any(t, name)
	o.f32(ct, name)
	return ct
}

// any loads a required operand of either dtype.
func (o *ops) any(t kernels.Tensor, name string) *Tensor {
	if o.err != nil {
		return nil
	}
	ct, err := o.be.tensor(t, o.op+" "+name)
	o.err = err
	return ct
}

// opt loads an optional F32 operand (nil stays nil).
func (o *ops) opt(t kernels.Tensor, name string) *Tensor {
	ct := o.optAny(t, name)
	o.f32(ct, name)
	return ct
}

// optAny loads an optional operand of either dtype.
func (o *ops) optAny(t kernels.Tensor, name string) *Tensor {
	if o.err != nil {
		return nil
	}
	ct, err := o.be.optTensor(t, o.op+" "+name)
	o.err = err
	return ct
}

// out loads an output operand, which must be F32.
func (o *ops) out(t kernels.Tensor, name string) *Tensor { return o.t(t, name) }

func (o *ops) f32(t *Tensor, name string) {
	if o.err == nil && t != nil && t.dtype != kernels.F32 {
		o.err = fmt.Errorf("%s: %s is %v, want f32", o.op, name, t.dtype)
	}
}

func (o *ops) shape(t *Tensor, name string, shape ...int) {
	if o.err == nil && t != nil && !slices.Equal(t.shape, shape) {
		o.err = fmt.Errorf("%s: %s has shape %v, want %v", o.op, name, t.shape, shape)
	}
}

func (o *ops) fail(format string, args ...any) {
	if o.err == nil {
		o.err = fmt.Errorf(o.op+": "+format, args...)
	}
}

// noAlias fails when out shares memory with in (the kernel reads in after
// writing out).
func (o *ops) noAlias(out, in *Tensor, inName string) {
	if o.err == nil && in != nil && out.ptr == in.ptr {
		o.err = fmt.Errorf("%s: out must not alias %s", o.op, inName)
	}
}

// run enqueues on the owner goroutine.
func (o *ops) run(f func() error) error {
	if o.err != nil {
		return o.err
	}
	if err := o.be.do(o.op, f); err != nil {
		return fmt.Errorf("%s: %w", o.op, err)
	}
	return nil
}

func lastDim(t *Tensor) (rows, last int) {
	last = t.shape[len(t.shape)-1]
	return t.n / last, last
}

// elementwise launches kernel fn of the core module over n items with a
// grid-stride loop.
func (be *Backend) elementwise(what, fn string, n int64, args ...any) error {
	f, err := be.kernel("core", fn)
	if err != nil {
		return err
	}
	return be.launch(what, f, dims{be.gridFor(n, blockElementwise), 1, 1}, dims{blockElementwise, 1, 1}, 0, args...)
}

func (be *Backend) binary(op string, code int, out, a, b kernels.Tensor) error {
	o := be.ops(op)
	ot, at, bt := o.out(out, "out"), o.t(a, "a"), o.t(b, "b")
	if o.err == nil {
		o.shape(at, "a", ot.shape...)
		o.shape(bt, "b", ot.shape...)
	}
	return o.run(func() error {
		return be.elementwise(op, "k_binary", int64(ot.n), ot, ot.bf(), at, at.bf(), bt, bt.bf(), int64(ot.n), code)
	})
}

// Add writes a + b.
func (be *Backend) Add(out, a, b kernels.Tensor) error { return be.binary("add", 0, out, a, b) }

// Mul writes a·b.
func (be *Backend) Mul(out, a, b kernels.Tensor) error { return be.binary("mul", 1, out, a, b) }

func (be *Backend) unary(op string, code int, s float32, out, a kernels.Tensor, outF32 bool) error {
	o := be.ops(op)
	var ot, at *Tensor
	if outF32 {
		ot, at = o.out(out, "out"), o.t(a, "input")
	} else {
		ot, at = o.any(out, "out"), o.any(a, "input")
	}
	if o.err == nil {
		o.shape(at, "input", ot.shape...)
	}
	return o.run(func() error {
		n := int64(ot.n)
		if !rowOpsV1 && vecAligned(ot, at) {
			switch {
			case (code == 3 || code == 4) && ot.dtype == kernels.F32 && at.dtype == kernels.F32:
				return be.elementwise(op, "k_gelu_f32", (n+3)/4, ot, at, n, code-3)
			case code == 0 && ot.dtype == kernels.BF16 && at.dtype == kernels.F32:
				return be.elementwise(op, "k_cvt_f32_bf16", (n+3)/4, ot, at, n)
			case code == 0 && ot.dtype == kernels.F32 && at.dtype == kernels.BF16:
				return be.elementwise(op, "k_cvt_bf16_f32", (n+3)/4, ot, at, n)
			}
		}
		return be.elementwise(op, "k_unary", n, ot, ot.bf(), at, at.bf(), n, code, s)
	})
}

// Scale writes s·a.
func (be *Backend) Scale(out, a kernels.Tensor, s float32) error {
	return be.unary("scale", 1, s, out, a, true)
}

// SiLU writes a·σ(a), evaluated in double.
func (be *Backend) SiLU(out, a kernels.Tensor) error { return be.unary("silu", 2, 0, out, a, true) }

// GELU writes GELU(a) in the exact (erf) or tanh form, evaluated in double.
func (be *Backend) GELU(out, a kernels.Tensor, form kernels.GELUForm) error {
	switch form {
	case kernels.GELUErf:
		return be.unary("gelu", 3, 0, out, a, true)
	case kernels.GELUTanh:
		return be.unary("gelu", 4, 0, out, a, true)
	}
	return fmt.Errorf("gelu: unknown form %d", form)
}

// Convert writes a into out converting dtype (f32→bf16 rounds to nearest
// even, NaN stays NaN; bf16→f32 is exact). Shapes must be equal.
func (be *Backend) Convert(out, a kernels.Tensor) error {
	return be.unary("convert", 0, 0, out, a, false)
}

// AddBias adds bias[n] to every row of x[..., n] in place.
func (be *Backend) AddBias(x, bias kernels.Tensor) error {
	o := be.ops("addbias")
	xt, bt := o.out(x, "x"), o.t(bias, "bias")
	if o.err == nil {
		_, n := lastDim(xt)
		o.shape(bt, "bias", n)
	}
	return o.run(func() error {
		rows, n := lastDim(xt)
		if !rowOpsV1 {
			if n%4 == 0 && vecAligned(xt, bt) {
				return be.rowKernel("addbias", "k_add_bias_rows", rowGrid(rows, n/4), xt, bt, rows, n, 1)
			}
			return be.rowKernel("addbias", "k_add_bias_rows", rowGrid(rows, n), xt, bt, rows, n, 0)
		}
		return be.elementwise("addbias", "k_add_bias", int64(xt.n), xt, xt.bf(), bt, bt.bf(), int64(xt.n), n)
	})
}

// colRange checks that narrow [rows, cols] covers columns [col0,
// col0+cols) of wide [rows, wideCols] with the same rows (SliceCols and
// SetCols), and returns cols and wideCols.
func colRange(o *ops, narrow *Tensor, narrowName string, wide *Tensor, wideName string, col0 int) (cols, wideCols int) {
	if o.err != nil {
		return 0, 0
	}
	var rows, wrows int
	rows, cols = lastDim(narrow)
	wrows, wideCols = lastDim(wide)
	if rows != wrows {
		o.fail("%s %v has %d rows, %s %v has %d", narrowName, narrow.shape, rows, wideName, wide.shape, wrows)
	}
	if col0 < 0 || col0+cols > wideCols {
		o.fail("columns [%d,%d) outside %s's %d", col0, col0+cols, wideName, wideCols)
	}
	return cols, wideCols
}

// SliceCols copies columns [col0, col0+cols) of src[rows, srcCols] into
// out[rows, cols]; rows is the product of the leading dimensions.
func (be *Backend) SliceCols(out, src kernels.Tensor, col0 int) error {
	o := be.ops("slicecols")
	ot, st := o.out(out, "out"), o.t(src, "src")
	cols, scols := colRange(o, ot, "out", st, "src", col0)
	if o.err == nil {
		o.noAlias(ot, st, "src")
	}
	return o.run(func() error {
		if !rowOpsV1 {
			rows := ot.n / max(cols, 1)
			if cols%4 == 0 && scols%4 == 0 && col0%4 == 0 && vecAligned(ot, st) {
				return be.rowKernel("slicecols", "k_slice_cols_rows", rowGrid(rows, cols/4), ot, st, rows, cols, scols, col0, 1)
			}
			return be.rowKernel("slicecols", "k_slice_cols_rows", rowGrid(rows, cols), ot, st, rows, cols, scols, col0, 0)
		}
		return be.elementwise("slicecols", "k_slice_cols", int64(ot.n), ot, ot.bf(), st, st.bf(), int64(ot.n), cols, scols, col0)
	})
}

// RepeatHeads writes out[rows, heads·dim] from src[rows, srcHeads·dim],
// out head h = src head h/(heads/srcHeads). Only element counts are
// checked, so either may be shaped [.., heads, dim] or [.., heads·dim].
func (be *Backend) RepeatHeads(out, src kernels.Tensor, srcHeads, heads, dim int) error {
	o := be.ops("repeatheads")
	ot, st := o.out(out, "out"), o.t(src, "src")
	if o.err == nil {
		switch {
		case srcHeads <= 0 || heads <= 0 || dim <= 0 || heads%srcHeads != 0:
			o.fail("heads %d is not a positive multiple of srcHeads %d (dim %d)", heads, srcHeads, dim)
		case ot.n%(heads*dim) != 0:
			o.fail("out %v is not a whole number of rows of %d×%d", ot.shape, heads, dim)
		case st.n != ot.n/(heads*dim)*srcHeads*dim:
			o.fail("src %v does not hold %d rows of %d×%d", st.shape, ot.n/(heads*dim), srcHeads, dim)
		}
		o.noAlias(ot, st, "src")
	}
	return o.run(func() error {
		return be.elementwise("repeatheads", "k_repeat_heads", int64(ot.n), ot, ot.bf(), st, st.bf(), int64(ot.n), heads, srcHeads, dim)
	})
}

func checkEps(o *ops, eps float32) {
	if !(eps >= 0) || math.IsInf(float64(eps), 0) {
		o.fail("eps %g, want a finite number ≥ 0", eps)
	}
}

// Groups of rowNormMin … rowNormMax channels go to k_row_norm (a block
// a group, held in registers: at most 256 threads of 16 values); others,
// and all under rowOpsV1, to k_group_norm (a warp a group).
const rowNormMin, rowNormMax = 256, 256 * 16

// rowNormThreads is k_row_norm's block for a group: about 8 channels a
// thread, 64 to 256 threads.
func rowNormThreads(group int) int {
	t := ((group+7)/8 + 31) / 32 * 32
	return min(256, max(64, t))
}

// groupNorm launches k_row_norm or k_group_norm (see rowNormMin).
func (be *Backend) groupNorm(o *ops, out, y, z, w, bias *Tensor, group int, eps float32, mode int) error {
	_, n := lastDim(y)
	groups := int64(y.n / group)
	return o.run(func() error {
		if !rowOpsV1 && group >= rowNormMin && group <= rowNormMax {
			f, err := be.kernel("core", "k_row_norm")
			if err != nil {
				return err
			}
			vec := group%4 == 0 && n%4 == 0 && vecAligned(out, y, z, w, bias)
			grid := int(min(groups, int64(be.sms)*32))
			return be.launch(o.op, f, dims{grid, 1, 1}, dims{rowNormThreads(group), 1, 1}, 0,
				out, out.bf(), y, y.bf(), z, z.bf(), w, w.bf(), bias, bias.bf(), groups, n, group, eps, mode, vec)
		}
		f, err := be.kernel("core", "k_group_norm")
		if err != nil {
			return err
		}
		const block = 256
		grid := int(min((groups*32+block-1)/block, int64(be.sms)*32))
		return be.launch(o.op, f, dims{grid, 1, 1}, dims{block, 1, 1}, 0,
			out, out.bf(), y, y.bf(), z, z.bf(), w, w.bf(), bias, bias.bf(), groups, n, group, eps, mode)
	})
}

func (o *ops) norm(out, x, weight kernels.Tensor) (ot, xt, wt *Tensor) {
	ot, xt, wt = o.out(out, "out"), o.t(x, "x"), o.t(weight, "weight")
	if o.err == nil {
		o.shape(xt, "x", ot.shape...)
		_, n := lastDim(xt)
		o.shape(wt, "weight", n)
	}
	return
}

// LayerNorm writes (x−mean)/√(var+eps)·weight + bias over the last
// dimension (bias may be nil); sums in double. out may be x.
func (be *Backend) LayerNorm(out, x, weight, bias kernels.Tensor, eps float32) error {
	o := be.ops("layernorm")
	ot, xt, wt := o.norm(out, x, weight)
	bt := o.opt(bias, "bias")
	if o.err == nil {
		_, n := lastDim(xt)
		o.shape(bt, "bias", n)
	}
	checkEps(o, eps)
	if o.err != nil {
		return o.err
	}
	_, n := lastDim(xt)
	return be.groupNorm(o, ot, xt, nil, wt, bt, n, eps, 1)
}

// RMSNorm writes x/√(mean(x²)+eps)·weight over the last dimension. out
// may be x.
func (be *Backend) RMSNorm(out, x, weight kernels.Tensor, eps float32) error {
	o := be.ops("rmsnorm")
	ot, xt, wt := o.norm(out, x, weight)
	checkEps(o, eps)
	if o.err != nil {
		return o.err
	}
	_, n := lastDim(xt)
	return be.groupNorm(o, ot, xt, nil, wt, nil, n, eps, 0)
}

// GatedRMSNorm writes, per group of groupSize channels of the last
// dimension, RMSNorm(y·silu(z))·weight (norm after gate); z may be nil.
// out may be y or z.
func (be *Backend) GatedRMSNorm(out, y, z, weight kernels.Tensor, groupSize int, eps float32) error {
	o := be.ops("gatedrmsnorm")
	ot, yt, wt := o.norm(out, y, weight)
	zt := o.opt(z, "z")
	if o.err == nil {
		o.shape(zt, "z", yt.shape...)
		if _, n := lastDim(yt); groupSize <= 0 || n%groupSize != 0 {
			o.fail("group size %d does not divide the last dimension %d", groupSize, n)
		}
	}
	checkEps(o, eps)
	if o.err != nil {
		return o.err
	}
	return be.groupNorm(o, ot, yt, zt, wt, nil, groupSize, eps, 0)
}

// DtSoftplus writes softplus(dtRaw[..., h] + bias[h]) (bias may be nil),
// in double, x itself above 20.
func (be *Backend) DtSoftplus(out, dtRaw, bias kernels.Tensor) error {
	o := be.ops("dtsoftplus")
	ot, dt, bt := o.out(out, "out"), o.t(dtRaw, "dt"), o.opt(bias, "bias")
	var h int
	if o.err == nil {
		o.shape(dt, "dt", ot.shape...)
		_, h = lastDim(dt)
		o.shape(bt, "bias", h)
	}
	return o.run(func() error {
		return be.elementwise("dtsoftplus", "k_dt_softplus", int64(ot.n), ot, ot.bf(), dt, dt.bf(), bt, bt.bf(), int64(ot.n), h)
	})
}

// CausalConv1d writes the depthwise causal convolution of u[b,l,c] with
// weight[c,k] and bias[c] (may be nil), summed in double, then SiLU when
// silu is true. out must not alias u.
func (be *Backend) CausalConv1d(out, u, weight, bias kernels.Tensor, silu bool) error {
	o := be.ops("causalconv1d")
	ot, ut, wt, bt := o.out(out, "out"), o.t(u, "u"), o.t(weight, "weight"), o.opt(bias, "bias")
	var l, c, k int
	if o.err == nil {
		if len(ut.shape) != 3 {
			o.fail("u must be [batch, seqlen, channels], got %v", ut.shape)
		} else {
			l, c = ut.shape[1], ut.shape[2]
			o.shape(ot, "out", ut.shape...)
			if len(wt.shape) != 2 || wt.shape[0] != c {
				o.fail("weight must be [%d, k], got %v", c, wt.shape)
			} else {
				k = wt.shape[1]
			}
			o.shape(bt, "bias", c)
			o.noAlias(ot, ut, "u")
		}
	}
	return o.run(func() error {
		if !rowOpsV1 && k <= convMaxK && allF32(ot, ut, wt, bt) {
			return be.causalConv1d2(o.op, ot, ut, wt, bt, l, c, k, silu)
		}
		return be.elementwise("causalconv1d", "k_causal_conv1d", int64(ot.n), ot, ot.bf(), ut, ut.bf(), wt, wt.bf(), bt, bt.bf(),
			int64(ot.n), l, c, k, silu)
	})
}

// allF32 reports whether every given operand (nil ones skipped) is F32.
func allF32(ts ...*Tensor) bool {
	for _, t := range ts {
		if t != nil && t.dtype != kernels.F32 {
			return false
		}
	}
	return true
}

// convFwdSegMin is the fewest tokens a thread of k_causal_conv1d2 walks.
const convFwdSegMin = 16

// causalConv1d2 launches k_causal_conv1d2 (rowOpsV1 = false, float32, k ≤
// convMaxK): a thread a (4 channels when c is a multiple of 4 and u and
// out are 16-byte aligned, else 1, segment of tokens), enough segments for
// two waves of the device but at least convFwdSegMin tokens each.
func (be *Backend) causalConv1d2(what string, ot, ut, wt, bt *Tensor, l, c, k int, silu bool) error {
	if l == 0 || c == 0 {
		return nil
	}
	nb := ut.shape[0]
	cv := 1
	if c%4 == 0 && vecAligned(ot, ut) {
		cv = 4
	}
	vecs := c / cv
	want := max(1, (2*be.sms*2048+vecs-1)/vecs)
	seg := max(convFwdSegMin, (nb*l+want-1)/want)
	nsegb := (l + seg - 1) / seg
	cblocks := (vecs + convBlock - 1) / convBlock
	if int64(nb*nsegb)*int64(cblocks) > 1<<31-1 {
		return fmt.Errorf("too many segments (%d × %d blocks)", nb*nsegb, cblocks)
	}
	f, err := be.kernel("core", fmt.Sprintf("k_causal_conv1d2_%d_%d", k, cv))
	if err != nil {
		return err
	}
	return be.launch(what, f, dims{nb * nsegb * cblocks, 1, 1}, dims{convBlock, 1, 1}, 0, ot, ut, wt, bt, l, c, seg, nsegb, cblocks, silu)
}

// RoPE rotates, in place, the first rotaryDim dims of each head of
// x[b,l,h,p] by position pos0+t (rotate-half form); angles, sines and
// cosines in double.
func (be *Backend) RoPE(x kernels.Tensor, rotaryDim int, theta float64, pos0 int) error {
	o := be.ops("rope")
	xt := ropeOperand(o, x, rotaryDim, theta, pos0)
	return o.run(func() error {
		l, H, p := xt.shape[1], xt.shape[2], xt.shape[3]
		pairs := int64(xt.n / p * (rotaryDim / 2))
		return be.elementwise("rope", "k_rope", pairs, xt, xt.bf(), pairs, l, H, p, rotaryDim, theta, pos0)
	})
}

// ropeOperand checks RoPE's (and RoPEInverse's) arguments and loads x.
func ropeOperand(o *ops, x kernels.Tensor, rotaryDim int, theta float64, pos0 int) *Tensor {
	xt := o.t(x, "x")
	if o.err == nil {
		switch {
		case len(xt.shape) != 4:
			o.fail("x must be [batch, seqlen, heads, headdim], got %v", xt.shape)
		case rotaryDim <= 0 || rotaryDim%2 != 0 || rotaryDim > xt.shape[3]:
			o.fail("rotary dim %d must be even and in (0, %d]", rotaryDim, xt.shape[3])
		case !(theta > 0) || math.IsInf(theta, 0):
			o.fail("theta %g must be a positive number", theta)
		case pos0 < 0:
			o.fail("start position %d is negative", pos0)
		}
	}
	return xt
}

// MatMul computes out[m,n] = a[m,k]·bᵀ (transB, b [n,k]) or a·b (b [k,n])
// with cuBLAS: f32·f32 by sgemm in full float32 (no TF32), bf16·bf16 by
// GemmEx with float32 accumulation; a mixed pair first widens its bf16
// operand to f32 (exact). out is F32.
func (be *Backend) MatMul(out, a, b kernels.Tensor, transB bool) error {
	o := be.ops("matmul")
	ot, at, bt := o.out(out, "out"), o.any(a, "a"), o.any(b, "b")
	var m, n, k int
	if o.err == nil {
		m, k = lastDim(at)
		switch {
		case len(bt.shape) != 2:
			o.fail("b must be 2-D, got %v", bt.shape)
		case transB && bt.shape[1] != k:
			o.fail("a %v · bᵀ with b %v: inner dimensions %d and %d differ", at.shape, bt.shape, k, bt.shape[1])
		case !transB && bt.shape[0] != k:
			o.fail("a %v · b %v: inner dimensions %d and %d differ", at.shape, bt.shape, k, bt.shape[0])
		}
		if o.err == nil {
			n = bt.shape[0]
			if !transB {
				n = bt.shape[1]
			}
			if om, on := lastDim(ot); om != m || on != n {
				o.fail("out %v, want %d rows of %d (a %v, b %v, transB %v)", ot.shape, m, n, at.shape, bt.shape, transB)
			}
			o.noAlias(ot, at, "a")
			o.noAlias(ot, bt, "b")
		}
	}
	return o.run(func() error {
		ap, bp := at, bt
		dtype := cudaR32F
		if at.dtype == kernels.BF16 && bt.dtype == kernels.BF16 {
			dtype = cudaR16BF
		} else {
			// Widen whichever operand is bf16 into a temporary.
			for _, pp := range []**Tensor{&ap, &bp} {
				src := *pp
				if src.dtype != kernels.BF16 {
					continue
				}
				tmp, err := be.alloc(kernels.F32, src.shape, src.n)
				if err != nil {
					return err
				}
				defer be.release(tmp)
				if err := be.elementwise("matmul widen", "k_unary", int64(src.n), tmp, 0, src, 1, int64(src.n), 0, float32(0)); err != nil {
					return err
				}
				*pp = tmp
			}
		}
		return be.blas.gemmRowMajor(be.handle, m, n, k, ap.ptr, bp.ptr, transB, ot.ptr, dtype)
	})
}
