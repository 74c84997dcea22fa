package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

var hybridFixtures = []struct{ family, dir string }{
	{"phi", "phi-tiny-h25"},     // MHA mixer (d_xb = d_inner), BF16
	{"qwen2", "qwen2-tiny-h25"}, // GQA mixer (x and B repeated), F16, tied head
}

// The hybrids against the float64 forward written from SPEC §3
// (testdata/gen/hybrid_ref.py): each Mamba layer's mixer output, every
// layer's output, the final norm and the logits; with the chunked scan at
// several chunk lengths and with the recurrence.
func TestHybridMatchesReference(t *testing.T) {
	for _, fx := range hybridFixtures {
		for _, v := range []struct {
			name  string
			opts  Options
			plain bool
		}{
			{"chunk64", Options{}, false},
			{"chunk5", Options{Chunk: 5}, false},
			{"recurrence", Options{Recurrence: true}, false},
			{"f32-weights-no-extensions", Options{F32Weights: true, Chunk: 16}, true},
		} {
			t.Run(fx.family+"/"+v.name, func(t *testing.T) {
				g := openGolden(t, fx.family+"-h25")
				m := load(t, fx.dir, v.opts, v.plain)
				be := m.Backend()
				if got := m.MambaLayers(); !slices.Equal(got, []int{0, 4}) {
					t.Fatalf("Mamba layers %v, want [0 4]", got)
				}
				pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
				logits, err := m.ForwardHooked(pixels, ids, func(l int, in, out kernels.Tensor) error {
					if m.IsMamba(l) {
						// p.mixOut still holds this layer's mixer output.
						checkRel(t, fmt.Sprintf("layer %d mixer output", l), download(t, be, m.plans[in.Shape()[1]].mixOut), g.f64(fmt.Sprintf("llm.mixer_output.%d", l)), goldenTol)
					}
					checkRel(t, fmt.Sprintf("layer %d output", l), download(t, be, out), g.f64(fmt.Sprintf("llm.layer_output.%d", l)), goldenTol)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				checkRel(t, "logits", download(t, be, logits), g.f64("logits"), goldenTol)
			})
		}
	}
}

// The model's mixer composition equals kernels.Mamba2Forward and the
// float64 reference.Mamba2Mixer on random inputs, with the fixture's
// weights.
func TestMixerMatchesKernelsComposite(t *testing.T) {
	for _, fx := range hybridFixtures {
		t.Run(fx.family, func(t *testing.T) {
			m := load(t, fx.dir, Options{F32Weights: true, Chunk: 8}, false)
			be := m.Backend()
			mx := m.layers[0].mixer
			rng := rand.New(rand.NewPCG(11, uint64(len(fx.family))))
			const L = 37
			host := make([]float32, L*m.sizes.d)
			for i := range host {
				host[i] = float32(rng.NormFloat64())
			}
			h, err := be.Upload(host, kernels.F32, 1, L, m.sizes.d)
			if err != nil {
				t.Fatal(err)
			}
			p, err := m.plan(L)
			if err != nil {
				t.Fatal(err)
			}
			if err := mx.forward(m.mm, m.rows, p.mix, h, p.mixOut, nil, 0, true); err != nil {
				t.Fatal(err)
			}
			got := download(t, be, p.mixOut)
			want, err := kernels.Mamba2Forward(be, mx.cfg, mx.w, h, true)
			if err != nil {
				t.Fatal(err)
			}
			if w := download(t, be, want); !slices.Equal(got, w) {
				t.Errorf("differs from kernels.Mamba2Forward (relative %.3g)", relErr(got, widen(w)))
			}
			be.Free(want)

			ref := referenceWeights(t, be, mx)
			hin, _ := reference.FromFloat32(host, 1, L, m.sizes.d)
			out, err := reference.Mamba2Mixer(mx.cfg, ref, hin)
			if err != nil {
				t.Fatal(err)
			}
			checkRel(t, "mixer vs float64 reference", got, out.Data, 1e-5)
		})
	}
}

func referenceWeights(t *testing.T, be kernels.Backend, mx *mixer) reference.Mamba2Weights {
	t.Helper()
	arr := func(x kernels.Tensor) *reference.Array {
		if x == nil {
			return nil
		}
		a, err := reference.FromFloat32(download(t, be, x), x.Shape()...)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	w := mx.w
	return reference.Mamba2Weights{InProj: arr(w.InProj), InProjBias: arr(w.InProjBias), Conv1dWeight: arr(w.Conv1dWeight),
		Conv1dBias: arr(w.Conv1dBias), DtBias: arr(w.DtBias), ALog: arr(w.ALog), D: arr(w.D), NormWeight: arr(w.NormWeight),
		OutProj: arr(w.OutProj), OutProjBias: arr(w.OutProjBias)}
}

// Incremental decoding equals recomputing the whole sequence: Prefill on a
// prompt, then Step token by token (past the initial cache capacity, so
// the caches grow), each step's logits against the full forward's logits
// at that position.
func TestDecodeMatchesRecompute(t *testing.T) {
	dirs := []struct {
		dir, golden string
	}{
		{"phi-tiny", "phi"}, {"qwen2-tiny", "qwen2"}, {"llama-tiny", "llama"},
		{"phi-tiny-h25", "phi"}, {"qwen2-tiny-h25", "qwen2"},
	}
	for _, d := range dirs {
		for _, v := range []struct {
			name  string
			plain bool
		}{{"native", false}, {"no-extensions", true}} {
			t.Run(d.dir+"/"+v.name, func(t *testing.T) {
				g := openGolden(t, d.golden)
				m := load(t, d.dir, Options{DecodeReserve: 3, Chunk: 16}, v.plain)
				pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
				rng := rand.New(rand.NewPCG(5, 7))
				// Prompt: the golden's, cut short; then 9 more tokens, some
				// copied from the prompt's tail and some random.
				prompt := ids[:len(ids)-4]
				extra := append(slices.Clone(ids[len(ids)-4:]), 0, 0, 0, 0, 0)
				for i := 4; i < len(extra); i++ {
					extra[i] = rng.IntN(m.sizes.vocab)
				}
				full := append(slices.Clone(prompt), extra...)

				logits, err := m.Forward(pixels, full)
				if err != nil {
					t.Fatal(err)
				}
				all := download(t, m.Backend(), logits)
				V, L := m.sizes.vocab, m.SequenceLength(full)
				row := func(pos int) []float64 { return widen(all[pos*V : (pos+1)*V]) }

				first, err := m.Prefill(pixels, prompt)
				if err != nil {
					t.Fatal(err)
				}
				Lp := m.SequenceLength(prompt)
				if m.Pos() != Lp {
					t.Fatalf("after prefill Pos() = %d, want %d", m.Pos(), Lp)
				}
				checkRel(t, fmt.Sprintf("prefill (position %d)", Lp-1), first, row(Lp-1), decodeTol)
				for i, id := range extra {
					got, err := m.Step(id)
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					checkRel(t, fmt.Sprintf("step %d (position %d)", i, Lp+i), got, row(Lp+i), decodeTol)
				}
				if m.Pos() != L {
					t.Errorf("after the steps Pos() = %d, want %d", m.Pos(), L)
				}
				// A second Prefill starts over.
				again, err := m.Prefill(pixels, prompt)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(again, first) {
					t.Errorf("a second prefill of the same prompt gives other logits")
				}
			})
		}
	}
}

// Decoding a text-only prompt of fewer tokens than the conv kernel, one
// token at a time from a one-token prompt, covers the conv-state padding.
func TestDecodeShortPrompts(t *testing.T) {
	for _, dir := range []string{"qwen2-tiny-h25", "phi-tiny-h25"} {
		t.Run(dir, func(t *testing.T) {
			m := load(t, dir, Options{}, false)
			seq := []int{17, 3, 250, 999, 42, 7, 7, 130}
			logits, err := m.Forward(nil, seq)
			if err != nil {
				t.Fatal(err)
			}
			all := download(t, m.Backend(), logits)
			V := m.sizes.vocab
			for _, n := range []int{1, 2, 3} {
				got, err := m.Prefill(nil, seq[:n])
				if err != nil {
					t.Fatal(err)
				}
				checkRel(t, fmt.Sprintf("prefill of %d", n), got, widen(all[(n-1)*V:n*V]), decodeTol)
				for pos := n; pos < len(seq); pos++ {
					if got, err = m.Step(seq[pos]); err != nil {
						t.Fatal(err)
					}
					checkRel(t, fmt.Sprintf("prompt %d, step at %d", n, pos), got, widen(all[pos*V:(pos+1)*V]), decodeTol)
				}
			}
		})
	}
}

// Bad inputs are errors that name what is wrong, never panics.
func TestInputErrors(t *testing.T) {
	m := load(t, "qwen2-tiny-h25", Options{}, false)
	px := make([]float32, m.vision.pixelCount())
	for i := range px {
		px[i] = float32(i%7) / 7
	}
	cases := []struct {
		name string
		call func() error
	}{
		{"no ids", func() error { _, err := m.Forward(nil, nil); return err }},
		{"id past the vocabulary", func() error { _, err := m.Forward(nil, []int{1, 1024}); return err }},
		{"negative id", func() error { _, err := m.Forward(nil, []int{-1}); return err }},
		{"placeholder without pixels", func() error { _, err := m.Forward(nil, []int{1, -200, 2}); return err }},
		{"pixels without placeholder", func() error { _, err := m.Forward(px, []int{1, 2}); return err }},
		{"short image", func() error { _, err := m.Forward(px[1:], []int{-200}); return err }},
		{"NaN pixel", func() error {
			bad := slices.Clone(px)
			bad[5] = float32(math.NaN())
			_, err := m.Forward(bad, []int{-200})
			return err
		}},
		{"step before prefill", func() error { _, err := m.Step(1); return err }},
		{"run layer out of range", func() error { return m.RunLayer(8, nil, nil) }},
		{"run layer nil input", func() error { return m.RunLayer(0, nil, nil) }},
	}
	for _, c := range cases {
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
					t.Errorf("%s: panicked: %v", c.name, r)
				}
			}()
			return c.call()
		}()
		if err == nil {
			t.Errorf("%s: no error", c.name)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
	if _, err := m.Prefill(nil, []int{5, 6}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Step(1024); err == nil {
		t.Errorf("step with a token past the vocabulary: no error")
	}
	if _, err := m.Step(-200); err == nil {
		t.Errorf("step with the image placeholder: no error")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Forward(nil, []int{1}); err == nil {
		t.Errorf("forward after close: no error")
	}
	be := cpu.New(1)
	if _, err := Load(fixtures+"/qwen2-tiny-h25", be, Options{Chunk: -1}); err == nil {
		t.Errorf("negative chunk: no error")
	}
}

// A hybrid's mixer runs in buffers of the attention block and the MLP where
// the shapes match (their results are unchanged: the other tests of this
// file check them).
func TestMixerSharesBuffers(t *testing.T) {
	for _, fx := range hybridFixtures {
		t.Run(fx.family, func(t *testing.T) {
			m := load(t, fx.dir, Options{}, false)
			p, err := m.plan(33)
			if err != nil {
				t.Fatal(err)
			}
			if p.mix.xBC != p.attn.qkv {
				t.Error("the mixer's x|B|C input does not reuse the attention's q|k|v buffer")
			}
			lendable := map[kernels.Tensor]bool{}
			for _, x := range []kernels.Tensor{p.attn.qkv, p.attn.qf, p.attn.kf, p.attn.vf, p.attn.out, p.up, p.gate, p.lin, p.mlpOut} {
				if x != nil {
					lendable[x] = true
				}
			}
			borrowed := 0
			for _, x := range []kernels.Tensor{p.mix.proj, p.mix.z, p.mix.xBC, p.mix.xBCc, p.mix.dtRaw, p.mix.dt, p.mix.xs, p.mix.bs, p.mix.cs,
				p.mix.x, p.mix.B, p.mix.y, p.mix.yn} {
				if lendable[x] {
					borrowed++
				}
			}
			if borrowed < 4 {
				t.Errorf("%d mixer buffers reuse attention or MLP buffers, want at least 4", borrowed)
			}
			t.Logf("%d mixer buffers reuse attention or MLP buffers", borrowed)
			seen := map[kernels.Tensor]string{}
			for name, x := range map[string]kernels.Tensor{"proj": p.mix.proj, "z": p.mix.z, "xBC": p.mix.xBC, "xBCc": p.mix.xBCc,
				"dtRaw": p.mix.dtRaw, "dt": p.mix.dt, "xs": p.mix.xs, "bs": p.mix.bs, "cs": p.mix.cs, "y": p.mix.y, "yn": p.mix.yn,
				"x": p.mix.x, "B": p.mix.B, "h": p.h, "mixOut": p.mixOut} {
				if other, dup := seen[x]; dup {
					t.Errorf("mixer buffers %s and %s share storage", name, other)
				}
				seen[x] = name
			}
		})
	}
}
