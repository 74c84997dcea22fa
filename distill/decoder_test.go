package distill

import (
	"fmt"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Each kind of decoder layer of the fixtures alone — Phi's parallel block
// and Qwen2's and Llama's pre-norm blocks, each with attention (frozen)
// and, in the hybrids, with the Mamba mixer — and the final norm + head:
// the forward against the float64 twin, the input gradient and the
// mixer's parameter gradients against central differences of it. The
// layer-term mode (no input gradient) gives the same parameter gradients.
func TestDecoderLayers(t *testing.T) {
	cases := []struct {
		name, dir string
		layers    []int
	}{
		{"phi", "phi-tiny-h25", []int{0, 1}},
		{"qwen2", "qwen2-tiny-h25", []int{4, 5}},
		{"llama", llamaAllAttention(t), []int{2}},
	}
	for i, c := range cases {
		s := loadStudent(t, c.dir, Options{Workers: 3, Chunk: 6})
		tw := newStudentTwin(t, s)
		d := s.Hidden()
		const n = 17
		for _, l := range c.layers {
			t.Run(fmt.Sprintf("%s/layer%d", c.name, l), func(t *testing.T) {
				rng := newRand(uint64(70 + 10*i + l))
				x := randn(rng, n*d, 1)
				x64 := widen(x)
				ref := func() *reference.Array { return tw.layer(l, arr(t, x64, 1, n, d)) }
				out := make([]float32, n*d)
				a := layerForward(s.pool, s.sizes, s.layers[l], s.ropeFor(n), out, x, n, true, nil)
				checkRel(t, "forward", out, ref().Data, modelTol)

				up := randn(rng, n*d, 1)
				s.ZeroGrad()
				dx := make([]float32, n*d)
				layerBackward(s.pool, s.sizes, s.layers[l], a, s.ropeFor(n), dx, up)
				inputs := []gradInput{{"input", x64, dx}}
				if lt := tw.layers[l]; lt.mixer != nil {
					inputs = append(inputs, lt.mixer.inputs...)
				}
				fd := defaultFD
				fd.full = 400
				checkGradients(t, rng, "layer", func() float64 { return dot(up, ref()) }, inputs, fd)

				if s.layers[l].mixer == nil {
					return
				}
				var full [][]float32
				for _, p := range s.layers[l].mixer.params() {
					full = append(full, slices.Clone(p.Grad))
				}
				s.ZeroGrad()
				a = layerForward(s.pool, s.sizes, s.layers[l], s.ropeFor(n), out, x, n, true, nil)
				layerBackward(s.pool, s.sizes, s.layers[l], a, s.ropeFor(n), nil, up)
				for j, p := range s.layers[l].mixer.params() {
					if !slices.Equal(p.Grad, full[j]) {
						t.Errorf("layer-term mode: %s gradient differs from the full backward's", p.Name)
					}
				}
			})
		}
		t.Run(c.name+"/head", func(t *testing.T) {
			rng := newRand(uint64(90 + i))
			x := randn(rng, n*d, 1)
			x64 := widen(x)
			ref := func() *reference.Array { return tw.head.apply(t, tw.final.apply(t, arr(t, x64, 1, n, d))) }
			logits := make([]float32, n*s.Vocab())
			a := headForward(s.pool, s.sizes, s.final, s.head, logits, x, n)
			checkRel(t, "forward", logits, ref().Data, modelTol)
			up := randn(rng, len(logits), 1)
			dx := make([]float32, n*d)
			headBackward(s.pool, s.sizes, s.final, s.head, a, dx, up, n)
			checkGradients(t, rng, "head", func() float64 { return dot(up, ref()) }, []gradInput{{"input", x64, dx}},
				fdCheck{eps: 1e-5, tol: gradTol, dirs: 3, samples: 6})
		})
	}
}

// The connector (mlp2x_gelu) alone: its four weight gradients against
// central differences of the float64 twin.
func TestConnector(t *testing.T) {
	s := loadStudent(t, "phi-tiny-h25", Options{Workers: 2})
	tw := newStudentTwin(t, s)
	rng := newRand(95)
	const rows = 15
	vd := s.Config.Vision.HiddenSize
	feats := randn(rng, rows*vd, 1)
	f64 := arr(t, widen(feats), 1, rows, vd)
	ref := func() *reference.Array { return tw.conn[1].apply(t, reference.GELU(tw.conn[0].apply(t, f64), false)) }
	img := make([]float32, rows*s.Hidden())
	a := s.conn.forward(s.pool, img, feats, rows)
	checkRel(t, "forward", img, ref().Data, modelTol)
	up := randn(rng, len(img), 1)
	s.ZeroGrad()
	s.conn.backward(s.pool, up, a)
	checkGradients(t, rng, "connector", func() float64 { return dot(up, ref()) }, tw.inputs[:4],
		fdCheck{eps: 1e-5, tol: gradTol, full: 100, dirs: 3, samples: 6})
}
