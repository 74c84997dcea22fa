package distill

import (
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// One training step's compute on the phi-tiny hybrid (image + text, 100
// rows): the student's forward with saved activations and the layer-term
// branches, the default loss against the teacher's targets, and the
// backward. The teacher's forward is not included.
func BenchmarkStudentStep(b *testing.B) {
	g := openGolden(b, "phi-h25")
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	rng := rand.New(rand.NewPCG(60, 1))
	for len(ids)+14 < 100 { // 14 more rows from the image
		ids = append(ids, 1+rng.IntN(1000))
	}
	teacher := runModel(b, "phi-tiny", pixels, ids)
	s := loadStudent(b, "phi-tiny-h25", Options{})
	in := Input{IDs: ids, Pixels: pixels, LayerInputs: map[int][]float32{}}
	tg := Targets{Logits: teacher.logits, LayerOutputs: map[int][]float32{}}
	for _, l := range s.MambaLayers() {
		in.LayerInputs[l], tg.LayerOutputs[l] = teacher.in[l], teacher.out[l]
	}
	n := s.SequenceLength(ids)
	b.Run("forward", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Forward(in, false); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
	b.Run("forward+backward", func(b *testing.B) {
		for b.Loop() {
			p, err := s.Forward(in, true)
			if err != nil {
				b.Fatal(err)
			}
			_, dlogits, dlayers, err := Objective(DefaultLoss(), p, tg)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Backward(p, dlogits, dlayers); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
}

// One mixer of Phi-2's size (d 2560, 32 heads of 80, state 80) forward and
// backward on 128 tokens.
func BenchmarkMixerPhi2(b *testing.B) {
	rng := newRand(61)
	cfg := kernels.Mamba2Config{DModel: 2560, NHeads: 32, HeadDim: 80, DState: 80, NGroups: 32, DXB: 2560, ConvKernel: 4, NormEps: 1e-5, Chunk: 64}
	m := newTestMixer(b, rng, cfg, false)
	const n = 128
	h := randn(rng, n*cfg.DModel, 1)
	up := randn(rng, n*cfg.DModel, 1)
	p := newPool(0)
	out := make([]float32, n*cfg.DModel)
	dh := make([]float32, n*cfg.DModel)
	for b.Loop() {
		a := m.forward(p, out, h, n, true)
		m.backward(p, dh, up, a)
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
