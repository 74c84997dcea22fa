package distill

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// Each loss against its float64 definition (twin_test.go) and its gradient
// against central differences of that definition.
func TestLosses(t *testing.T) {
	rng := newRand(50)
	const rows, vocab = 6, 37
	s, tch := randn(rng, rows*vocab, 3), randn(rng, rows*vocab, 3)
	s64 := widen(s)
	mask := []bool{true, false, true, true, false, true}

	for _, c := range []struct {
		temp float64
		mask []bool
	}{{1, nil}, {2.5, mask}, {0.7, mask}} {
		name := fmt.Sprintf("kl T=%g masked=%v", c.temp, c.mask != nil)
		loss, g, err := KLDivergence(s, tch, vocab, c.temp, c.mask)
		if err != nil {
			t.Fatal(err)
		}
		want := klTwin(s64, widen(tch), vocab, c.temp, c.mask)
		if math.Abs(loss-want) > 1e-9*math.Abs(want) {
			t.Errorf("%s: %.12g, definition %.12g", name, loss, want)
		}
		checkGradients(t, rng, name, func() float64 { return klTwin(s64, widen(tch), vocab, c.temp, c.mask) },
			[]gradInput{{"student logits", s64, g}}, defaultFD)
		for r, m := range c.mask {
			for _, v := range g[r*vocab : (r+1)*vocab] {
				if !m && v != 0 {
					t.Fatalf("%s: masked row %d has a gradient", name, r)
				}
			}
		}
	}
	// KL of a distribution with itself is 0; shifting a row's logits by a
	// constant changes nothing.
	shifted := make([]float32, len(s))
	for i, v := range s {
		shifted[i] = v + float32(i/vocab)
	}
	if loss, _, err := KLDivergence(s, shifted, vocab, 1.3, nil); err != nil || math.Abs(loss) > 1e-12 {
		t.Errorf("KL(p‖p) = %g, %v; want 0", loss, err)
	}

	labels := []int{IgnoreLabel, 3, IgnoreLabel, 0, 36, IgnoreLabel}
	ce, g, err := CrossEntropy(s, vocab, labels)
	if err != nil {
		t.Fatal(err)
	}
	if want := ceTwin(s64, vocab, labels); math.Abs(ce-want) > 1e-9*want {
		t.Errorf("cross-entropy %.12g, definition %.12g", ce, want)
	}
	checkGradients(t, rng, "cross-entropy", func() float64 { return ceTwin(s64, vocab, labels) },
		[]gradInput{{"logits", s64, g}}, defaultFD)
	uniformLogits := make([]float32, rows*vocab)
	if ce, _, _ := CrossEntropy(uniformLogits, vocab, labels); math.Abs(ce-math.Log(vocab)) > 1e-12 {
		t.Errorf("cross-entropy of uniform logits %g, want log %d = %g", ce, vocab, math.Log(vocab))
	}
	for _, row := range []int{1, 4, 5} { // rows predicting ignored labels, and the last row, get nothing
		for _, v := range g[row*vocab : (row+1)*vocab] {
			if v != 0 {
				t.Fatalf("cross-entropy: row %d has a gradient", row)
			}
		}
	}
	if got := AnswerMask(labels); fmt.Sprint(got) != fmt.Sprint([]bool{true, false, true, true, false, false}) {
		t.Errorf("AnswerMask(%v) = %v", labels, got)
	}

	a, b := randn(rng, 40, 1), randn(rng, 40, 1)
	a64 := widen(a)
	for _, form := range []LayerDistance{L2Norm, SquaredL2, MeanSquared} {
		loss, g, err := LayerLoss(a, b, form)
		if err != nil {
			t.Fatal(err)
		}
		if want := distTwin(a64, widen(b), form); math.Abs(loss-want) > 1e-12*want {
			t.Errorf("%v: %.12g, definition %.12g", form, loss, want)
		}
		checkGradients(t, rng, form.String(), func() float64 { return distTwin(a64, widen(b), form) },
			[]gradInput{{"student output", a64, g}}, defaultFD)
		zero, gz, err := LayerLoss(a, a, form)
		if err != nil || zero != 0 || gz[0] != 0 {
			t.Errorf("%v of equal tensors: %g, gradient %g, %v", form, zero, gz[0], err)
		}
	}
}

// Objective: the weighted sum, the defaults, and its errors.
func TestObjective(t *testing.T) {
	rng := newRand(51)
	const n, vocab, d = 5, 11, 4
	p := &Pass{Len: n, Logits: randn(rng, n*vocab, 2), LayerOutputs: map[int][]float32{2: randn(rng, n*d, 1)}}
	tg := Targets{Logits: randn(rng, n*vocab, 2), LayerOutputs: map[int][]float32{2: randn(rng, n*d, 1)},
		Labels: []int{IgnoreLabel, 1, 2, IgnoreLabel, 10}}
	cfg := LossConfig{Alpha: 0.5, Beta: 2, Gamma: 3, Temperature: 1.5, Distance: SquaredL2}
	ls, dlogits, dlayers, err := Objective(cfg, p, tg)
	if err != nil {
		t.Fatal(err)
	}
	kl, gk, _ := KLDivergence(p.Logits, tg.Logits, vocab, 1.5, nil)
	ce, gc, _ := CrossEntropy(p.Logits, vocab, tg.Labels)
	dist, gd, _ := LayerLoss(p.LayerOutputs[2], tg.LayerOutputs[2], SquaredL2)
	if ls.KL != kl || ls.CE != ce || ls.Layer != dist || ls.Layers[2] != dist || ls.Total != 0.5*kl+2*dist+3*ce {
		t.Errorf("losses %+v; want KL %g, CE %g, layer %g", ls, kl, ce, dist)
	}
	for i := range dlogits {
		if want := float32(0.5*float64(gk[i])) + float32(3*float64(gc[i])); math.Abs(float64(dlogits[i]-want)) > 1e-7 {
			t.Fatalf("dlogits[%d] = %g, want %g", i, dlogits[i], want)
		}
	}
	for i, v := range dlayers[2] {
		if v != float32(2*float64(gd[i])) {
			t.Fatalf("dlayers[2][%d] = %g, want %g", i, v, 2*gd[i])
		}
	}
	if d := DefaultLoss(); d.Alpha != 1 || d.Beta != 1 || d.Gamma != 0 || d.Temperature != 1 || d.Distance != L2Norm {
		t.Errorf("DefaultLoss() = %+v", d)
	}
	if _, dl, _, err := Objective(LossConfig{Beta: 1}, p, tg); err != nil || dl != nil {
		t.Errorf("layer term alone: dlogits %v, error %v; want nil, nil", dl != nil, err)
	}

	bad := []struct {
		name string
		cfg  LossConfig
		p    *Pass
		tg   Targets
		want string
	}{
		{"no pass", cfg, nil, tg, "no pass"},
		{"no teacher logits", cfg, p, Targets{LayerOutputs: tg.LayerOutputs, Labels: tg.Labels}, "teacher logits"},
		{"zero temperature", LossConfig{Alpha: 1}, p, tg, "temperature"},
		{"NaN weight", LossConfig{Alpha: math.NaN(), Temperature: 1}, p, tg, "finite"},
		{"label outside vocab", LossConfig{Gamma: 1}, p, Targets{Labels: []int{0, 11, 0, 0, 0}}, "outside the vocabulary"},
		{"short labels", LossConfig{Gamma: 1}, p, Targets{Labels: []int{0}}, "labels"},
		{"short mask", LossConfig{Alpha: 1, Temperature: 1}, p, Targets{Logits: tg.Logits, Mask: []bool{true}}, "mask"},
		{"no layer inputs", LossConfig{Beta: 1}, &Pass{Len: n, Logits: p.Logits}, tg, "no layer inputs"},
		{"no teacher layer", LossConfig{Beta: 1}, p, Targets{LayerOutputs: map[int][]float32{3: nil}}, "no teacher output for layer 2"},
		{"short teacher layer", LossConfig{Beta: 1}, p, Targets{LayerOutputs: map[int][]float32{2: {1}}}, "layer 2"},
		{"NaN teacher logits", LossConfig{Alpha: 1, Temperature: 1}, p, Targets{Logits: append(make([]float32, n*vocab-1), float32(math.NaN()))}, "NaN"},
	}
	for _, c := range bad {
		_, _, _, err := Objective(c.cfg, c.p, c.tg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

func ExampleLayerDistance() {
	for _, f := range []LayerDistance{L2Norm, SquaredL2, MeanSquared} {
		fmt.Println(f)
	}
	// Output:
	// l2
	// squared-l2
	// mse
}
