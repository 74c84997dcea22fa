package distill

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/optim"
)

// Tolerances of the device student against the host Student (both
// float32 products with float64 sums; they differ in summation order and
// in where float32 roundings fall, e.g. A = −exp(A_log) is float32 on the
// device, float64 on the host).
const (
	devLogitsTol = 1e-5 // logits
	devLossTol   = 1e-5 // each loss term
	devGradTol   = 1e-4 // each parameter's gradient (‖Δ‖/‖g‖), after a whole backward pass
	// Each parameter after AdamW (‖Δ‖/‖θ‖) and its update θ₁ − θ₀
	// (‖Δ‖/‖θ₁−θ₀‖). Adam's first step is about lr·g/|g| per element, so
	// on elements whose gradient is near zero the gradients' last-bit
	// differences move the step by up to 2·lr: measured ≤ 1.5e-5 and
	// ≤ 6e-4 on the fixtures.
	devParamTol = 1e-4
	devStepTol  = 1e-2
	// bf16 precision against f32, both on the device.
	bf16LogitsTol = 2e-2
	bf16LossTol   = 2e-2
	bf16GradTol   = 0.15
)

// devCase is a teacher, its hybrid and the loss they are checked with.
type devCase struct {
	name, teacher, student, golden string
	cfg                            LossConfig
}

var klL2CE = LossConfig{Alpha: 1, Beta: 0.5, Gamma: 0.3, Temperature: 2, Distance: L2Norm}

func devCases(t *testing.T) []devCase {
	return []devCase{
		{"phi", "phi-tiny", "phi-tiny-h25", "phi-h25", klL2CE},
		{"qwen2", "qwen2-tiny", "qwen2-tiny-h25", "qwen2-h25", LossConfig{Alpha: 0.7, Beta: 1, Gamma: 0.4, Temperature: 1, Distance: MeanSquared}},
		// llama: every layer attention, the connector the only trainable part.
		{"llama", "llama-tiny", llamaAllAttention(t), "llama", LossConfig{Alpha: 1, Gamma: 0.5, Temperature: 1}},
	}
}

// devSample is one sample of a parity check: a window of the golden
// prompt around its image, labels on its last rows, the KL counting the
// answer rows and one image row.
type devSample struct {
	ids    []int
	pixels []float32
	labels []int
	mask   []bool
	key    DropoutKey
}

func devSamples(t *testing.T, golden string, imageTokens, vocab int, rng *rand.Rand) []devSample {
	g := openGolden(t, golden)
	pixels, all := g.f32("pixel_values"), g.ids("input_ids")
	img := slices.Index(all, -200)
	var out []devSample
	for k, w := range [][2]int{{3, 7}, {2, 11}} { // two lengths: the plan is rebuilt between them
		ids := slices.Clone(all[max(0, img-w[0]):min(len(all), img+w[1])])
		n := len(ids) + imageTokens - 1
		labels := make([]int, n)
		for i := range labels {
			labels[i] = IgnoreLabel
			if i >= n-6 {
				labels[i] = rng.IntN(vocab)
			}
		}
		mask := AnswerMask(labels)
		mask[3] = true
		out = append(out, devSample{ids: ids, pixels: pixels, labels: labels, mask: mask, key: DropoutKey{Seed: 5, Step: 2, Sample: k}})
	}
	return out
}

// hostUpdate is the host trainer's update on samples (its sample and
// update functions' arithmetic): per sample the teacher on the CPU backend,
// Forward, Objective, Backward; then the gradients ×1/k, clipping and
// optim's AdamW.
type hostUpdate struct {
	losses []Losses
	logits [][]float32
	grads  map[string][]float32 // averaged, before clipping
	before map[string][]float32
	after  map[string][]float32
	norm   float64
}

func runHostUpdate(t *testing.T, c devCase, samples []devSample, dropout, lr, maxNorm float64) hostUpdate {
	t.Helper()
	student := c.student
	if !filepath.IsAbs(student) {
		student = filepath.Join(fixtures, student)
	}
	s, err := LoadStudent(student, Options{Dropout: dropout, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	tbe := cpu.New(2)
	teacher, err := model.Load(filepath.Join(fixtures, c.teacher), tbe, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer teacher.Close()
	var r hostUpdate
	r.before, r.after, r.grads = map[string][]float32{}, map[string][]float32{}, map[string][]float32{}
	for _, p := range s.Params() {
		r.before[p.Name] = slices.Clone(p.Data)
	}
	s.ZeroGrad()
	mamba := s.MambaLayers()
	for _, smp := range samples {
		in := Input{IDs: smp.ids, Pixels: smp.pixels, Dropout: &smp.key, LayerInputs: map[int][]float32{}}
		tg := Targets{Labels: smp.labels, Mask: smp.mask, LayerOutputs: map[int][]float32{}}
		logits, err := teacher.ForwardHooked(smp.pixels, smp.ids, func(l int, x, y kernels.Tensor) error {
			if !slices.Contains(mamba, l) || c.cfg.Beta == 0 {
				return nil
			}
			var err error
			if in.LayerInputs[l], err = tbe.Download(x); err != nil {
				return err
			}
			tg.LayerOutputs[l], err = tbe.Download(y)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if tg.Logits, err = tbe.Download(logits); err != nil {
			t.Fatal(err)
		}
		pass, err := s.Forward(in, true)
		if err != nil {
			t.Fatal(err)
		}
		ls, dlogits, dlayers, err := Objective(c.cfg, pass, tg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Backward(pass, dlogits, dlayers); err != nil {
			t.Fatal(err)
		}
		r.losses = append(r.losses, ls)
		r.logits = append(r.logits, pass.Logits)
	}
	var op []optim.Param
	inv := float32(1 / float64(len(samples)))
	for _, p := range s.Params() {
		for i := range p.Grad {
			p.Grad[i] *= inv
		}
		r.grads[p.Name] = slices.Clone(p.Grad)
		op = append(op, optim.Param{Name: p.Name, Data: p.Data, Grad: p.Grad, Decay: p.Decay})
	}
	if r.norm, err = optim.ClipGlobalNorm(op, maxNorm); err != nil {
		t.Fatal(err)
	}
	if err := optim.Recipe().Step(op, lr); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Params() {
		r.after[p.Name] = slices.Clone(p.Data)
	}
	return r
}

// deviceRun is the same update on a device student.
type deviceRun struct {
	ds     *DeviceStudent
	losses []Losses
	logits [][]float32
	grads  map[string][]float32
	after  map[string][]float32
	norm   float64
}

func loadDevice(t *testing.T, be kernels.Backend, c devCase, opts DeviceOptions) *DeviceStudent {
	t.Helper()
	teacher, err := model.Load(filepath.Join(fixtures, c.teacher), be, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { teacher.Close() })
	student := c.student
	if !filepath.IsAbs(student) {
		student = filepath.Join(fixtures, student)
	}
	ds, err := LoadDeviceStudent(student, be, teacher, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	return ds
}

func download(t testing.TB, be kernels.Backend, x kernels.Tensor) []float32 {
	t.Helper()
	v, err := be.Download(x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func runDeviceUpdate(t *testing.T, ds *DeviceStudent, cfg LossConfig, samples []devSample, lr, maxNorm float64) deviceRun {
	t.Helper()
	be := ds.Backend()
	r := deviceRun{ds: ds, grads: map[string][]float32{}, after: map[string][]float32{}}
	if err := ds.ZeroGrad(); err != nil {
		t.Fatal(err)
	}
	for _, smp := range samples {
		ls, n, err := ds.Accumulate(DeviceSample{IDs: smp.ids, Pixels: smp.pixels, Labels: smp.labels, Mask: smp.mask, Dropout: &smp.key}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(smp.labels) {
			t.Fatalf("sequence of %d rows, want %d", n, len(smp.labels))
		}
		r.losses = append(r.losses, ls)
		r.logits = append(r.logits, download(t, be, ds.plan.logits))
	}
	grads, err := ds.Gradients()
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ds.Params() {
		g := download(t, be, grads[i])
		for j := range g {
			g[j] /= float32(len(samples)) // what Update's averaging does, for the comparison
		}
		r.grads[p.Name] = g
	}
	if r.norm, err = ds.Update(len(samples), lr, maxNorm, optim.Recipe()); err != nil {
		t.Fatal(err)
	}
	for _, p := range ds.Params() {
		r.after[p.Name] = download(t, be, p.Data)
	}
	return r
}

// relDiff is ‖a−b‖/‖b‖ over float32 values (‖a−b‖ when b is zero).
func relDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	return relErr(a, widen(b))
}

func checkLosses(t *testing.T, what string, got, want Losses, tol float64) {
	t.Helper()
	for _, f := range []struct {
		name   string
		gv, wv float64
	}{{"total", got.Total, want.Total}, {"kl", got.KL, want.KL}, {"layer", got.Layer, want.Layer}, {"ce", got.CE, want.CE}} {
		// Relative, with an absolute floor of tol·1e-6 (a KL of two equal
		// distributions is 0 on one side and 1e-15 on the other).
		e := math.Abs(f.gv-f.wv) / max(math.Abs(f.wv), 1e-6)
		if !(e <= tol) {
			t.Errorf("%s: %s loss %.9g, want %.9g (relative error %.3g > %.3g)", what, f.name, f.gv, f.wv, e, tol)
		}
	}
	for l, w := range want.Layers {
		if e := math.Abs(got.Layers[l]-w) / max(math.Abs(w), 1e-30); !(e <= tol) {
			t.Errorf("%s: layer %d distance %.9g, want %.9g", what, l, got.Layers[l], w)
		}
	}
}

// A device update on the CPU backend in f32 precision equals the host
// trainer's update: logits and losses of each sample, every parameter's
// gradient (accumulated over two samples of different lengths, averaged),
// the gradient norm, and every parameter after clipping and AdamW — with
// KL + layer distance + CE, with and without residual dropout, on the
// phi, qwen2 and llama fixtures.
func TestDeviceStepMatchesHost(t *testing.T) {
	for _, c := range devCases(t) {
		for _, dropout := range []float64{0, 0.1} {
			t.Run(fmt.Sprintf("%s/dropout=%g", c.name, dropout), func(t *testing.T) {
				rng := newRand(uint64(len(c.name)) + uint64(dropout*100))
				be := cpu.New(2)
				ds := loadDevice(t, be, c, DeviceOptions{Dropout: dropout})
				if !ds.Shared {
					t.Errorf("the student does not share the teacher's frozen weights: %s", ds.SharedNote)
				}
				samples := devSamples(t, c.golden, ds.ImageTokens(), ds.sizes.vocab, rng)
				const lr, maxNorm = 3e-3, 0.5
				host := runHostUpdate(t, c, samples, dropout, lr, maxNorm)
				dev := runDeviceUpdate(t, ds, c.cfg, samples, lr, maxNorm)
				compareUpdates(t, host, dev)
			})
		}
	}
}

func compareUpdates(t *testing.T, host hostUpdate, dev deviceRun) {
	t.Helper()
	for k := range host.losses {
		checkLosses(t, fmt.Sprintf("sample %d", k), dev.losses[k], host.losses[k], devLossTol)
		if e := relDiff(dev.logits[k], host.logits[k]); !(e <= devLogitsTol) {
			t.Errorf("sample %d: logits relative error %.3g > %.3g", k, e, devLogitsTol)
		} else {
			t.Logf("sample %d: logits %.3g, loss %.9g (host %.9g)", k, e, dev.losses[k].Total, host.losses[k].Total)
		}
	}
	if e := math.Abs(dev.norm-host.norm) / host.norm; !(e <= devGradTol) {
		t.Errorf("gradient norm %.9g, host %.9g", dev.norm, host.norm)
	}
	worstG, worstP, worstS := 0.0, 0.0, 0.0
	for name, hg := range host.grads {
		dg, ok := dev.grads[name]
		if !ok {
			t.Errorf("parameter %s: not trained on the device", name)
			continue
		}
		eg := relDiff(dg, hg)
		ep := relDiff(dev.after[name], host.after[name])
		step := func(after map[string][]float32) []float32 {
			d := make([]float32, len(after[name]))
			for i := range d {
				d[i] = after[name][i] - host.before[name][i]
			}
			return d
		}
		es := relDiff(step(dev.after), step(host.after))
		worstG, worstP, worstS = max(worstG, eg), max(worstP, ep), max(worstS, es)
		if !(eg <= devGradTol) {
			t.Errorf("parameter %s: gradient relative error %.3g > %.3g", name, eg, devGradTol)
		}
		if !(ep <= devParamTol) {
			t.Errorf("parameter %s: after AdamW relative error %.3g > %.3g", name, ep, devParamTol)
		}
		if !(es <= devStepTol) {
			t.Errorf("parameter %s: AdamW update relative error %.3g > %.3g", name, es, devStepTol)
		}
	}
	if len(dev.grads) != len(host.grads) {
		t.Errorf("%d parameters on the device, %d on the host", len(dev.grads), len(host.grads))
	}
	t.Logf("%d parameters: worst gradient %.3g, parameter %.3g, update %.3g; norm %.6g (host %.6g)",
		len(host.grads), worstG, worstP, worstS, dev.norm, host.norm)
}
