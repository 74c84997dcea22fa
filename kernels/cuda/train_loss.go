package cuda

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"

	"github.com/matsurgery/matsurgery/kernels"
)

// The loss family of kernels.Trainer (train.go of package kernels): the
// distillation losses with their gradients, the float64 sums of squares
// and AdamW. Kernels are in train_loss.cu. Every reduction is a fixed
// tree without atomics (per-row or per-block partials, then one pass of a
// single block), so results are the same bits run after run; a loss
// returns after one synchronisation, when its value has been copied back.

var _ kernels.LossGrad = (*Backend)(nil)

func init() {
	moduleFiles["train_loss"] = []string{"prelude.cu", "train_loss.cu"}
}

const (
	// lossThreads is the block of the loss kernels (LOSS_THREADS).
	lossThreads = 256
	// lossIgnoreLabel is the label CrossEntropy does not count.
	lossIgnoreLabel = -100
	// sqBlocksMax and sqPerBlock set the grid of the sums of squares: a
	// function of the element count alone, so the order of the additions
	// does not depend on the device.
	sqBlocksMax = 1024
	sqPerBlock  = lossThreads * 16
)

func lossFinite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// lossGradient loads a loss's optional gradient output: F32, of the
// input's shape, not sharing its memory.
func (o *ops) lossGradient(grad kernels.Tensor, inputs ...*Tensor) *Tensor {
	g := o.opt(grad, "gradient")
	if o.err == nil && g != nil {
		o.shape(g, "gradient", inputs[0].shape...)
		for _, in := range inputs {
			o.noAlias(g, in, "an input")
		}
	}
	return g
}

// rowLoss runs a per-row loss kernel (k_kl_rows or k_ce_rows) over the
// counted rows: index holds the rows' indices (then, for the cross-entropy,
// their targets), uploaded with the work; args follow the partials and
// index pointers. It returns the sum of the rows' values in a fixed order
// or, when that is not finite, an error naming the first row whose value
// is not. Owner goroutine only.
func (be *Backend) rowLoss(what, fn string, rows []int32, index []int32, args func(part, idx devPtr) []any) (float64, error) {
	count := len(rows)
	f, err := be.kernel("train_loss", fn)
	if err != nil {
		return 0, err
	}
	sum, err := be.kernel("train_loss", "k_sum_partials")
	if err != nil {
		return 0, err
	}
	// One temporary: the row partials, the sum, then the index.
	partBytes := 8 * (count + 1)
	buf, err := be.drv.alloc(uint64(partBytes+4*len(index)), be.stream)
	if err != nil {
		return 0, err
	}
	defer func() { _ = be.drv.free(buf, be.stream) }()
	part, total, idx := devPtr(buf), devPtr(buf+uint64(8*count)), devPtr(buf+uint64(partBytes))
	err = be.drv.htod(uint64(idx), unsafe.Pointer(unsafe.SliceData(index)), 4*len(index), be.stream)
	runtime.KeepAlive(index)
	if err != nil {
		return 0, err
	}
	if err := be.launch(what, f, dims{count, 1, 1}, dims{lossThreads, 1, 1}, 0, args(part, idx)...); err != nil {
		return 0, err
	}
	if err := be.launch(what+" sum", sum, dims{1, 1, 1}, dims{lossThreads, 1, 1}, 0, total, part, count); err != nil {
		return 0, err
	}
	var v float64
	if err := be.drv.dtoh(unsafe.Pointer(&v), uint64(total), 8, be.stream); err != nil {
		return 0, err
	}
	if err := be.drv.syncStream(be.stream); err != nil {
		return 0, err
	}
	if lossFinite(v) {
		return v, nil
	}
	// Name the row: the partials are still there.
	per := make([]float64, count)
	if err := be.drv.dtoh(unsafe.Pointer(unsafe.SliceData(per)), uint64(part), 8*count, be.stream); err != nil {
		return v, err
	}
	if err := be.drv.syncStream(be.stream); err != nil {
		return v, err
	}
	for i, x := range per {
		if !lossFinite(x) {
			return v, fmt.Errorf("value %g: row %d holds NaN or ±Inf (its term is %g)", v, rows[i], x)
		}
	}
	return v, fmt.Errorf("value %g is not finite", v)
}

// KLDivergence is T²/count·Σ_r KL(softmax(teacher_r/T) ‖ softmax(student_r/T))
// over the rows mask selects, one block a selected row, and dstudent +=
// weight·(T/count)·(q − p) on those rows (dstudent may be nil).
func (be *Backend) KLDivergence(dstudent, student, teacher kernels.Tensor, temperature float64, mask []bool, weight float32) (float64, error) {
	o := be.ops("kl")
	st, tt := o.t(student, "student"), o.t(teacher, "teacher")
	if o.err == nil {
		o.shape(tt, "teacher", st.shape...)
	}
	gt := o.lossGradient(dstudent, st, tt)
	if o.err != nil {
		return 0, o.err
	}
	if !(temperature > 0) || math.IsInf(temperature, 0) {
		return 0, fmt.Errorf("kl: temperature %g must be a positive number", temperature)
	}
	nrows, vocab := lastDim(st)
	if mask != nil && len(mask) != nrows {
		return 0, fmt.Errorf("kl: mask has %d rows, the logits %v have %d", len(mask), st.shape, nrows)
	}
	rows := make([]int32, 0, nrows)
	for r := range nrows {
		if mask == nil || mask[r] {
			rows = append(rows, int32(r))
		}
	}
	if len(rows) == 0 {
		return 0, nil
	}
	count := float64(len(rows))
	gscale := float64(weight) * temperature / count
	if gscale == 0 {
		gt = nil
	}
	var sum float64
	err := o.run(func() error {
		var err error
		sum, err = be.rowLoss(o.op, "k_kl_rows", rows, rows, func(part, idx devPtr) []any {
			return []any{part, gt, st, tt, idx, vocab, 1 / temperature, gscale}
		})
		return err
	})
	return temperature * temperature * sum / count, err
}

// CrossEntropy is the mean over counted rows of −log softmax(logits_r)
// [target_r] — the next row's label within each sequence of [.., L,
// vocab] — one block a counted row, and dlogits += weight·(softmax −
// onehot)/count on those rows (dlogits may be nil). Labels are checked on
// the host.
func (be *Backend) CrossEntropy(dlogits, logits kernels.Tensor, labels []int, weight float32) (float64, error) {
	o := be.ops("cross-entropy")
	lt := o.t(logits, "logits")
	gt := o.lossGradient(dlogits, lt)
	if o.err != nil {
		return 0, o.err
	}
	nrows, vocab := lastDim(lt)
	if len(labels) != nrows {
		return 0, fmt.Errorf("cross-entropy: %d labels for the %d rows of logits %v", len(labels), nrows, lt.shape)
	}
	seq := 1
	if len(lt.shape) >= 2 {
		seq = lt.shape[len(lt.shape)-2]
	}
	var rows, targets []int32
	for i, l := range labels {
		if l != lossIgnoreLabel && (l < 0 || l >= vocab) {
			return 0, fmt.Errorf("cross-entropy: label %d (position %d) is outside the vocabulary [0, %d) and is not %d", l, i, vocab, lossIgnoreLabel)
		}
		if i%seq != 0 && l != lossIgnoreLabel {
			rows = append(rows, int32(i-1))
			targets = append(targets, int32(l))
		}
	}
	if len(rows) == 0 {
		return 0, nil
	}
	count := float64(len(rows))
	gscale := float64(weight) / count
	if gscale == 0 {
		gt = nil
	}
	index := append(rows[:len(rows):len(rows)], targets...)
	var sum float64
	err := o.run(func() error {
		var err error
		sum, err = be.rowLoss(o.op, "k_ce_rows", rows, index, func(part, idx devPtr) []any {
			return []any{part, gt, lt, idx, idx + devPtr(4*len(rows)), vocab, gscale}
		})
		return err
	})
	return sum / count, err
}

// sumSquares returns Σ (a − b)² (b nil: Σ a²) in double, and enqueues,
// when grad is not nil, grad += weight·scale(form)·(a − b) with the scale
// computed on the device from the sum (LayerDistance's gradient). Owner
// goroutine only.
func (be *Backend) sumSquares(what string, a, b, grad *Tensor, form kernels.Distance, weight float32) (float64, error) {
	partial, err := be.kernel("train_loss", "k_sq_partials")
	if err != nil {
		return 0, err
	}
	sum, err := be.kernel("train_loss", "k_sum_partials")
	if err != nil {
		return 0, err
	}
	n := int64(a.n)
	blocks := int(min(sqBlocksMax, max(1, (n+sqPerBlock-1)/sqPerBlock)))
	buf, err := be.drv.alloc(uint64(8*(blocks+1)), be.stream)
	if err != nil {
		return 0, err
	}
	defer func() { _ = be.drv.free(buf, be.stream) }()
	part, total := devPtr(buf), devPtr(buf+uint64(8*blocks))
	if err := be.launch(what, partial, dims{blocks, 1, 1}, dims{lossThreads, 1, 1}, 0, part, a, b, n); err != nil {
		return 0, err
	}
	if err := be.launch(what+" sum", sum, dims{1, 1, 1}, dims{lossThreads, 1, 1}, 0, total, part, blocks); err != nil {
		return 0, err
	}
	if grad != nil && weight != 0 {
		f, err := be.kernel("train_loss", "k_distance_grad")
		if err != nil {
			return 0, err
		}
		if err := be.launch(what+" gradient", f, dims{be.gridFor(n, blockElementwise), 1, 1}, dims{blockElementwise, 1, 1}, 0,
			grad, a, b, n, total, int(form), float64(weight)); err != nil {
			return 0, err
		}
	}
	var v float64
	if err := be.drv.dtoh(unsafe.Pointer(&v), uint64(total), 8, be.stream); err != nil {
		return 0, err
	}
	return v, be.drv.syncStream(be.stream)
}

// LayerDistance is the distance of the given form between student and
// teacher, Σ (s − t)² in double by fixed per-block partials, and dstudent
// += weight·∂distance/∂student (dstudent may be nil; nothing is written
// where the gradient is 0: the 2-norm at zero distance).
func (be *Backend) LayerDistance(dstudent, student, teacher kernels.Tensor, form kernels.Distance, weight float32) (float64, error) {
	o := be.ops("layer distance")
	st, tt := o.t(student, "student"), o.t(teacher, "teacher")
	if o.err == nil {
		o.shape(tt, "teacher", st.shape...)
	}
	gt := o.lossGradient(dstudent, st, tt)
	if o.err == nil && form > kernels.DistanceMeanSquared {
		o.fail("unknown form %d", form)
	}
	var ss float64
	err := o.run(func() error {
		var err error
		ss, err = be.sumSquares(o.op, st, tt, gt, form, weight)
		return err
	})
	if err != nil {
		return 0, err
	}
	if !lossFinite(ss) {
		return ss, fmt.Errorf("layer distance: Σ(student − teacher)² is %g: an input holds NaN or ±Inf", ss)
	}
	switch form {
	case kernels.DistanceL2Norm:
		return math.Sqrt(ss), nil
	case kernels.DistanceSquaredL2:
		return ss, nil
	}
	return ss / float64(st.n), nil
}

// SumSquares is Σ a² in double by fixed per-block partials; a NaN or ±Inf
// element gives the value with an error.
func (be *Backend) SumSquares(a kernels.Tensor) (float64, error) {
	o := be.ops("sumsquares")
	at := o.t(a, "input")
	var ss float64
	err := o.run(func() error {
		var err error
		ss, err = be.sumSquares(o.op, at, nil, nil, 0, 0)
		return err
	})
	if err != nil {
		return 0, err
	}
	if !lossFinite(ss) {
		return ss, fmt.Errorf("sumsquares: %g: the tensor %v holds NaN or ±Inf", ss, at.shape)
	}
	return ss, nil
}

// lossCheckAdamW reports the settings optim.AdamW rejects, a Step below 1
// and a GradScale that is not a positive finite number.
func lossCheckAdamW(o *ops, s kernels.AdamWStep) {
	switch {
	case !lossFinite(s.LR) || s.LR < 0:
		o.fail("learning rate %g is not a non-negative finite number", s.LR)
	case !(s.Beta1 >= 0 && s.Beta1 < 1):
		o.fail("beta1 %g is outside [0, 1)", s.Beta1)
	case !(s.Beta2 >= 0 && s.Beta2 < 1):
		o.fail("beta2 %g is outside [0, 1)", s.Beta2)
	case !lossFinite(s.Eps) || s.Eps < 0:
		o.fail("eps %g is not a non-negative finite number", s.Eps)
	case !lossFinite(s.WeightDecay) || s.WeightDecay < 0:
		o.fail("weight decay %g is not a non-negative finite number", s.WeightDecay)
	case s.Step < 1:
		o.fail("step %d: steps count from 1", s.Step)
	case !lossFinite(s.GradScale) || !(s.GradScale > 0):
		o.fail("gradient scale %g is not a positive finite number", s.GradScale)
	}
}

// AdamW updates param, m and v in place (and writes shadow, when given),
// one thread an element, with optim.AdamW's arithmetic in double and
// explicit rounding: the same bits as the host optimiser. The step's
// scalars (bias corrections, decay factor) are computed here on the host
// exactly as optim computes them.
func (be *Backend) AdamW(param, grad, m, v, shadow kernels.Tensor, decay bool, s kernels.AdamWStep) error {
	o := be.ops("adamw")
	lossCheckAdamW(o, s)
	pt, gt, mt, vt := o.out(param, "param"), o.t(grad, "grad"), o.out(m, "m"), o.out(v, "v")
	sh := o.optAny(shadow, "shadow")
	if o.err == nil {
		for _, x := range []struct {
			t    *Tensor
			name string
		}{{gt, "grad"}, {mt, "m"}, {vt, "v"}, {sh, "shadow"}} {
			o.shape(x.t, x.name, pt.shape...)
		}
		if sh != nil && sh.dtype != kernels.BF16 {
			o.fail("shadow is %v, want bf16", sh.dtype)
		}
		o.noAlias(pt, gt, "grad")
		o.noAlias(pt, mt, "m")
		o.noAlias(pt, vt, "v")
		o.noAlias(mt, vt, "v")
		o.noAlias(mt, gt, "grad")
		o.noAlias(vt, gt, "grad")
	}
	if o.err != nil {
		return o.err
	}
	t := float64(s.Step)
	b1, b2 := s.Beta1, s.Beta2
	stepSize := s.LR / (1 - math.Pow(b1, t))
	bc2Sqrt := math.Sqrt(1 - math.Pow(b2, t))
	keep := 1.0
	if decay {
		keep = 1 - s.LR*s.WeightDecay
	}
	n := int64(pt.n)
	return o.run(func() error {
		f, err := be.kernel("train_loss", "k_adamw")
		if err != nil {
			return err
		}
		return be.launch(o.op, f, dims{be.gridFor(n, blockElementwise), 1, 1}, dims{blockElementwise, 1, 1}, 0,
			pt, gt, mt, vt, sh, n, b1, 1-b1, b2, 1-b2, stepSize, bc2Sqrt, s.Eps, keep, s.GradScale)
	})
}
