package cpu

import (
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// kernels.LossGrad on the CPU: the losses run a row (or a fixed chunk) a
// task, each task's float64 sum is kept apart and the sums are added in
// row (chunk) order, so values and gradients do not depend on the number
// of workers. AdamW repeats optim.AdamW's per-element arithmetic
// operation for operation: the same float32 results.

var _ kernels.LossGrad = (*Backend)(nil)

// lossIgnoreLabel is the label CrossEntropy does not count (HF's ignore_index).
const lossIgnoreLabel = -100

// lossSumChunk is the number of elements of one task of the float64 sums of
// LayerDistance and SumSquares (fixed: it sets the order of the additions).
const lossSumChunk = 1 << 16

// pairOperands loads a student/teacher loss's operands: both F32 of one
// shape, and the optional gradient output.
func (be *Backend) pairOperands(op string, dstudent, student, teacher kernels.Tensor) (st, tt, g *Tensor, err error) {
	if st, err = be.f32Tensor(student, op+" student"); err != nil {
		return nil, nil, nil, err
	}
	if tt, err = be.f32Tensor(teacher, op+" teacher"); err != nil {
		return nil, nil, nil, err
	}
	if !slices.Equal(st.shape, tt.shape) {
		return nil, nil, nil, fmt.Errorf("%s: teacher has shape %v, student %v", op, tt.shape, st.shape)
	}
	if g, err = be.lossGradient(op, dstudent, st); err != nil {
		return nil, nil, nil, err
	}
	return st, tt, g, nil
}

// lossGradient loads the optional gradient output of a loss: F32, of the
// input's shape.
func (be *Backend) lossGradient(op string, grad kernels.Tensor, input *Tensor) (*Tensor, error) {
	g, err := be.optF32(grad, op+" gradient")
	if err != nil || g == nil {
		return nil, err
	}
	if !slices.Equal(g.shape, input.shape) {
		return nil, fmt.Errorf("%s: gradient has shape %v, the input %v", op, g.shape, input.shape)
	}
	return g, nil
}

func lossFinite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// lossValue returns v, or an error when it is NaN or ±Inf that names the
// first row whose own term is not finite.
func lossValue(op string, v float64, perRow []float64) (float64, error) {
	if lossFinite(v) {
		return v, nil
	}
	for r, x := range perRow {
		if !lossFinite(x) {
			return v, fmt.Errorf("%s: value %g: row %d holds NaN or ±Inf", op, v, r)
		}
	}
	return v, fmt.Errorf("%s: value %g is not finite", op, v)
}

// KLDivergence is T²/count·Σ_r KL(softmax(teacher_r/T) ‖ softmax(student_r/T))
// over the rows mask selects, and dstudent += weight·(T/count)·(q − p) on
// them. Each row's log-sum-exps and sum run in float64 (the exponentials
// kept in per-worker scratch), rows in parallel.
func (be *Backend) KLDivergence(dstudent, student, teacher kernels.Tensor, temperature float64, mask []bool, weight float32) (float64, error) {
	const op = "kl"
	st, tt, g, err := be.pairOperands(op, dstudent, student, teacher)
	if err != nil {
		return 0, err
	}
	if !(temperature > 0) || math.IsInf(temperature, 0) {
		return 0, fmt.Errorf("%s: temperature %g must be a positive number", op, temperature)
	}
	rows, vocab := lastDim(st)
	if mask != nil && len(mask) != rows {
		return 0, fmt.Errorf("%s: mask has %d rows, the logits %v have %d", op, len(mask), st.shape, rows)
	}
	count := rows
	if mask != nil {
		count = 0
		for _, m := range mask {
			if m {
				count++
			}
		}
	}
	if count == 0 {
		return 0, nil
	}
	gscale := float64(weight) * temperature / float64(count)
	perRow := make([]float64, rows)
	scratch := make([][]float64, be.workerCount(rows))
	be.parallelTasks(rows, func(w, r int) {
		if mask != nil && !mask[r] {
			return
		}
		if scratch[w] == nil {
			scratch[w] = make([]float64, 2*vocab)
		}
		es, et := scratch[w][:vocab], scratch[w][vocab:]
		s, t := st.f32[r*vocab:(r+1)*vocab], tt.f32[r*vocab:(r+1)*vocab]
		lseS := lossExpRow(es, s, temperature)
		lseT := lossExpRow(et, t, temperature)
		if !lossFinite(lseS.lse) || !lossFinite(lseT.lse) {
			// A NaN or +Inf logit: p and q are NaN, and p > 0 below
			// would skip every term.
			perRow[r] = math.NaN()
			return
		}
		var dg []float32
		if g != nil && gscale != 0 {
			dg = g.f32[r*vocab : (r+1)*vocab]
		}
		var kl float64
		for v := range vocab {
			p := et[v] / lseT.sum
			if p > 0 {
				lp := float64(t[v])/temperature - lseT.lse
				lq := float64(s[v])/temperature - lseS.lse
				kl += p * (lp - lq)
			}
			if dg != nil {
				q := es[v] / lseS.sum
				dg[v] = float32(float64(dg[v]) + gscale*(q-p))
			}
		}
		perRow[r] = kl
	})
	var sum float64
	for _, kl := range perRow {
		sum += kl
	}
	return lossValue(op, temperature*temperature*sum/float64(count), perRow)
}

// lossRowLSE is a row's Σ exp(z/T − max) and log-sum-exp of z/T.
type lossRowLSE struct{ sum, lse float64 }

// lossExpRow writes exp(z/T − max_v z/T) into e (float64) and returns the sum
// and the log-sum-exp.
func lossExpRow(e []float64, z []float32, temperature float64) lossRowLSE {
	mx := float64(slices.Max(z)) / temperature // z/T is monotone in z (T > 0)
	var sum float64
	for i, v := range z {
		e[i] = math.Exp(float64(v)/temperature - mx)
		sum += e[i]
	}
	return lossRowLSE{sum: sum, lse: mx + math.Log(sum)}
}

// lossTargets maps labels (one a row; sequences of seq rows) to each
// row's target, the label of the next row of its sequence, or −1 where
// the row predicts nothing; count is the number of rows with a target.
func lossTargets(op string, labels []int, seq, vocab int) (targets []int, count int, err error) {
	targets = make([]int, len(labels))
	for i, l := range labels {
		if l != lossIgnoreLabel && (l < 0 || l >= vocab) {
			return nil, 0, fmt.Errorf("%s: label %d (position %d) is outside the vocabulary [0, %d) and is not %d", op, l, i, vocab, lossIgnoreLabel)
		}
		targets[i] = -1
		if i%seq != 0 && l != lossIgnoreLabel {
			targets[i-1] = l
			count++
		}
	}
	return targets, count, nil
}

// CrossEntropy is the mean over counted rows of −log softmax(logits_r)
// [target_r] (the next row's label within each sequence of [.., L,
// vocab]), and dlogits += weight·(softmax − onehot)/count on those rows;
// log-sum-exps in float64, rows in parallel.
func (be *Backend) CrossEntropy(dlogits, logits kernels.Tensor, labels []int, weight float32) (float64, error) {
	const op = "cross-entropy"
	lt, err := be.f32Tensor(logits, op+" logits")
	if err != nil {
		return 0, err
	}
	g, err := be.lossGradient(op, dlogits, lt)
	if err != nil {
		return 0, err
	}
	rows, vocab := lastDim(lt)
	if len(labels) != rows {
		return 0, fmt.Errorf("%s: %d labels for the %d rows of logits %v", op, len(labels), rows, lt.shape)
	}
	seq := 1
	if len(lt.shape) >= 2 {
		seq = lt.shape[len(lt.shape)-2]
	}
	targets, count, err := lossTargets(op, labels, seq, vocab)
	if err != nil {
		return 0, err
	}
	if count == 0 {
		return 0, nil
	}
	gscale := float64(weight) / float64(count)
	perRow := make([]float64, rows)
	scratch := make([][]float64, be.workerCount(rows))
	be.parallelTasks(rows, func(w, r int) {
		target := targets[r]
		if target < 0 {
			return
		}
		if scratch[w] == nil {
			scratch[w] = make([]float64, vocab)
		}
		e := scratch[w]
		z := lt.f32[r*vocab : (r+1)*vocab]
		l := lossExpRow(e, z, 1)
		perRow[r] = l.lse - float64(z[target])
		if g == nil || gscale == 0 {
			return
		}
		d := g.f32[r*vocab : (r+1)*vocab]
		for v := range vocab {
			q := e[v] / l.sum
			if v == target {
				q--
			}
			d[v] = float32(float64(d[v]) + gscale*q)
		}
	})
	var sum float64
	for _, x := range perRow {
		sum += x
	}
	return lossValue(op, sum/float64(count), perRow)
}

// lossChunkSums adds f(lo, hi) over the fixed chunks of [0, n) in parallel and
// returns their sum in chunk order.
func (be *Backend) lossChunkSums(n int, f func(lo, hi int) float64) float64 {
	chunks := (n + lossSumChunk - 1) / lossSumChunk
	part := make([]float64, chunks)
	be.parallelTasks(chunks, func(_, c int) {
		part[c] = f(c*lossSumChunk, min(n, (c+1)*lossSumChunk))
	})
	var s float64
	for _, p := range part {
		s += p
	}
	return s
}

// LayerDistance is the distance of the given form between student and
// teacher, Σ (s − t)² summed in float64 over fixed chunks, and dstudent +=
// weight·∂distance/∂student (nothing at all where that is 0: the 2-norm at
// zero distance).
func (be *Backend) LayerDistance(dstudent, student, teacher kernels.Tensor, form kernels.Distance, weight float32) (float64, error) {
	const op = "layer distance"
	st, tt, g, err := be.pairOperands(op, dstudent, student, teacher)
	if err != nil {
		return 0, err
	}
	if form > kernels.DistanceMeanSquared {
		return 0, fmt.Errorf("%s: unknown form %d", op, form)
	}
	s, t := st.f32, tt.f32
	ss := be.lossChunkSums(len(s), func(lo, hi int) float64 {
		var acc float64
		for i := lo; i < hi; i++ {
			d := float64(s[i]) - float64(t[i])
			acc += d * d
		}
		return acc
	})
	if !lossFinite(ss) {
		return ss, fmt.Errorf("%s: Σ(student − teacher)² is %g: an input holds NaN or ±Inf", op, ss)
	}
	var loss, scale float64
	switch form {
	case kernels.DistanceL2Norm:
		loss = math.Sqrt(ss)
		if loss > 0 {
			scale = 1 / loss
		}
	case kernels.DistanceSquaredL2:
		loss, scale = ss, 2
	case kernels.DistanceMeanSquared:
		n := float64(len(s))
		loss, scale = ss/n, 2/n
	}
	if k := float64(weight) * scale; g != nil && k != 0 {
		d := g.f32
		be.parallelFor(len(d), grainElementwise, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				d[i] = float32(float64(d[i]) + k*(float64(s[i])-float64(t[i])))
			}
		})
	}
	return loss, nil
}

// SumSquares is Σ a² in float64 over fixed chunks; a NaN or ±Inf element
// gives its value with an error.
func (be *Backend) SumSquares(a kernels.Tensor) (float64, error) {
	at, err := be.f32Tensor(a, "sumsquares input")
	if err != nil {
		return 0, err
	}
	x := at.f32
	ss := be.lossChunkSums(len(x), func(lo, hi int) float64 {
		var acc float64
		for _, v := range x[lo:hi] {
			acc += float64(v) * float64(v)
		}
		return acc
	})
	if !lossFinite(ss) {
		return ss, fmt.Errorf("sumsquares: %g: the tensor %v holds NaN or ±Inf", ss, at.shape)
	}
	return ss, nil
}

// lossCheckAdamW reports the settings optim.AdamW rejects, a Step below 1 and
// a GradScale that is not a positive finite number.
func lossCheckAdamW(s kernels.AdamWStep) error {
	switch {
	case !lossFinite(s.LR) || s.LR < 0:
		return fmt.Errorf("learning rate %g is not a non-negative finite number", s.LR)
	case !(s.Beta1 >= 0 && s.Beta1 < 1):
		return fmt.Errorf("beta1 %g is outside [0, 1)", s.Beta1)
	case !(s.Beta2 >= 0 && s.Beta2 < 1):
		return fmt.Errorf("beta2 %g is outside [0, 1)", s.Beta2)
	case !lossFinite(s.Eps) || s.Eps < 0:
		return fmt.Errorf("eps %g is not a non-negative finite number", s.Eps)
	case !lossFinite(s.WeightDecay) || s.WeightDecay < 0:
		return fmt.Errorf("weight decay %g is not a non-negative finite number", s.WeightDecay)
	case s.Step < 1:
		return fmt.Errorf("step %d: steps count from 1", s.Step)
	case !lossFinite(s.GradScale) || !(s.GradScale > 0):
		return fmt.Errorf("gradient scale %g is not a positive finite number", s.GradScale)
	}
	return nil
}

// AdamW updates param, m and v in place (and writes shadow, when given)
// with optim.AdamW's arithmetic: the gradient scaled and rounded to
// float32, then every element in float64 from the stored float32 values,
// each operation rounded (explicit conversions forbid the compiler's
// fused multiply-adds), the bias corrections in float64 — the same bits
// as optim on builds that do not fuse (amd64 below GOAMD64=v3), and as the
// CUDA backend on every build.
func (be *Backend) AdamW(param, grad, m, v, shadow kernels.Tensor, decay bool, s kernels.AdamWStep) error {
	const op = "adamw"
	if err := lossCheckAdamW(s); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	pt, err := be.f32Tensor(param, op+" param")
	if err != nil {
		return err
	}
	operands := make([]*Tensor, 3)
	for i, o := range []struct {
		t    kernels.Tensor
		name string
	}{{grad, "grad"}, {m, "m"}, {v, "v"}} {
		if operands[i], err = be.f32Tensor(o.t, op+" "+o.name); err != nil {
			return err
		}
		if !slices.Equal(operands[i].shape, pt.shape) {
			return fmt.Errorf("%s: %s has shape %v, param %v", op, o.name, operands[i].shape, pt.shape)
		}
	}
	gt, mt, vt := operands[0], operands[1], operands[2]
	var sh *Tensor
	if shadow != nil {
		if sh, err = be.tensor(shadow, op+" shadow"); err != nil {
			return err
		}
		if sh.dtype != kernels.BF16 {
			return fmt.Errorf("%s: shadow is %v, want bf16", op, sh.dtype)
		}
		if !slices.Equal(sh.shape, pt.shape) {
			return fmt.Errorf("%s: shadow has shape %v, param %v", op, sh.shape, pt.shape)
		}
	}
	// The scalars of one step, as optim.AdamW.Step computes them.
	t := float64(s.Step)
	b1, b2 := s.Beta1, s.Beta2
	a1, a2 := 1-b1, 1-b2
	stepSize := s.LR / (1 - math.Pow(b1, t))
	bc2Sqrt := math.Sqrt(1 - math.Pow(b2, t))
	keep := 1.0
	if decay {
		keep = 1 - s.LR*s.WeightDecay
	}
	eps, scale := s.Eps, s.GradScale
	data, gr, mm, vv := pt.f32, gt.f32, mt.f32, vt.f32
	be.parallelFor(len(data), grainElementwise, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			// The float64() conversions round each product, as the
			// CUDA kernel does: no fused multiply-add on any build.
			g := float64(float32(float64(gr[i]) * scale))
			mi := float32(float64(b1*float64(mm[i])) + float64(a1*g))
			vi := float32(float64(b2*float64(vv[i])) + float64(float64(a2*g)*g))
			mm[i], vv[i] = mi, vi
			denom := math.Sqrt(float64(vi))/bc2Sqrt + eps
			data[i] = float32(float64(float64(data[i])*keep) - float64(stepSize*float64(mi))/denom)
			if sh != nil {
				sh.bf16[i] = roundBF16(data[i])
			}
		}
	})
	return nil
}
