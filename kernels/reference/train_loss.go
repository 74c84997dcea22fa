package reference

import (
	"fmt"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// References of kernels.LossGrad (kernels/train.go): the distillation
// losses with their gradients, and AdamW. Each loss returns its value and
// its gradient with respect to its first input (unweighted: the backend
// adds weight·gradient into its buffer).

// IgnoreLabel is the label CrossEntropy does not count (HF's ignore_index).
const IgnoreLabel = -100

// logSoftmaxRow writes z/T − logsumexp(z/T) of one row into out.
func logSoftmaxRow(out, z []float64, temperature float64) {
	mx := math.Inf(-1)
	for i, v := range z {
		out[i] = v / temperature
		mx = max(mx, out[i])
	}
	var sum float64
	for _, v := range out {
		sum += math.Exp(v - mx)
	}
	lse := mx + math.Log(sum)
	for i := range out {
		out[i] -= lse
	}
}

// KLDivergence is T²/count · Σ_r Σ_v p_v·(log p_v − log q_v) over the rows r
// of student and teacher [.., vocab] (leading dimensions flattened) that
// mask selects (nil: all; count is the number selected), with p =
// softmax(teacher_r/T) and q = softmax(student_r/T), and its gradient
// T/count·(q − p) with respect to student (0 on rows not selected). No
// selected row gives 0.
func KLDivergence(student, teacher *Array, temperature float64, mask []bool) (float64, *Array, error) {
	rows, vocab, err := lastDim(student, "kl student")
	if err != nil {
		return 0, nil, err
	}
	if teacher == nil || !slices.Equal(student.Shape, teacher.Shape) {
		return 0, nil, fmt.Errorf("kl: teacher has shape %v, student %v", shapeOf(teacher), student.Shape)
	}
	if !(temperature > 0) || math.IsInf(temperature, 0) {
		return 0, nil, fmt.Errorf("kl: temperature %g must be a positive number", temperature)
	}
	if mask != nil && len(mask) != rows {
		return 0, nil, fmt.Errorf("kl: mask has %d rows, logits %d", len(mask), rows)
	}
	count := 0
	for r := range rows {
		if mask == nil || mask[r] {
			count++
		}
	}
	grad := New(student.Shape...)
	if count == 0 {
		return 0, grad, nil
	}
	scale := temperature / float64(count)
	lq, lp := make([]float64, vocab), make([]float64, vocab)
	var sum float64
	for r := range rows {
		if mask != nil && !mask[r] {
			continue
		}
		logSoftmaxRow(lq, student.Data[r*vocab:(r+1)*vocab], temperature)
		logSoftmaxRow(lp, teacher.Data[r*vocab:(r+1)*vocab], temperature)
		g := grad.Data[r*vocab : (r+1)*vocab]
		for v := range vocab {
			p := math.Exp(lp[v])
			if p > 0 {
				sum += p * (lp[v] - lq[v])
			}
			g[v] = scale * (math.Exp(lq[v]) - p)
		}
	}
	return temperature * temperature * sum / float64(count), grad, nil
}

// CrossEntropy is the next-token cross-entropy of logits [.., L, vocab]
// (sequences of L rows; 1-D or 2-D: one sequence) against labels (one a
// row): row t of a sequence predicts the label of row t+1 of the same
// sequence, labels equal to IgnoreLabel are not counted, and the mean is
// over the counted rows. Its gradient is (softmax − onehot)/count on the
// counted rows. Any other label outside [0, vocab) is an error, wherever
// it is. No counted row gives 0.
func CrossEntropy(logits *Array, labels []int) (float64, *Array, error) {
	rows, vocab, err := lastDim(logits, "cross-entropy logits")
	if err != nil {
		return 0, nil, err
	}
	if len(labels) != rows {
		return 0, nil, fmt.Errorf("cross-entropy: %d labels for %d logits rows", len(labels), rows)
	}
	seq := sequenceLength(logits.Shape)
	targets, count, err := nextTokenTargets(labels, seq, vocab)
	if err != nil {
		return 0, nil, fmt.Errorf("cross-entropy: %w", err)
	}
	grad := New(logits.Shape...)
	if count == 0 {
		return 0, grad, nil
	}
	inv := 1 / float64(count)
	ls := make([]float64, vocab)
	var sum float64
	for r, target := range targets {
		if target < 0 {
			continue
		}
		logSoftmaxRow(ls, logits.Data[r*vocab:(r+1)*vocab], 1)
		g := grad.Data[r*vocab : (r+1)*vocab]
		for v := range vocab {
			g[v] = inv * math.Exp(ls[v])
		}
		g[target] -= inv
		sum -= ls[target]
	}
	return sum * inv, grad, nil
}

// sequenceLength is the number of rows of one sequence of logits of the
// given shape [.., L, vocab]: L, or 1 for a 1-D shape.
func sequenceLength(shape []int) int {
	if len(shape) < 2 {
		return 1
	}
	return shape[len(shape)-2]
}

// nextTokenTargets maps labels (one a row, sequences of seq rows) to the
// target of each row: the label of the next row of its sequence, or −1
// where the row predicts nothing (the last row of a sequence, or a next
// label equal to IgnoreLabel). count is the number of rows with a target.
// A label outside [0, vocab) other than IgnoreLabel is an error naming
// its position.
func nextTokenTargets(labels []int, seq, vocab int) (targets []int, count int, err error) {
	if seq <= 0 || len(labels)%seq != 0 {
		return nil, 0, fmt.Errorf("%d labels are not whole sequences of %d rows", len(labels), seq)
	}
	targets = make([]int, len(labels))
	for i, l := range labels {
		if l != IgnoreLabel && (l < 0 || l >= vocab) {
			return nil, 0, fmt.Errorf("label %d (position %d) is outside the vocabulary [0, %d) and is not %d", l, i, vocab, IgnoreLabel)
		}
		targets[i] = -1
		if i > 0 && i%seq != 0 && l != IgnoreLabel {
			targets[i-1] = l
			count++
		}
	}
	return targets, count, nil
}

// LayerDistance is the distance of the given form between student and
// teacher (equal shapes, taken as one vector d = student − teacher) and
// its gradient with respect to student: ‖d‖₂ with d/‖d‖₂ (0 when d = 0),
// ‖d‖₂² with 2d, or ‖d‖₂²/n with 2d/n.
func LayerDistance(student, teacher *Array, form kernels.Distance) (float64, *Array, error) {
	if student == nil || teacher == nil || student.Len() == 0 || !slices.Equal(student.Shape, teacher.Shape) {
		return 0, nil, fmt.Errorf("layer distance: student has shape %v, teacher %v", shapeOf(student), shapeOf(teacher))
	}
	var ss float64
	for i, s := range student.Data {
		d := s - teacher.Data[i]
		ss += d * d
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
		n := float64(student.Len())
		loss, scale = ss/n, 2/n
	default:
		return 0, nil, fmt.Errorf("layer distance: unknown form %d", form)
	}
	grad := New(student.Shape...)
	for i, s := range student.Data {
		grad.Data[i] = scale * (s - teacher.Data[i])
	}
	return loss, grad, nil
}

// SumSquares is Σ a².
func SumSquares(a *Array) float64 {
	var s float64
	if a != nil {
		for _, v := range a.Data {
			s += v * v
		}
	}
	return s
}

// CheckAdamWStep reports settings that torch.optim.AdamW (and package
// optim) would reject, a Step below 1, and a GradScale that is not a
// positive finite number.
func CheckAdamWStep(s kernels.AdamWStep) error {
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case !finite(s.LR) || s.LR < 0:
		return fmt.Errorf("adamw: learning rate %g is not a non-negative finite number", s.LR)
	case !(s.Beta1 >= 0 && s.Beta1 < 1):
		return fmt.Errorf("adamw: beta1 %g is outside [0, 1)", s.Beta1)
	case !(s.Beta2 >= 0 && s.Beta2 < 1):
		return fmt.Errorf("adamw: beta2 %g is outside [0, 1)", s.Beta2)
	case !finite(s.Eps) || s.Eps < 0:
		return fmt.Errorf("adamw: eps %g is not a non-negative finite number", s.Eps)
	case !finite(s.WeightDecay) || s.WeightDecay < 0:
		return fmt.Errorf("adamw: weight decay %g is not a non-negative finite number", s.WeightDecay)
	case s.Step < 1:
		return fmt.Errorf("adamw: step %d, want ≥ 1 (steps count from 1)", s.Step)
	case !finite(s.GradScale) || !(s.GradScale > 0):
		return fmt.Errorf("adamw: gradient scale %g is not a positive finite number", s.GradScale)
	}
	return nil
}

// AdamW returns the parameters and moments after one AdamW update
// (torch.optim.AdamW, decoupled weight decay when decay is set) from grad
// multiplied by s.GradScale, all in float64:
//
//	θ ← θ·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//	θ ← θ − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε).
func AdamW(param, grad, m, v *Array, decay bool, s kernels.AdamWStep) (newParam, newM, newV *Array, err error) {
	if err := CheckAdamWStep(s); err != nil {
		return nil, nil, nil, err
	}
	if param == nil {
		return nil, nil, nil, fmt.Errorf("adamw: param is nil")
	}
	for _, o := range []struct {
		a    *Array
		name string
	}{{grad, "grad"}, {m, "m"}, {v, "v"}} {
		if err := want(o.a, "adamw "+o.name, param.Shape...); err != nil {
			return nil, nil, nil, err
		}
	}
	t := float64(s.Step)
	stepSize := s.LR / (1 - math.Pow(s.Beta1, t))
	bc2Sqrt := math.Sqrt(1 - math.Pow(s.Beta2, t))
	keep := 1.0
	if decay {
		keep = 1 - s.LR*s.WeightDecay
	}
	newParam, newM, newV = param.Clone(), m.Clone(), v.Clone()
	for i := range param.Data {
		g := grad.Data[i] * s.GradScale
		mi := s.Beta1*m.Data[i] + (1-s.Beta1)*g
		vi := s.Beta2*v.Data[i] + (1-s.Beta2)*g*g
		newM.Data[i], newV.Data[i] = mi, vi
		newParam.Data[i] = param.Data[i]*keep - stepSize*mi/(math.Sqrt(vi)/bc2Sqrt+s.Eps)
	}
	return newParam, newM, newV, nil
}
