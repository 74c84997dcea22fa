package model

import (
	"fmt"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

var teacherFixtures = []struct{ family, dir string }{
	{"phi", "phi-tiny"},     // BF16, sharded, parallel block, partial RoPE, head bias
	{"qwen2", "qwen2-tiny"}, // F16, GQA, q/k/v biases, tied head, θ = 1e6
	{"llama", "llama-tiny"}, // F32, GQA, untied head
}

// The teacher fixtures against the float64 forward of the real
// transformers code: vision hidden states, connector output, spliced
// embeddings, every decoder layer's output and the logits.
func TestTeacherMatchesGolden(t *testing.T) {
	for _, fx := range teacherFixtures {
		for _, v := range []struct {
			name  string
			opts  Options
			plain bool
		}{
			{"default", Options{}, false},
			{"f32-weights", Options{F32Weights: true}, false},
			{"no-extensions", Options{}, true},
		} {
			t.Run(fx.family+"/"+v.name, func(t *testing.T) {
				g := openGolden(t, fx.family)
				m := load(t, fx.dir, v.opts, v.plain)
				be := m.Backend()
				pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
				if m.IsMamba(0) || len(m.MambaLayers()) != 0 {
					t.Fatalf("a teacher has Mamba layers %v", m.MambaLayers())
				}

				img, err := m.ImageFeatures(pixels)
				if err != nil {
					t.Fatal(err)
				}
				checkRel(t, "vision hidden_states[-2]", download(t, be, m.vplan.x), g.f64("vision.hidden_states.2"), goldenTol)
				checkRel(t, "vision features (row 0 dropped)", download(t, be, m.vplan.feats), g.f64("vision.features"), goldenTol)
				checkRel(t, "image features (connector)", download(t, be, img), g.f64("image_features"), goldenTol)

				emb, err := m.Embed(pixels, ids)
				if err != nil {
					t.Fatal(err)
				}
				want := g.f64("inputs_embeds")
				if got := emb.Shape(); !slices.Equal(got, []int{1, len(want) / m.sizes.d, m.sizes.d}) {
					t.Fatalf("embeddings shape %v", got)
				}
				checkRel(t, "inputs_embeds", download(t, be, emb), want, goldenTol)

				var layersSeen []int
				logits, err := m.ForwardHooked(pixels, ids, func(l int, in, out kernels.Tensor) error {
					layersSeen = append(layersSeen, l)
					checkRel(t, fmt.Sprintf("layer %d input", l), download(t, be, in), g.f64(fmt.Sprintf("llm.hidden_states.%d", l)), goldenTol)
					checkRel(t, fmt.Sprintf("layer %d output", l), download(t, be, out), g.f64(fmt.Sprintf("llm.layer_output.%d", l)), goldenTol)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if len(layersSeen) != m.NumLayers() {
					t.Errorf("hook saw layers %v, want %d", layersSeen, m.NumLayers())
				}
				checkRel(t, "logits", download(t, be, logits), g.f64("logits"), goldenTol)
				if got, want := logits.Shape(), []int{1, m.SequenceLength(ids), m.sizes.vocab}; !slices.Equal(got, want) {
					t.Errorf("logits shape %v, want %v", got, want)
				}
			})
		}
	}
}

// The fallback paths (no RowCopier) give the same bits as the native ones.
func TestFallbackRowsAreExact(t *testing.T) {
	g := openGolden(t, "qwen2")
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	var got [2][]float32
	for i, plain := range []bool{false, true} {
		m := load(t, "qwen2-tiny", Options{}, plain)
		logits, err := m.Forward(pixels, ids)
		if err != nil {
			t.Fatal(err)
		}
		got[i] = download(t, m.Backend(), logits)
	}
	if !slices.Equal(got[0], got[1]) {
		t.Errorf("logits differ between the native and the fallback row moves")
	}
}

// RunLayer on a layer's input reproduces that layer's output in a forward.
func TestRunLayerMatchesForward(t *testing.T) {
	for _, dir := range []string{"phi-tiny", "qwen2-tiny-h25"} {
		t.Run(dir, func(t *testing.T) {
			m := load(t, dir, Options{}, false)
			be := m.Backend()
			g := openGolden(t, map[string]string{"phi-tiny": "phi", "qwen2-tiny-h25": "qwen2"}[dir])
			pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
			ins, outs := map[int][]float32{}, map[int][]float32{}
			if _, err := m.ForwardHooked(pixels, ids, func(l int, in, out kernels.Tensor) error {
				ins[l], outs[l] = download(t, be, in), download(t, be, out)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			L := m.SequenceLength(ids)
			for _, l := range []int{0, 1, m.NumLayers() - 1} {
				in, err := be.Upload(ins[l], kernels.F32, 1, L, m.sizes.d)
				if err != nil {
					t.Fatal(err)
				}
				out, err := be.Alloc(kernels.F32, 1, L, m.sizes.d)
				if err != nil {
					t.Fatal(err)
				}
				if err := m.RunLayer(l, in, out); err != nil {
					t.Fatal(err)
				}
				if got := download(t, be, out); !slices.Equal(got, outs[l]) {
					t.Errorf("layer %d (mamba %v): RunLayer differs from the forward pass (relative %.3g)", l, m.IsMamba(l), relErr(got, widen(outs[l])))
				}
				be.Free(in)
				be.Free(out)
			}
		})
	}
}
