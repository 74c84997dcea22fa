package distill

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
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
	bf16LogitsTol = 2e-2 // measured ≤ 7e-3
	bf16LossTol   = 2e-2
	bf16GradTol   = 0.1 // measured ≤ 2.4e-2
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

func devSamples(t testing.TB, golden string, imageTokens, vocab int, rng *rand.Rand) []devSample {
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

func loadDevice(t testing.TB, be kernels.Backend, c devCase, opts DeviceOptions) *DeviceStudent {
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

// spyBackend is the CPU backend counting its allocations and the operand
// dtypes of its matrix products.
type spyBackend struct {
	*cpu.Backend
	allocs                int
	bf16, f32, mixed, atN int
}

func (s *spyBackend) Alloc(dt kernels.DType, shape ...int) (kernels.Tensor, error) {
	s.allocs++
	return s.Backend.Alloc(dt, shape...)
}

func (s *spyBackend) count(a, b kernels.Tensor) {
	switch {
	case a.DType() == kernels.BF16 && b.DType() == kernels.BF16:
		s.bf16++
	case a.DType() == kernels.F32 && b.DType() == kernels.F32:
		s.f32++
	default:
		s.mixed++
	}
}

func (s *spyBackend) MatMul(out, a, b kernels.Tensor, transB bool) error {
	s.count(a, b)
	return s.Backend.MatMul(out, a, b, transB)
}

func (s *spyBackend) MatMulAT(out, a, b kernels.Tensor, accumulate bool) error {
	s.count(a, b)
	s.atN++
	return s.Backend.MatMulAT(out, a, b, accumulate)
}

// In bf16 precision every product of the student and of the bf16 teacher
// on the phi fixture (BF16 weights) is bf16·bf16 — the tower's F32 patch
// embedding aside — and the update stays close to the f32 one: logits,
// losses, gradients. The masters stay float32 (the shadows are their
// bf16 rounding).
func TestDeviceBF16CloseToF32(t *testing.T) {
	for _, c := range devCases(t)[:2] {
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(21)
			f32 := loadDevice(t, cpu.New(2), c, DeviceOptions{Dropout: 0.1})
			samples := devSamples(t, c.golden, f32.ImageTokens(), f32.sizes.vocab, rng)
			spy := &spyBackend{Backend: cpu.New(2)}
			teacher, err := model.Load(filepath.Join(fixtures, c.teacher), spy, model.Options{Precision: model.PrecisionBF16})
			if err != nil {
				t.Fatal(err)
			}
			defer teacher.Close()
			b16, err := LoadDeviceStudent(filepath.Join(fixtures, c.student), spy, teacher, DeviceOptions{Dropout: 0.1, Precision: PrecisionBF16})
			if err != nil {
				t.Fatal(err)
			}
			defer b16.Close()
			const lr, maxNorm = 3e-3, 0.5
			a := runDeviceUpdate(t, f32, c.cfg, samples, lr, maxNorm)
			b := runDeviceUpdate(t, b16, c.cfg, samples, lr, maxNorm)
			t.Logf("products: %d bf16·bf16, %d f32·f32, %d mixed (%d weight gradients)", spy.bf16, spy.f32, spy.mixed, spy.atN)
			if c.name == "phi" && (spy.mixed != 0 || spy.f32 > 4*len(samples) || spy.bf16 == 0) {
				t.Errorf("bf16 precision ran %d mixed and %d f32·f32 products (%d bf16·bf16)", spy.mixed, spy.f32, spy.bf16)
			}
			for k := range a.losses {
				checkLosses(t, fmt.Sprintf("sample %d", k), b.losses[k], a.losses[k], bf16LossTol)
				e := relDiff(b.logits[k], a.logits[k])
				if !(e <= bf16LogitsTol) || e == 0 {
					t.Errorf("sample %d: bf16 logits relative error %.3g (want in (0, %.3g])", k, e, bf16LogitsTol)
				}
				t.Logf("sample %d: logits %.3g, loss %.7g (f32 %.7g)", k, e, b.losses[k].Total, a.losses[k].Total)
			}
			worst := 0.0
			for name, g := range a.grads {
				e := relDiff(b.grads[name], g)
				worst = max(worst, e)
				if !(e <= bf16GradTol) {
					t.Errorf("parameter %s: bf16 gradient relative error %.3g > %.3g", name, e, bf16GradTol)
				}
			}
			t.Logf("worst gradient %.3g; norm %.6g (f32 %.6g)", worst, b.norm, a.norm)
			for _, p := range b16.Params() {
				if p.Shadow == nil {
					if len(p.Shape) == 2 {
						t.Errorf("%s: a product's weight without a bf16 shadow", p.Name)
					}
					continue
				}
				master, shadow := download(t, b16.be, p.Data), download(t, b16.be, p.Shadow)
				rounded := 0
				for i, v := range master {
					if bf := math.Float32frombits(math.Float32bits(v) &^ 0xffff); bf != v {
						rounded++
					}
					if e := math.Abs(float64(shadow[i]-v)) / math.Abs(float64(v)); e > 1.0/256 {
						t.Fatalf("%s[%d]: shadow %g, master %g", p.Name, i, shadow[i], v)
					}
				}
				if rounded == 0 {
					t.Errorf("%s: every master value is bf16-representable after the update: the masters are not float32", p.Name)
				}
			}
		})
	}
}

// Activation recomputation gives the same update bit for bit.
func TestDeviceRecomputeSame(t *testing.T) {
	for _, c := range devCases(t)[:2] {
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(33)
			plain := loadDevice(t, cpu.New(2), c, DeviceOptions{Dropout: 0.1})
			re := loadDevice(t, cpu.New(2), c, DeviceOptions{Dropout: 0.1, Recompute: true})
			samples := devSamples(t, c.golden, plain.ImageTokens(), plain.sizes.vocab, rng)
			a := runDeviceUpdate(t, plain, c.cfg, samples, 3e-3, 0.5)
			b := runDeviceUpdate(t, re, c.cfg, samples, 3e-3, 0.5)
			for k := range a.losses {
				if a.losses[k].Total != b.losses[k].Total || !slices.Equal(a.logits[k], b.logits[k]) {
					t.Errorf("sample %d: recomputation changed the loss (%.9g, %.9g) or the logits", k, b.losses[k].Total, a.losses[k].Total)
				}
			}
			for name, g := range a.grads {
				if !slices.Equal(g, b.grads[name]) || !slices.Equal(a.after[name], b.after[name]) {
					t.Errorf("parameter %s: recomputation changed the gradient or the update", name)
				}
			}
			if pa, pb := plain.plan.Bytes(), re.plan.Bytes(); !(pb < pa) {
				t.Errorf("activations: %d bytes recomputing, %d keeping them", pb, pa)
			} else {
				t.Logf("activations: %d bytes recomputing, %d keeping them", pb, pa)
			}
		})
	}
}

// The activations of a sequence length are allocated once: further
// samples and updates of that shape allocate nothing (the teacher's
// plans included).
func TestDevicePlanReused(t *testing.T) {
	c := devCases(t)[0]
	spy := &spyBackend{Backend: cpu.New(2)}
	ds := loadDevice(t, spy, c, DeviceOptions{Dropout: 0.1, Precision: PrecisionBF16})
	samples := devSamples(t, c.golden, ds.ImageTokens(), ds.sizes.vocab, newRand(4))
	one := samples[:1]
	runDeviceUpdate(t, ds, c.cfg, one, 1e-3, 0.5)
	plan, allocs := ds.plan, spy.allocs
	for range 3 {
		runDeviceUpdate(t, ds, c.cfg, one, 1e-3, 0.5)
	}
	if ds.plan != plan || spy.allocs != allocs {
		t.Errorf("updates of one shape allocated %d more tensors (plan replaced: %v)", spy.allocs-allocs, ds.plan != plan)
	}
	t.Logf("plan: %d bytes for %d rows", plan.Bytes(), plan.n)
	runDeviceUpdate(t, ds, c.cfg, samples[1:], 1e-3, 0.5)
	if ds.plan == plan || ds.plan.n == plan.n {
		t.Error("a longer sample did not get a plan of its own")
	}
}

// The student shares the teacher's frozen tensors when they are equal byte
// for byte; one differing byte gives it weights of its own (saying which
// tensor differs), and the step still equals the host's.
func TestDeviceSharesTeacherWeights(t *testing.T) {
	c := devCases(t)[0]
	be := cpu.New(2)
	ds := loadDevice(t, be, c, DeviceOptions{})
	if !ds.Shared || ds.embed != ds.teacher.Embedding() || ds.base != ds.teacher {
		t.Fatalf("shared %v (%s): the frozen weights are not the teacher's", ds.Shared, ds.SharedNote)
	}
	lw, err := ds.teacher.Layer(1)
	if err != nil {
		t.Fatal(err)
	}
	if ds.layers[1].qkv.w != lw.QKV.W || ds.layers[0].up.w != mustLayer(t, ds, 0).Up.W {
		t.Error("layer weights are not the teacher's tensors")
	}

	dir := t.TempDir()
	src := filepath.Join(fixtures, c.student)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const name = "language_model.model.final_layernorm.weight"
	ck, err := formats.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ti, _ := ck.Tensor(name)
	ck.Close()
	f, err := os.OpenFile(ti.File, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, ti.Offset+6); err != nil {
		t.Fatal(err)
	}
	b[1] ^= 0x01 // a small change of one bf16 value's exponent's last bit
	if _, err := f.WriteAt(b, ti.Offset+6); err != nil {
		t.Fatal(err)
	}
	f.Close()

	mod := c
	mod.student = dir
	own := loadDevice(t, be, mod, DeviceOptions{})
	if own.Shared || !strings.Contains(own.SharedNote, name) || own.base == own.teacher {
		t.Fatalf("a student with a changed %s: shared %v (%q)", name, own.Shared, own.SharedNote)
	}
	samples := devSamples(t, c.golden, own.ImageTokens(), own.sizes.vocab, newRand(8))[:1]
	host := runHostUpdate(t, mod, samples, 0, 3e-3, 0.5)
	dev := runDeviceUpdate(t, own, mod.cfg, samples, 3e-3, 0.5)
	compareUpdates(t, host, dev)
}

func mustLayer(t *testing.T, ds *DeviceStudent, l int) model.LayerWeights {
	t.Helper()
	w, err := ds.teacher.Layer(l)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// onlyBackend hides every extension of a backend.
type onlyBackend struct{ kernels.Backend }

// Bad inputs and misuse are errors that say what is wrong.
func TestDeviceErrors(t *testing.T) {
	c := devCases(t)[0]
	be := cpu.New(2)
	ds := loadDevice(t, be, c, DeviceOptions{})
	student := filepath.Join(fixtures, c.student)
	if _, err := LoadDeviceStudent(student, onlyBackend{be}, nil, DeviceOptions{}); err == nil || !strings.Contains(err.Error(), "Trainer") {
		t.Errorf("a backend without training operations: %v", err)
	}
	if _, err := LoadDeviceStudent(student, cpu.New(1), ds.teacher, DeviceOptions{}); err == nil || !strings.Contains(err.Error(), "share one backend") {
		t.Errorf("a teacher on another backend: %v", err)
	}
	if _, err := LoadDeviceStudent(student, be, nil, DeviceOptions{Precision: "fp16"}); err == nil || !strings.Contains(err.Error(), "precision") {
		t.Errorf("an unknown precision: %v", err)
	}
	if _, err := LoadDeviceStudent(filepath.Join(fixtures, "phi-tiny"), be, nil, DeviceOptions{}); err == nil || !strings.Contains(err.Error(), "not a hybrid") {
		t.Errorf("a teacher as the student: %v", err)
	}
	qwen, err := model.Load(filepath.Join(fixtures, "qwen2-tiny"), be, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer qwen.Close()
	if _, err := LoadDeviceStudent(student, be, qwen, DeviceOptions{}); err == nil || !strings.Contains(err.Error(), "teacher") {
		t.Errorf("a teacher of another model: %v", err)
	}
	smp := devSamples(t, c.golden, ds.ImageTokens(), ds.sizes.vocab, newRand(1))[0]
	good := DeviceSample{IDs: smp.ids, Pixels: smp.pixels, Labels: smp.labels}
	for _, bad := range []struct {
		name string
		edit func(*DeviceSample, *LossConfig)
		want string
	}{
		{"id outside the vocabulary", func(s *DeviceSample, _ *LossConfig) { s.IDs = append(slices.Clone(s.IDs), 1<<20) }, "vocabulary"},
		{"no ids", func(s *DeviceSample, _ *LossConfig) { s.IDs = nil }, "no input ids"},
		{"pixels missing", func(s *DeviceSample, _ *LossConfig) { s.Pixels = s.Pixels[:10] }, "pixel values"},
		{"non-finite pixels", func(s *DeviceSample, _ *LossConfig) {
			s.Pixels = slices.Clone(s.Pixels)
			s.Pixels[3] = float32(math.NaN())
		}, "pixel value 3"},
		{"labels of another length", func(s *DeviceSample, _ *LossConfig) { s.Labels = s.Labels[1:] }, "labels cover"},
		{"bad label", func(s *DeviceSample, _ *LossConfig) {
			s.Labels = slices.Clone(s.Labels)
			s.Labels[len(s.Labels)-1] = -7
		}, "label"},
		{"mask of another length", func(s *DeviceSample, _ *LossConfig) { s.Mask = []bool{true} }, "mask"},
		{"negative weight", func(_ *DeviceSample, c *LossConfig) { c.Beta = -1 }, "loss weights"},
		{"zero temperature", func(_ *DeviceSample, c *LossConfig) { c.Temperature = 0 }, "temperature"},
	} {
		s, cfg := good, klL2CE
		bad.edit(&s, &cfg)
		if _, _, err := ds.Accumulate(s, cfg); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want an error containing %q", bad.name, err, bad.want)
		}
	}
	llama := devCases(t)[2]
	attnOnly := loadDevice(t, be, llama, DeviceOptions{})
	ls := devSamples(t, llama.golden, attnOnly.ImageTokens(), attnOnly.sizes.vocab, newRand(1))[0]
	if _, _, err := attnOnly.Accumulate(DeviceSample{IDs: ls.ids, Pixels: ls.pixels, Labels: ls.labels}, klL2CE); err == nil || !strings.Contains(err.Error(), "no Mamba layer") {
		t.Errorf("a layer term without Mamba layers: %v", err)
	}
	noTeacher, err := LoadDeviceStudent(student, be, nil, DeviceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer noTeacher.Close()
	if _, _, err := noTeacher.Accumulate(good, klL2CE); err == nil || !strings.Contains(err.Error(), "need a teacher") {
		t.Errorf("KL without a teacher: %v", err)
	}
	// Cross-entropy alone needs no teacher; then a NaN gradient stops the update and names its parameter.
	if err := noTeacher.ZeroGrad(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := noTeacher.Accumulate(good, LossConfig{Gamma: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := noTeacher.Gradients(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := noTeacher.Accumulate(good, LossConfig{Gamma: 1}); err == nil || !strings.Contains(err.Error(), "ZeroGrad") {
		t.Errorf("a sample after the gradients were finished: %v", err)
	}
	p := noTeacher.Params()[3]
	if err := noTeacher.tr.Fill(p.Grad, float32(math.Inf(1))); err != nil {
		t.Fatal(err)
	}
	before := download(t, be, noTeacher.Params()[0].Data)
	if _, err := noTeacher.Update(1, 1e-3, 1, optim.Recipe()); err == nil || !strings.Contains(err.Error(), p.Name) || !errors.Is(err, optim.ErrNonFinite) {
		t.Errorf("an infinite gradient: %v", err)
	}
	if !slices.Equal(before, download(t, be, noTeacher.Params()[0].Data)) {
		t.Error("an update with an infinite gradient changed a parameter")
	}
	if _, err := noTeacher.Update(1, 1e-3, 1, &optim.AdamW{Beta1: 1.5, Beta2: 0.9}); err == nil || !strings.Contains(err.Error(), "betas") {
		t.Errorf("betas out of range: %v", err)
	}
	if err := noTeacher.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := noTeacher.Accumulate(good, LossConfig{Gamma: 1}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("a closed student: %v", err)
	}
}
