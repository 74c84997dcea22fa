package distill

import (
	"fmt"
	"maps"
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
)

// Tolerances of the whole-model checks.
const (
	modelTol  = 1e-5 // Student forward vs package model's forward (both float32)
	goldenTol = 1e-4 // vs the float64 PyTorch forward (testdata/golden), as package model's tests
	twinTol   = 1e-5 // Student loss vs its float64 twin
	e2eTol    = 1e-4 // end-to-end gradients vs central differences of the float64 twin
)

var hybrids = []struct{ family, dir string }{
	{"phi", "phi-tiny-h25"},     // MHA mixer, BF16, Phi parallel blocks, untied head with bias
	{"qwen2", "qwen2-tiny-h25"}, // GQA mixer, F16, q/k/v biases, tied head
}

// teacherRun is what package model shows of one forward pass.
type teacherRun struct {
	logits  []float32
	in, out [][]float32 // each layer's input and output
}

// runModel runs package model on a checkpoint (teacher or hybrid).
func runModel(t testing.TB, dir string, pixels []float32, ids []int) teacherRun {
	t.Helper()
	be := cpu.New(0)
	m, err := model.Load(filepath.Join(fixtures, dir), be, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var r teacherRun
	dl := func(x kernels.Tensor) []float32 {
		v, err := be.Download(x)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	logits, err := m.ForwardHooked(pixels, ids, func(_ int, in, out kernels.Tensor) error {
		r.in, r.out = append(r.in, dl(in)), append(r.out, dl(out))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.logits = dl(logits)
	return r
}

// The Student's forward equals package model's on the hybrid fixtures:
// logits, every layer alone (ForwardLayer on the model's layer input), the
// layer branches, the embeddings path; and the float64 PyTorch goldens.
func TestForwardMatchesModel(t *testing.T) {
	for _, fx := range hybrids {
		for _, f32 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/f32-weights=%v", fx.family, f32), func(t *testing.T) {
				g := openGolden(t, fx.family+"-h25")
				pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
				want := runModel(t, fx.dir, pixels, ids)
				s := loadStudent(t, fx.dir, Options{Workers: 2, F32Weights: f32})
				if got := s.MambaLayers(); !slices.Equal(got, []int{0, 4}) {
					t.Fatalf("Mamba layers %v, want [0 4]", got)
				}
				layerIn := map[int][]float32{}
				for _, l := range s.MambaLayers() {
					layerIn[l] = want.in[l]
				}
				p, err := s.Forward(Input{IDs: ids, Pixels: pixels, LayerInputs: layerIn}, false)
				if err != nil {
					t.Fatal(err)
				}
				if p.Len != s.SequenceLength(ids) || p.Len*s.Vocab() != len(p.Logits) {
					t.Fatalf("pass of %d rows, %d logits; want %d rows", p.Len, len(p.Logits), s.SequenceLength(ids))
				}
				checkRel(t, "logits vs model", p.Logits, widen(want.logits), modelTol)
				checkRel(t, "logits vs golden", p.Logits, g.f64("logits"), goldenTol)
				emb, _, err := s.embeds(Input{IDs: ids, Pixels: pixels}, false)
				if err != nil {
					t.Fatal(err)
				}
				checkRel(t, "embeddings vs model", emb, widen(want.in[0]), modelTol)
				checkRel(t, "embeddings vs golden", emb, g.f64("inputs_embeds"), goldenTol)
				for l := range s.NumLayers() {
					out, err := s.ForwardLayer(l, want.in[l])
					if err != nil {
						t.Fatal(err)
					}
					checkRel(t, fmt.Sprintf("layer %d alone vs model", l), out, widen(want.out[l]), modelTol)
				}
				for l, out := range p.LayerOutputs {
					checkRel(t, fmt.Sprintf("layer %d branch vs model", l), out, widen(want.out[l]), modelTol)
				}
				pe, err := s.Forward(Input{Embeds: want.in[0]}, false)
				if err != nil {
					t.Fatal(err)
				}
				checkRel(t, "logits from embeddings vs model", pe.Logits, widen(want.logits), modelTol)
			})
		}
	}
}

// gradSetup is one end-to-end case: a Student, its twin, a sample, the
// teacher's targets and a loss.
type gradSetup struct {
	s      *Student
	tw     *studentTwin
	in     Input
	tg     Targets
	cfg    LossConfig
	feats  [][]float64
	layer  map[int][]float64
	losses Losses
	pass   *Pass
}

// newGradSetup runs the teacher (package model on the fixture the hybrid
// was converted from) and the Student on a short prompt with the golden
// image, then the loss and Backward.
func newGradSetup(t *testing.T, family, dir string, cfg LossConfig, opts Options, rng *rand.Rand) *gradSetup {
	g := openGolden(t, family+"-h25")
	pixels, all := g.f32("pixel_values"), g.ids("input_ids")
	img := slices.Index(all, -200)
	ids := slices.Clone(all[max(0, img-3):min(len(all), img+7)]) // 24 rows
	s := loadStudent(t, dir, opts)
	teacher := runModel(t, family+"-tiny", pixels, ids)
	n := s.SequenceLength(ids)
	gs := &gradSetup{s: s, cfg: cfg, layer: map[int][]float64{}}
	gs.in = Input{IDs: ids, Pixels: pixels, LayerInputs: map[int][]float32{}}
	gs.tg = Targets{Logits: teacher.logits, LayerOutputs: map[int][]float32{}, Labels: make([]int, n)}
	for _, l := range s.MambaLayers() {
		gs.in.LayerInputs[l] = teacher.in[l]
		gs.tg.LayerOutputs[l] = teacher.out[l]
		gs.layer[l] = widen(teacher.in[l])
	}
	for i := range gs.tg.Labels {
		gs.tg.Labels[i] = IgnoreLabel
		if i >= n-6 {
			gs.tg.Labels[i] = rng.IntN(s.Vocab())
		}
	}
	gs.tg.Mask = AnswerMask(gs.tg.Labels)
	gs.tg.Mask[3] = true // and one image row
	gs.feats = [][]float64{widen(s.vision.features(s.pool, pixels))}
	gs.tw = newStudentTwin(t, s)
	if opts.Dropout > 0 {
		gs.in.Dropout = &DropoutKey{Seed: 99, Step: 4, Sample: 2}
	}

	p, err := s.Forward(gs.in, true)
	if err != nil {
		t.Fatal(err)
	}
	gs.tw.holdMasks(p)
	ls, dlogits, dlayers, err := Objective(cfg, p, gs.tg)
	if err != nil {
		t.Fatal(err)
	}
	s.ZeroGrad()
	if err := s.Backward(p, dlogits, dlayers); err != nil {
		t.Fatal(err)
	}
	gs.losses, gs.pass = ls, p
	return gs
}

func (gs *gradSetup) twinLoss() float64 {
	logits, outs := gs.tw.forward(gs.tw.embeds(gs.in.IDs, gs.feats), gs.layer)
	return gs.tw.objective(gs.cfg, logits, outs, gs.tg)
}

// The whole tiny hybrids end to end: the loss α·KL_T + β·Σ layer
// distances + γ·CE against the real teacher's logits and hidden states,
// its gradients with respect to every trainable tensor (connector and
// both mixers) against central differences of the float64 twin.
func TestStudentGradients(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end gradient check")
	}
	for i, c := range []struct {
		name, family, dir string
		cfg               LossConfig
		dropout           float64
	}{
		{"phi", "phi", "phi-tiny-h25", LossConfig{Alpha: 1, Beta: 0.7, Gamma: 0.5, Temperature: 2, Distance: L2Norm}, 0},
		{"qwen2", "qwen2", "qwen2-tiny-h25", LossConfig{Alpha: 0.8, Beta: 1, Gamma: 0.3, Temperature: 1, Distance: MeanSquared}, 0},
		// Residual dropout with its masks held fixed (the twin applies the
		// masks the Pass drew) on both block kinds.
		{"phi-dropout", "phi", "phi-tiny-h25", LossConfig{Alpha: 1, Beta: 0.7, Gamma: 0.5, Temperature: 2, Distance: L2Norm}, 0.3},
		{"qwen2-dropout", "qwen2", "qwen2-tiny-h25", LossConfig{Alpha: 0.8, Beta: 1, Gamma: 0.3, Temperature: 1, Distance: MeanSquared}, 0.25},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(uint64(20 + i))
			gs := newGradSetup(t, c.family, c.dir, c.cfg, Options{Workers: 3, Chunk: 5, Dropout: c.dropout}, rng)
			if c.dropout > 0 && len(gs.tw.drop) != 2*(gs.s.NumLayers()+len(gs.s.MambaLayers())) {
				t.Fatalf("%d dropout masks, want 2 per layer and 2 per layer-term branch", len(gs.tw.drop))
			}
			tl := gs.twinLoss()
			if e := relErr([]float32{float32(gs.losses.Total)}, []float64{tl}); !(e <= twinTol) {
				t.Errorf("loss %.9g (KL %.6g, layer %.6g, CE %.6g), float64 twin %.9g: relative error %.3g",
					gs.losses.Total, gs.losses.KL, gs.losses.Layer, gs.losses.CE, tl, e)
			} else {
				t.Logf("loss %.9g (KL %.6g, layer %.6g %v, CE %.6g), twin %.9g", gs.losses.Total, gs.losses.KL, gs.losses.Layer, gs.losses.Layers, gs.losses.CE, tl)
			}
			if len(gs.tw.inputs) != len(gs.s.Params()) {
				t.Fatalf("twin has %d trainable inputs, the student %d params", len(gs.tw.inputs), len(gs.s.Params()))
			}
			fd := fdCheck{eps: 1e-5, tol: e2eTol, full: 4, dirs: 1, samples: 3}
			checkGradients(t, rng, "student", gs.twinLoss, gs.tw.inputs, fd)
		})
	}
}

// The gradient with respect to the decoder's input through every frozen
// layer (attention, MLP, norms, head) and the mixers, for each family;
// llama through a hybrid of attention layers only.
func TestEmbedsGradient(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end gradient check")
	}
	cases := []struct{ name, dir string }{{"phi", "phi-tiny-h25"}, {"qwen2", "qwen2-tiny-h25"}, {"llama", llamaAllAttention(t)}}
	for i, c := range cases {
		dir := c.dir
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(uint64(30 + i))
			s := loadStudent(t, dir, Options{Workers: 2})
			const n = 21
			embeds := randn(rng, n*s.Hidden(), 1)
			teacher := randn(rng, n*s.Vocab(), 2)
			p, err := s.Forward(Input{Embeds: embeds}, true)
			if err != nil {
				t.Fatal(err)
			}
			cfg := LossConfig{Alpha: 1, Temperature: 1.5}
			_, dlogits, dlayers, err := Objective(cfg, p, Targets{Logits: teacher})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Backward(p, dlogits, dlayers); err != nil {
				t.Fatal(err)
			}
			tw := newStudentTwin(t, s)
			x := widen(embeds)
			f := func() float64 {
				logits, _ := tw.forward(arr(t, x, 1, n, s.Hidden()), nil)
				return tw.objective(cfg, logits, nil, Targets{Logits: teacher})
			}
			checkGradients(t, rng, "embeddings", f, []gradInput{{"embeds", x, p.EmbedsGrad()}},
				fdCheck{eps: 1e-5, tol: e2eTol, full: 0, dirs: 3, samples: 4})
		})
	}
}

// llamaAllAttention makes a temporary hybrid of llama-tiny whose layers
// all stay attention (mamba_config.json lists them all): a Student with
// the connector as its only trainable part.
func llamaAllAttention(t *testing.T) string {
	t.Helper()
	src := filepath.Join(fixtures, "llama-tiny")
	dir := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := formats.ReadModelConfig(src)
	if err != nil {
		t.Fatal(err)
	}
	tc := cfg.Text
	mc := &formats.MambaConfig{DModel: tc.HiddenSize, Expand: 1, NGroups: tc.NumHeads, DState: tc.HeadDim, NormEps: tc.NormEps,
		NormEpsKey: "rms_norm_eps", DInner: tc.HiddenSize, DXB: tc.NumKVHeads * tc.HeadDim, IntermediateSize: tc.IntermediateSize,
		HiddenAct: tc.HiddenAct, NLayer: tc.NumLayers}
	for l := range tc.NumLayers {
		mc.AttnLayers = append(mc.AttnLayers, l)
	}
	if err := os.WriteFile(filepath.Join(dir, formats.MambaConfigName), mc.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The llama student (all attention) matches package model on llama-tiny.
func TestForwardLlama(t *testing.T) {
	g := openGolden(t, "llama")
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	want := runModel(t, "llama-tiny", pixels, ids)
	s, err := LoadStudent(llamaAllAttention(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.MambaLayers()) != 0 || len(s.Params()) != 4 {
		t.Fatalf("%d Mamba layers and %d params, want none and the connector's 4", len(s.MambaLayers()), len(s.Params()))
	}
	p, err := s.Forward(Input{IDs: ids, Pixels: pixels}, false)
	if err != nil {
		t.Fatal(err)
	}
	checkRel(t, "logits vs model", p.Logits, widen(want.logits), modelTol)
	checkRel(t, "logits vs golden", p.Logits, g.f64("logits"), goldenTol)
}

// Gradients are bit-identical for any number of workers and any chunk
// length, and a frozen connector gets none.
func TestGradientsDeterministic(t *testing.T) {
	grads := func(opts Options) map[string][]float32 {
		rng := newRand(40)
		gs := newGradSetup(t, "qwen2", "qwen2-tiny-h25", DefaultLoss(), opts, rng)
		out := map[string][]float32{}
		for _, p := range gs.s.Params() {
			out[p.Name] = slices.Clone(p.Grad)
		}
		return out
	}
	want := grads(Options{Workers: 1, Chunk: 64})
	for _, opts := range []Options{{Workers: 4, Chunk: 64}, {Workers: 3, Chunk: 1}, {Workers: 2, Chunk: 9}} {
		got := grads(opts)
		if !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("workers %d, chunk %d: gradients differ from 1 worker, chunk 64", opts.Workers, opts.Chunk)
		}
	}
	frozen := grads(Options{FreezeConnector: true})
	for name := range want {
		_, ok := frozen[name]
		if isConn := strings.HasPrefix(name, "connector."); ok == isConn {
			t.Errorf("frozen connector: param %s listed = %v", name, ok)
		}
	}
}

// The API as a training loop uses it: a few plain gradient steps on the
// phi hybrid against the real teacher lower the default loss (KL + layer
// term) each time.
func TestStepsLowerLoss(t *testing.T) {
	g := openGolden(t, "phi-h25")
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	teacher := runModel(t, "phi-tiny", pixels, ids)
	s := loadStudent(t, "phi-tiny-h25", Options{})
	in := Input{IDs: ids, Pixels: pixels, LayerInputs: map[int][]float32{}}
	tg := Targets{Logits: teacher.logits, LayerOutputs: map[int][]float32{}}
	for _, l := range s.MambaLayers() {
		in.LayerInputs[l], tg.LayerOutputs[l] = teacher.in[l], teacher.out[l]
	}
	const lr = 2e-3
	last := 0.0
	for step := range 4 {
		s.ZeroGrad()
		p, err := s.Forward(in, true)
		if err != nil {
			t.Fatal(err)
		}
		ls, dlogits, dlayers, err := Objective(DefaultLoss(), p, tg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Backward(p, dlogits, dlayers); err != nil {
			t.Fatal(err)
		}
		t.Logf("step %d: loss %.6g (KL %.6g, layer %.6g)", step, ls.Total, ls.KL, ls.Layer)
		if step > 0 && !(ls.Total < last) {
			t.Errorf("step %d: loss %.6g did not go below %.6g", step, ls.Total, last)
		}
		last = ls.Total
		for _, prm := range s.Params() {
			for i, gr := range prm.Grad {
				prm.Data[i] -= lr * gr
			}
		}
	}
}
