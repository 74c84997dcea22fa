package distill

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/optim"
)

// fullLabels are the golden ids as labels over the spliced sequence (the
// image rows ignored): every text position counts in the cross-entropy.
func fullLabels(f *fullModel, ids []int) []int {
	return spliceLabels(ids, ids, f.s.Config.ImageTokenIndex, f.s.ImageTokens())
}

func fullLoss(t *testing.T, f *fullModel, ids, labels []int, pixels []float32) float64 {
	t.Helper()
	fp, err := f.forward(ids, pixels)
	if err != nil {
		t.Fatal(err)
	}
	ce, _, err := CrossEntropy(fp.logits, f.s.sizes.vocab, labels)
	if err != nil {
		t.Fatal(err)
	}
	return ce
}

// Every parameter's gradient of the full model (plain teachers of the three
// families: parallel LayerNorm blocks with an untied biased head, and
// sequential RMSNorm SwiGLU blocks with GQA, tied or untied) agrees with
// central finite differences of the loss on its largest-gradient element
// (and on a random one of every other tensor), for the tensors outside the
// decoder layers and those of the first and last layers.
func TestFullGradientsFiniteDifferences(t *testing.T) {
	for _, fx := range []struct{ family, dir string }{{"phi", "phi-tiny"}, {"qwen2", "qwen2-tiny"}, {"llama", "llama-tiny"}} {
		t.Run(fx.family, func(t *testing.T) {
			f, err := loadFull(filepath.Join(fixtures, fx.dir), Options{Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			g := openGolden(t, fx.family)
			pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
			labels := fullLabels(f, ids)
			f.zeroGrad()
			if _, _, err := f.sample(ids, labels, pixels); err != nil {
				t.Fatal(err)
			}
			// The checkpoint's tensors, less the vision tower's, are all trained.
			ck, err := formats.Open(filepath.Join(fixtures, fx.dir))
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			var want []string
			for _, ti := range ck.Tensors() {
				if !slices.Contains([]string{"vision_tower"}, ti.Name[:min(len(ti.Name), 12)]) {
					want = append(want, ti.Name)
				}
			}
			got := paramNames(f.params)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("trained tensors:\n%v\nwant\n%v", got, want)
			}
			rng := newRand(5)
			const eps = 1e-2
			worst := 0.0
			last := fmt.Sprintf(".layers.%d.", f.s.NumLayers()-1)
			checked := 0
			for k, p := range f.params {
				// Decoder layers in between are the same code as the first
				// and the last: check those two (time).
				if strings.Contains(p.Name, ".layers.") && !strings.Contains(p.Name, ".layers.0.") && !strings.Contains(p.Name, last) {
					continue
				}
				checked++
				grad := slices.Clone(p.Grad)
				big := 0
				for i, v := range grad {
					if math.Abs(float64(v)) > math.Abs(float64(grad[big])) {
						big = i
					}
				}
				picks := []int{big}
				if k%2 == 0 { // a random element too, on every other tensor (time)
					picks = append(picks, rng.IntN(p.Len()))
				}
				for _, i := range picks {
					old := p.Data[i]
					p.Data[i] = old + eps
					lp := fullLoss(t, f, ids, labels, pixels)
					p.Data[i] = old - eps
					lm := fullLoss(t, f, ids, labels, pixels)
					p.Data[i] = old
					fd := (lp - lm) / (2 * eps)
					an := float64(grad[i])
					errAbs := math.Abs(fd - an)
					if errAbs > 0.03*math.Abs(an)+3e-4 {
						t.Errorf("%s[%d]: analytic %.6g, finite differences %.6g", p.Name, i, an, fd)
					}
					if math.Abs(an) > 1e-2 {
						worst = max(worst, errAbs/math.Abs(an))
					}
				}
			}
			t.Logf("%d of %d tensors checked; worst relative error on gradients above 1e-2: %.2g", checked, len(f.params), worst)
		})
	}
}

// On a hybrid, the full model's mixer and connector gradients equal the
// Student's (which trains only those) for the same cross-entropy loss.
func TestFullMatchesStudent(t *testing.T) {
	dir := filepath.Join(fixtures, "phi-tiny-h25")
	f, err := loadFull(dir, Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	s := loadStudent(t, "phi-tiny-h25", Options{Workers: 2, F32Weights: true})
	g := openGolden(t, "phi-h25")
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	labels := fullLabels(f, ids)
	f.zeroGrad()
	if _, _, err := f.sample(ids, labels, pixels); err != nil {
		t.Fatal(err)
	}
	s.ZeroGrad()
	pass, err := s.Forward(Input{IDs: ids, Pixels: pixels}, true)
	if err != nil {
		t.Fatal(err)
	}
	_, dlogits, _, err := Objective(LossConfig{Gamma: 1, Temperature: 1}, pass, Targets{Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Backward(pass, dlogits, nil); err != nil {
		t.Fatal(err)
	}
	byName := map[string]*Param{}
	for _, p := range f.params {
		byName[p.Name] = p
	}
	for _, p := range s.Params() {
		q := byName[p.Name]
		if q == nil {
			t.Fatalf("%s not trained by the full model", p.Name)
		}
		var num, den float64
		for i := range p.Grad {
			d := float64(p.Grad[i] - q.Grad[i])
			num += d * d
			den += float64(p.Grad[i]) * float64(p.Grad[i])
		}
		if rel := math.Sqrt(num / max(den, 1e-30)); rel > 1e-6 {
			t.Errorf("%s: relative difference %.3g", p.Name, rel)
		}
	}
}

// Training a plain teacher end to end: cross-entropy goes down and the
// export is a teacher checkpoint again (no mamba_config.json).
func TestTrainAll(t *testing.T) {
	o := trainOpts(t, shapesData(t, 4, 2))
	o.Teacher, o.Student, o.TrainAll = "", filepath.Join(fixtures, "phi-tiny"), true
	o.Steps, o.Accum, o.LR = 8, 2, 3e-3
	o.Schedule = optim.ScheduleConfig{Kind: "constant"}
	res, err := Train(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CE %.4g → %.4g", res.FirstLoss, res.Final.CE)
	if !(res.Final.CE < 0.7*res.FirstLoss) {
		t.Errorf("cross-entropy %.4g → %.4g: not down by 30%%", res.FirstLoss, res.Final.CE)
	}
	if _, ok, err := formats.ReadMambaConfig(res.Export); ok || err != nil {
		t.Errorf("export has a mamba_config.json (%v)", err)
	}
	f, err := loadFull(res.Export, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.params) != len(mustFull(t, o.Student).params) {
		t.Errorf("export reloads with %d tensors", len(f.params))
	}
	o.Out, o.Loss = filepath.Join(t.TempDir(), "r"), DefaultLoss()
	if _, err := Train(context.Background(), o); err == nil {
		t.Error("TrainAll with the KL loss: no error")
	}
}

func mustFull(t *testing.T, dir string) *fullModel {
	t.Helper()
	f, err := loadFull(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}
