package distill

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
)

// IgnoreLabel marks a label that CrossEntropy skips (HF's ignore_index).
const IgnoreLabel = -100

// LayerDistance is the form of the layer-wise term ‖S_l(x) − T_l(x)‖.
type LayerDistance uint8

const (
	// L2Norm is the un-squared 2-norm of the difference over the whole
	// [L, hidden] tensor (the reference code's).
	L2Norm LayerDistance = iota
	// SquaredL2 is the squared 2-norm, Σ (S−T)².
	SquaredL2
	// MeanSquared is the mean of (S−T)² over the L·hidden values (MSE).
	MeanSquared
)

func (f LayerDistance) String() string {
	switch f {
	case L2Norm:
		return "l2"
	case SquaredL2:
		return "squared-l2"
	case MeanSquared:
		return "mse"
	}
	return fmt.Sprintf("LayerDistance(%d)", uint8(f))
}

// LossConfig weighs the distillation loss
//
//	Alpha·KL_T(teacher‖student) + Beta·Σ_l dist(S_l(x_l), T_l(x_l)) + Gamma·CE(labels).
type LossConfig struct {
	Alpha, Beta, Gamma float64
	Temperature        float64 // of the KL term (> 0)
	Distance           LayerDistance
}

// DefaultLoss is the released recipe's: α = 1, β = 1, γ = 0, T = 1, the
// un-squared 2-norm.
func DefaultLoss() LossConfig {
	return LossConfig{Alpha: 1, Beta: 1, Gamma: 0, Temperature: 1, Distance: L2Norm}
}

// Targets are what the loss compares the student with.
type Targets struct {
	// Logits are the teacher's [L, vocab] (needed when Alpha ≠ 0).
	Logits []float32
	// LayerOutputs are the teacher's outputs of the layers the student ran
	// on the teacher's inputs (Input.LayerInputs); needed when Beta ≠ 0.
	LayerOutputs map[int][]float32
	// Labels are token ids over the spliced sequence ([L]; IgnoreLabel on
	// image rows and prompt tokens), shifted by one as HF does: row t's
	// logits predict Labels[t+1]. Needed when Gamma ≠ 0.
	Labels []int
	// Mask selects the logits rows the KL term counts ([L]); nil counts
	// every row, as the reference code does. AnswerMask(Labels) counts only
	// the rows that predict answer tokens.
	Mask []bool
}

// Losses are the terms of one sample's loss (unweighted) and their
// weighted total.
type Losses struct {
	Total  float64
	KL     float64
	Layer  float64         // Σ_l of the per-layer distances
	Layers map[int]float64 // per-layer distance
	CE     float64
}

// Objective evaluates the loss of a Pass and its gradients with respect
// to the logits and to the Pass's layer outputs, ready for Backward:
//
//	losses, dlogits, dlayers, err := Objective(cfg, pass, targets)
//	err = student.Backward(pass, dlogits, dlayers)
//
// dlogits is nil when neither the KL nor the CE term is used.
func Objective(cfg LossConfig, p *Pass, t Targets) (Losses, []float32, map[int][]float32, error) {
	var ls Losses
	if p == nil || p.Len == 0 || len(p.Logits)%p.Len != 0 {
		return ls, nil, nil, errors.New("distill: objective: no pass")
	}
	for _, w := range []float64{cfg.Alpha, cfg.Beta, cfg.Gamma} {
		if math.IsNaN(w) || math.IsInf(w, 0) {
			return ls, nil, nil, fmt.Errorf("distill: objective: loss weights α=%g β=%g γ=%g must be finite", cfg.Alpha, cfg.Beta, cfg.Gamma)
		}
	}
	vocab := len(p.Logits) / p.Len
	var dlogits []float32
	addLogits := func(g []float32, w float64) {
		if dlogits == nil {
			dlogits = make([]float32, len(p.Logits))
		}
		for i, v := range g {
			dlogits[i] += float32(w * float64(v))
		}
	}
	if cfg.Alpha != 0 {
		kl, g, err := KLDivergence(p.Logits, t.Logits, vocab, cfg.Temperature, t.Mask)
		if err != nil {
			return ls, nil, nil, fmt.Errorf("distill: objective: %w", err)
		}
		ls.KL = kl
		addLogits(g, cfg.Alpha)
	}
	if cfg.Gamma != 0 {
		ce, g, err := CrossEntropy(p.Logits, vocab, t.Labels)
		if err != nil {
			return ls, nil, nil, fmt.Errorf("distill: objective: %w", err)
		}
		ls.CE = ce
		addLogits(g, cfg.Gamma)
	}
	var dlayers map[int][]float32
	if cfg.Beta != 0 {
		if len(p.LayerOutputs) == 0 {
			return ls, nil, nil, errors.New("distill: objective: β ≠ 0 but the pass ran no layer inputs (Input.LayerInputs)")
		}
		ls.Layers = map[int]float64{}
		dlayers = map[int][]float32{}
		for _, l := range slices.Sorted(maps.Keys(p.LayerOutputs)) {
			tl, ok := t.LayerOutputs[l]
			if !ok {
				return ls, nil, nil, fmt.Errorf("distill: objective: no teacher output for layer %d", l)
			}
			dist, g, err := LayerLoss(p.LayerOutputs[l], tl, cfg.Distance)
			if err != nil {
				return ls, nil, nil, fmt.Errorf("distill: objective: layer %d: %w", l, err)
			}
			ls.Layers[l] = dist
			ls.Layer += dist
			for i := range g {
				g[i] = float32(cfg.Beta * float64(g[i]))
			}
			dlayers[l] = g
		}
	}
	ls.Total = cfg.Alpha*ls.KL + cfg.Beta*ls.Layer + cfg.Gamma*ls.CE
	return ls, dlogits, dlayers, nil
}

// AnswerMask is the KL mask that counts the rows whose logits predict an
// answer token: row t counts when labels[t+1] is not IgnoreLabel (the rows
// CrossEntropy counts).
func AnswerMask(labels []int) []bool {
	m := make([]bool, len(labels))
	for t := 0; t+1 < len(labels); t++ {
		m[t] = labels[t+1] != IgnoreLabel
	}
	return m
}

// lossRows is the number of rows of one task of the row-wise losses
// (fixed, so that sums do not depend on the worker count).
const lossRows = 16

// rowLoss evaluates f on every row of [rows, vocab] in parallel and
// returns the sum of its float64 results in row order.
func rowLoss(rows int, f func(r int) float64) float64 {
	per := make([]float64, rows)
	newPool(0).rows(rows, lossRows, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			per[r] = f(r)
		}
	})
	var s float64
	for _, v := range per {
		s += v
	}
	return s
}

// logSoftmax writes z/T − logsumexp(z/T) of one row into out (float64).
func logSoftmax(out []float64, z []float32, temperature float64) {
	mx := math.Inf(-1)
	for i, v := range z {
		out[i] = float64(v) / temperature
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

// KLDivergence is the forward KL of the teacher's distribution from the
// student's at temperature T, scaled by T² and averaged over the counted
// rows ("batchmean" over tokens):
//
//	T²/|rows| · Σ_rows Σ_v p_v·(log p_v − log q_v),  p = softmax(teacher/T), q = softmax(student/T),
//
// with its gradient T·(q − p)/|rows| on the student's logits ([rows,
// vocab]; zero on uncounted rows). mask ([rows]) selects the rows; nil
// counts all. No counted row gives 0.
func KLDivergence(student, teacher []float32, vocab int, temperature float64, mask []bool) (float64, []float32, error) {
	rows, err := logitRows("kl", student, vocab)
	if err != nil {
		return 0, nil, err
	}
	if len(teacher) != len(student) {
		return 0, nil, fmt.Errorf("kl: teacher logits have %d values, student's %d", len(teacher), len(student))
	}
	if !(temperature > 0) || math.IsInf(temperature, 0) {
		return 0, nil, fmt.Errorf("kl: temperature %g must be a positive number", temperature)
	}
	if mask != nil && len(mask) != rows {
		return 0, nil, fmt.Errorf("kl: mask has %d rows, logits %d", len(mask), rows)
	}
	if err := checkFinite(teacher); err != nil {
		return 0, nil, fmt.Errorf("kl: teacher logits: %w", err)
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
	grad := make([]float32, len(student))
	if count == 0 {
		return 0, grad, nil
	}
	scale := temperature / float64(count)
	sum := rowLoss(rows, func(r int) float64 {
		if mask != nil && !mask[r] {
			return 0
		}
		lq, lp := make([]float64, vocab), make([]float64, vocab)
		logSoftmax(lq, student[r*vocab:(r+1)*vocab], temperature)
		logSoftmax(lp, teacher[r*vocab:(r+1)*vocab], temperature)
		g := grad[r*vocab : (r+1)*vocab]
		var kl float64
		for v := range vocab {
			p := math.Exp(lp[v])
			if p > 0 {
				kl += p * (lp[v] - lq[v])
			}
			g[v] = float32(scale * (math.Exp(lq[v]) - p))
		}
		return kl
	})
	return temperature * temperature * sum / float64(count), grad, nil
}

// CrossEntropy is the next-token cross-entropy, averaged over the counted
// positions, HF style: row t's logits predict labels[t+1], labels equal to
// IgnoreLabel are skipped, and the last row predicts nothing. It returns
// the loss and its gradient (softmax − onehot)/count on the logits. No
// counted position gives 0.
func CrossEntropy(logits []float32, vocab int, labels []int) (float64, []float32, error) {
	rows, err := logitRows("cross-entropy", logits, vocab)
	if err != nil {
		return 0, nil, err
	}
	if len(labels) != rows {
		return 0, nil, fmt.Errorf("cross-entropy: %d labels for %d logits rows", len(labels), rows)
	}
	count := 0
	for i, l := range labels {
		switch {
		case l == IgnoreLabel:
		case l < 0 || l >= vocab:
			return 0, nil, fmt.Errorf("cross-entropy: label %d (position %d) is outside the vocabulary [0, %d) and is not %d", l, i, vocab, IgnoreLabel)
		case i > 0:
			count++
		}
	}
	grad := make([]float32, len(logits))
	if count == 0 {
		return 0, grad, nil
	}
	inv := 1 / float64(count)
	sum := rowLoss(rows-1, func(r int) float64 {
		target := labels[r+1]
		if target == IgnoreLabel {
			return 0
		}
		ls := make([]float64, vocab)
		logSoftmax(ls, logits[r*vocab:(r+1)*vocab], 1)
		g := grad[r*vocab : (r+1)*vocab]
		for v := range vocab {
			g[v] = float32(inv * math.Exp(ls[v]))
		}
		g[target] = float32(inv * (math.Exp(ls[target]) - 1))
		return -ls[target]
	})
	return sum * inv, grad, nil
}

// LayerLoss is the distance between a student layer's output and the
// teacher's (both [L, hidden], compared as one tensor) and its gradient
// with respect to the student's output. The 2-norm's gradient at a zero
// difference is taken as zero.
func LayerLoss(student, teacher []float32, form LayerDistance) (float64, []float32, error) {
	if len(student) == 0 || len(student) != len(teacher) {
		return 0, nil, fmt.Errorf("layer distance: student output has %d values, teacher's %d", len(student), len(teacher))
	}
	if err := checkFinite(teacher); err != nil {
		return 0, nil, fmt.Errorf("layer distance: teacher output: %w", err)
	}
	if err := checkFinite(student); err != nil {
		return 0, nil, fmt.Errorf("layer distance: student output: %w", err)
	}
	var ss float64
	for i, v := range student {
		d := float64(v) - float64(teacher[i])
		ss += d * d
	}
	var loss, scale float64
	switch form {
	case L2Norm:
		loss = math.Sqrt(ss)
		if loss > 0 {
			scale = 1 / loss
		}
	case SquaredL2:
		loss, scale = ss, 2
	case MeanSquared:
		n := float64(len(student))
		loss, scale = ss/n, 2/n
	default:
		return 0, nil, fmt.Errorf("layer distance: unknown form %v", form)
	}
	grad := make([]float32, len(student))
	for i, v := range student {
		grad[i] = float32(scale * (float64(v) - float64(teacher[i])))
	}
	return loss, grad, nil
}

// logitRows checks that logits hold whole rows of vocab finite values.
func logitRows(what string, logits []float32, vocab int) (int, error) {
	if vocab <= 0 || len(logits) == 0 || len(logits)%vocab != 0 {
		return 0, fmt.Errorf("%s: %d logits are not whole rows of vocab %d", what, len(logits), vocab)
	}
	if err := checkFinite(logits); err != nil {
		return 0, fmt.Errorf("%s: logits: %w", what, err)
	}
	return len(logits) / vocab, nil
}
