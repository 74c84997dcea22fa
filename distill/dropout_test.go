package distill

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A mask zeroes a fraction ≈ P of its elements, scales the others by
// 1/(1−P), is a pure function of (key, layer, branch) whatever the number
// of workers, and differs when any of those changes.
func TestDropoutMask(t *testing.T) {
	const n, d = 150, 333 // rows of 6 words, the last one partial
	key := DropoutKey{Seed: 5, Step: 12, Sample: 3}
	for _, prob := range []float64{0.1, 0.5, 0.9} {
		m := newDropMask(newPool(1), key, prob, 4, dropMLP, n, d)
		N := float64(n * d)
		zeroed := 1 - float64(m.kept())/N
		sigma := math.Sqrt(prob * (1 - prob) / N)
		if math.Abs(zeroed-prob) > 5*sigma {
			t.Errorf("P = %g: %.5f of the elements zeroed (5σ = %.5f)", prob, zeroed, 5*sigma)
		}
		for i := range n {
			if pad := m.bits[i*m.words+m.words-1] >> (d % 64); pad != 0 {
				t.Fatalf("P = %g: row %d has bits past column %d", prob, i, d)
			}
		}
		for _, w := range []int{2, 3, 7} {
			if mw := newDropMask(newPool(w), key, prob, 4, dropMLP, n, d); !slices.Equal(mw.bits, m.bits) {
				t.Errorf("P = %g: the mask drawn by %d workers differs from one worker's", prob, w)
			}
		}
		// Rows and columns are not correlated: each row and each column
		// zeroes about P of its elements too (loose bounds: 6σ).
		for i := 0; i < n; i += 37 {
			c := 0
			for j := range d {
				c += int(m.bits[i*m.words+j/64] >> (j % 64) & 1)
			}
			if f := 1 - float64(c)/d; math.Abs(f-prob) > 6*math.Sqrt(prob*(1-prob)/d) {
				t.Errorf("P = %g: row %d zeroes %.3f", prob, i, f)
			}
		}
	}
	base := newDropMask(newPool(2), key, 0.5, 4, dropMLP, n, d)
	for _, c := range []struct {
		what          string
		key           DropoutKey
		layer, branch int
	}{
		{"seed", DropoutKey{Seed: 6, Step: 12, Sample: 3}, 4, dropMLP},
		{"step", DropoutKey{Seed: 5, Step: 13, Sample: 3}, 4, dropMLP},
		{"sample", DropoutKey{Seed: 5, Step: 12, Sample: 4}, 4, dropMLP},
		{"layer", key, 5, dropMLP},
		{"branch", key, 4, dropMixer},
		{"layer-term branch", key, 4, dropBranchMLP},
	} {
		m := newDropMask(newPool(2), c.key, 0.5, c.layer, c.branch, n, d)
		same := 0
		for i := range m.bits {
			same += 64 - bits.OnesCount64(m.bits[i]^base.bits[i])
		}
		// Independent masks at P = 0.5 agree on half the bits (the padding
		// bits, zero in both, aside).
		agree := float64(same-n*(m.words*64-d)) / float64(n*d)
		if math.Abs(agree-0.5) > 0.02 {
			t.Errorf("another %s: the masks agree on %.3f of the elements, want ≈ 0.5", c.what, agree)
		}
	}

	// apply keeps x·1/(1−P) exactly or writes 0.
	rng := newRand(3)
	x := randn(rng, n*d, 1)
	y := slices.Clone(x)
	base.apply(newPool(3), y)
	for i := range y {
		kept := base.bits[(i/d)*base.words+(i%d)/64]>>((i%d)%64)&1 != 0
		if want := x[i] * 2; kept && y[i] != want || !kept && y[i] != 0 {
			t.Fatalf("element %d: %g → %g (kept %v)", i, x[i], y[i], kept)
		}
	}
}

// Without a key, or with probability 0, a Forward and its Backward are
// bit for bit those of a student without dropout; with both, the logits,
// the layer-term outputs and the gradients change, and the same key gives
// the same results with any number of workers.
func TestDropoutForward(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	for _, family := range []string{"phi", "qwen2"} {
		t.Run(family, func(t *testing.T) {
			dir := family + "-tiny-h25"
			rng := newRand(41)
			plain := loadStudent(t, dir, Options{Workers: 2})
			n := 19
			embeds := randn(rng, n*plain.Hidden(), 1)
			teacher := randn(rng, n*plain.Vocab(), 2)
			layerIn := map[int][]float32{}
			layerOut := map[int][]float32{}
			for _, l := range plain.MambaLayers() {
				layerIn[l] = randn(rng, n*plain.Hidden(), 1)
				layerOut[l] = randn(rng, n*plain.Hidden(), 1)
			}
			key := &DropoutKey{Seed: 1, Step: 2, Sample: 3}
			type result struct {
				logits []float32
				outs   map[int][]float32
				grads  [][]float32
				embeds []float32
			}
			run := func(opts Options, key *DropoutKey) result {
				s := loadStudent(t, dir, opts)
				p, err := s.Forward(Input{Embeds: embeds, LayerInputs: layerIn, Dropout: key}, true)
				if err != nil {
					t.Fatal(err)
				}
				_, dl, dlayers, err := Objective(LossConfig{Alpha: 1, Beta: 1, Temperature: 1}, p,
					Targets{Logits: teacher, LayerOutputs: layerOut})
				if err != nil {
					t.Fatal(err)
				}
				s.ZeroGrad()
				if err := s.Backward(p, dl, dlayers); err != nil {
					t.Fatal(err)
				}
				r := result{logits: p.Logits, outs: p.LayerOutputs, embeds: p.EmbedsGrad()}
				for _, q := range s.Params() {
					r.grads = append(r.grads, slices.Clone(q.Grad))
				}
				return r
			}
			same := func(a, b result) bool {
				if !slices.Equal(a.logits, b.logits) || !slices.Equal(a.embeds, b.embeds) || len(a.outs) != len(b.outs) {
					return false
				}
				for l := range a.outs {
					if !slices.Equal(a.outs[l], b.outs[l]) {
						return false
					}
				}
				return slices.EqualFunc(a.grads, b.grads, slices.Equal)
			}
			ref := run(Options{Workers: 2}, nil)
			if !same(ref, run(Options{Workers: 2}, key)) {
				t.Error("probability 0 with a key differs from no dropout")
			}
			if !same(ref, run(Options{Workers: 2, Dropout: 0.3}, nil)) {
				t.Error("probability 0.3 without a key (evaluation) differs from no dropout")
			}
			d2 := run(Options{Workers: 2, Dropout: 0.3}, key)
			if same(ref, d2) || slices.Equal(ref.logits, d2.logits) {
				t.Error("probability 0.3 with a key changes nothing")
			}
			for _, l := range plain.MambaLayers() {
				if slices.Equal(ref.outs[l], d2.outs[l]) {
					t.Errorf("layer %d's layer-term output has no dropout", l)
				}
			}
			if !same(d2, run(Options{Workers: 1, Dropout: 0.3}, key)) || !same(d2, run(Options{Workers: 5, Dropout: 0.3}, key)) {
				t.Error("dropout results depend on the number of workers")
			}
			if same(d2, run(Options{Workers: 2, Dropout: 0.3}, &DropoutKey{Seed: 1, Step: 2, Sample: 4})) {
				t.Error("another sample index draws the same masks")
			}
		})
	}
	if _, err := LoadStudent(filepath.Join(fixtures, "phi-tiny-h25"), Options{Dropout: 1}); err == nil || !strings.Contains(err.Error(), "dropout") {
		t.Errorf("dropout 1: %v", err)
	}
}

// Train's dropout: the default is the student config's resid_pdrop (phi:
// 0.1, recorded in run.json), -1 turns it off, a run with dropout gives
// other weights than one without and the same weights with any number of
// workers. (TestTrainResumeExact resumes a run with dropout.)
func TestTrainDropout(t *testing.T) {
	if testing.Short() {
		t.Skip("training runs")
	}
	data := shapesData(t, 4, 21)
	weights := func(o TrainOptions) ([]byte, runIdentity) {
		t.Helper()
		o.Steps, o.NoExport = 2, true
		res, err := Train(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(res.Checkpoint, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		js, err := os.ReadFile(filepath.Join(o.Out, runFile))
		if err != nil {
			t.Fatal(err)
		}
		var id runIdentity
		if err := json.Unmarshal(js, &id); err != nil {
			t.Fatal(err)
		}
		return b, id
	}
	def, id := weights(trainOpts(t, data))
	if id.Dropout != 0.1 {
		t.Errorf("default dropout %g in run.json, want phi-tiny-h25's resid_pdrop 0.1", id.Dropout)
	}
	o := trainOpts(t, data)
	o.Dropout = 0.1
	explicit, _ := weights(o)
	if !bytes.Equal(def, explicit) {
		t.Error("--dropout 0.1 differs from the default (resid_pdrop 0.1)")
	}
	o = trainOpts(t, data)
	o.Dropout, o.Workers = 0.1, 3
	if w3, _ := weights(o); !bytes.Equal(def, w3) {
		t.Error("a run with dropout on 3 workers differs from one on 2")
	}
	o = trainOpts(t, data)
	o.Dropout = -1
	off, id := weights(o)
	if id.Dropout != 0 {
		t.Errorf("dropout off records %g", id.Dropout)
	}
	if bytes.Equal(def, off) {
		t.Error("dropout 0.1 trains the same weights as no dropout")
	}
	for _, c := range []struct {
		mod  func(*TrainOptions)
		want string
	}{
		{func(o *TrainOptions) { o.Dropout = 1 }, "dropout 1"},
		{func(o *TrainOptions) { o.Dropout = math.NaN() }, "dropout NaN"},
		{func(o *TrainOptions) {
			o.TrainAll, o.Teacher, o.Dropout, o.Loss = true, "", 0.2, LossConfig{Gamma: 1, Temperature: 1}
		}, "no dropout"},
	} {
		o := trainOpts(t, data)
		c.mod(&o)
		if _, err := Train(context.Background(), o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error naming %q, got %v", c.want, err)
		}
	}
}

// Drawing one Phi-2-sized mask (512 rows of 2560) and applying it; each
// layer of a training forward draws two (four with the layer term).
func BenchmarkDropMask(b *testing.B) {
	const n, d = 512, 2560
	p := newPool(0)
	v := randn(newRand(1), n*d, 1)
	b.SetBytes(n * d * 4)
	for i := 0; b.Loop(); i++ {
		m := newDropMask(p, DropoutKey{Seed: 1, Step: i}, 0.1, 3, dropMixer, n, d)
		m.apply(p, v)
	}
}
