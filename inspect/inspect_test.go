package inspect

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/surgery"
	"github.com/matsurgery/matsurgery/synth"
)

// ---------------------------------------------------------------------------
// Independent parameter counts: hand formulas per family, from the sizes
// alone (not from layout.Expected).
// ---------------------------------------------------------------------------

type counts struct{ vision, connector, llm, head int64 }

func (c counts) total() int64 { return c.vision + c.connector + c.llm + c.head }

// siglipParams counts a SigLIP vision model with its pooling head.
func siglipParams(d, inter, layers, channels, patch, numPatches int64) int64 {
	embed := d*channels*patch*patch + d + numPatches*d
	layer := 2*2*d + 4*(d*d+d) + (inter*d + inter) + (d*inter + d)
	post := 2 * d
	head := d + (3*d*d + 3*d) + (d*d + d) + 2*d + (inter*d + inter) + (d*inter + d)
	return embed + layers*layer + post + head
}

// formula counts a TinyLLaVA teacher of this config.
func formula(c *formats.ModelConfig) counts {
	t, v := c.Text, c.Vision
	d, inter, L, V := int64(t.HiddenSize), int64(t.IntermediateSize), int64(t.NumLayers), int64(t.VocabSize)
	q := int64(t.NumHeads * t.HeadDim)
	kv := int64(t.NumKVHeads * t.HeadDim)
	dv := int64(v.HiddenSize)
	out := counts{
		vision:    siglipParams(dv, int64(v.IntermediateSize), int64(v.NumLayers), int64(v.NumChannels), int64(v.PatchSize), int64(v.NumPatches())),
		connector: dv*d + d + d*d + d,
	}
	switch c.Family {
	case formats.Phi: // Phi-2 layer = 4·(d²+d) + 2·d·I + I + d + 2·d (MHA, biases everywhere, one LayerNorm)
		out.llm = V*d + L*(4*(d*d+d)+2*d*inter+inter+d+2*d) + 2*d
		out.head = V*d + V
	case formats.Qwen2: // q/k/v biases, no o bias, SwiGLU, two RMSNorms
		out.llm = V*d + L*((d*q+q)+2*(d*kv+kv)+q*d+3*d*inter+2*d) + d
	case formats.Llama: // no biases
		out.llm = V*d + L*(d*q+2*d*kv+q*d+3*d*inter+2*d) + d
		out.head = V * d
	}
	if !t.TieWordEmbeddings && c.Family == formats.Qwen2 {
		out.head = V * d
	}
	return out
}

// mixerParams counts one Mamba-2 mixer (no biases) and the attention it replaces.
func mixerParams(c *formats.ModelConfig) (mixer, attention int64) {
	t := c.Text
	d, h := int64(t.HiddenSize), int64(t.NumHeads)
	di, dxb := int64(t.NumHeads*t.HeadDim), int64(t.NumKVHeads*t.HeadDim)
	conv := di + 2*dxb
	mixer = (2*di+2*dxb+h)*d + conv*4 + conv + 3*h + di + d*di
	switch c.Family {
	case formats.Phi:
		attention = (d*di + di) + 2*(d*dxb+dxb) + (di*d + d)
	case formats.Qwen2:
		attention = (d*di + di) + 2*(d*dxb+dxb) + di*d
	default:
		attention = d*di + 2*d*dxb + di*d
	}
	return mixer, attention
}

func componentOf(r *Report, name string) ComponentCount {
	for _, c := range r.Components {
		if c.Component == name {
			return c
		}
	}
	return ComponentCount{}
}

func checkCounts(t *testing.T, r *Report, want counts) {
	t.Helper()
	got := counts{componentOf(r, "vision_tower").Params, componentOf(r, "connector").Params, componentOf(r, "llm").Params, componentOf(r, "lm_head").Params}
	if got != want {
		t.Errorf("%s: parameters %+v, hand formula %+v", r.Path, got, want)
	}
	if r.TotalParams != want.total() {
		t.Errorf("%s: total %d, hand formula %d", r.Path, r.TotalParams, want.total())
	}
}

func problemsOf(r *Report, kind string) []Problem {
	var out []Problem
	for _, p := range r.Problems {
		if p.Kind == kind {
			out = append(out, p)
		}
	}
	return out
}

func inspectOK(t *testing.T, dir string) *Report {
	t.Helper()
	r, err := Dir(dir)
	if err != nil {
		t.Fatalf("Dir(%s): %v", dir, err)
	}
	if len(r.Problems) != 0 {
		t.Errorf("%s: unexpected problems: %+v", dir, r.Problems)
	}
	return r
}

var fixtures = []struct {
	family formats.Family
	dir    string
	dtype  formats.DType
	shards int
}{
	{formats.Phi, "../testdata/fixtures/phi-tiny", formats.BF16, 3},
	{formats.Qwen2, "../testdata/fixtures/qwen2-tiny", formats.F16, 1},
	{formats.Llama, "../testdata/fixtures/llama-tiny", formats.F32, 1},
}

func TestFixtures(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(string(fx.family), func(t *testing.T) {
			r := inspectOK(t, fx.dir)
			cfg, err := formats.ReadModelConfig(fx.dir)
			if err != nil {
				t.Fatal(err)
			}
			checkCounts(t, r, formula(cfg))
			if r.Family != string(fx.family) || r.Layout != "tinyllava_factory" || r.Hybrid || r.MambaConfig {
				t.Errorf("family %q layout %q hybrid %v", r.Family, r.Layout, r.Hybrid)
			}
			if len(r.DTypes) != 1 || r.DTypes[0].DType != string(fx.dtype) || r.DTypes[0].Params != r.TotalParams ||
				r.DTypes[0].Bytes != r.TotalParams*int64(fx.dtype.Size()) || r.TotalBytes != r.DTypes[0].Bytes {
				t.Errorf("dtypes %+v, total bytes %d", r.DTypes, r.TotalBytes)
			}
			shards := 0
			for _, f := range r.Files {
				if strings.HasSuffix(f.Name, ".safetensors") {
					shards++
					st, err := os.Stat(filepath.Join(fx.dir, f.Name))
					if err != nil || st.Size() != f.Bytes || f.Tensors == 0 {
						t.Errorf("file %+v (stat %v)", f, err)
					}
				}
			}
			if shards != fx.shards {
				t.Errorf("%d shards, want %d", shards, fx.shards)
			}
			if len(r.Layers) != cfg.Text.NumLayers || len(r.AttnLayers) != cfg.Text.NumLayers || len(r.MambaLayers) != 0 {
				t.Errorf("layers %+v", r.Layers)
			}
			tied := componentOf(r, "lm_head").TiedTo
			if (tied != "") != (fx.family == formats.Qwen2) || (tied != "" && tied != "language_model.model.embed_tokens.weight") {
				t.Errorf("lm_head tied to %q", tied)
			}
			if r.Text.HeadDim != cfg.Text.HeadDim || r.Text.NumKVHeads != cfg.Text.NumKVHeads || r.Vision.NumPatches != 16 {
				t.Errorf("sizes %+v %+v", r.Text, r.Vision)
			}
		})
	}
}

func synthTiny(t *testing.T, f formats.Family, o synth.Options) string {
	t.Helper()
	o.Family, o.Preset = f, synth.Tiny
	if o.Out == "" {
		o.Out = filepath.Join(t.TempDir(), "synth-"+string(f))
	}
	if _, err := synth.Generate(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	return o.Out
}

func TestSynthOutputs(t *testing.T) {
	for _, f := range formats.SupportedFamilies {
		dir := synthTiny(t, f, synth.Options{Seed: 4})
		r := inspectOK(t, dir)
		cfg, err := formats.ReadModelConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		checkCounts(t, r, formula(cfg))
		if !strings.Contains(r.Synthetic, "preset=tiny") {
			t.Errorf("synthetic %q", r.Synthetic)
		}
	}
}

// The published TinyLLaVA-Phi-2-SigLIP-3.1B: the formula on its sizes, and
// synth's full preset (planned, not written) agreeing with it.
func TestFullPhiCount(t *testing.T) {
	_, cfg, specs, err := synth.Plan(synth.Options{Family: formats.Phi, Preset: synth.Full})
	if err != nil {
		t.Fatal(err)
	}
	c := formula(cfg)
	// Phi-2 alone is 2,779,683,840 parameters (its model card's 2.7 B).
	if phi2 := c.llm + c.head; phi2 != 2_779_683_840 {
		t.Errorf("Phi-2 formula %d, want 2,779,683,840", phi2)
	}
	total := c.total()
	if total < 3.1e9 || total > 3.25e9 {
		t.Errorf("full phi formula %d, want the published ~3.1–3.2 B", total)
	}
	var planned int64
	for _, s := range specs {
		n := int64(1)
		for _, d := range s.Shape {
			n *= d
		}
		planned += n
	}
	if planned != total {
		t.Errorf("synth full phi plans %d parameters, formula %d", planned, total)
	}
	t.Logf("full phi: vision %d, connector %d, llm %d, lm_head %d, total %d (%.2f GB in bf16)",
		c.vision, c.connector, c.llm, c.head, total, float64(2*total)/1e9)
}

// convert makes a hybrid of a teacher with the real convert pipeline.
func convert(t *testing.T, teacher string, layers []int, keepBias bool) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "hybrid")
	init := initmap.Defaults()
	init.KeepBias = keepBias
	job, err := surgery.Prepare(surgery.Options{Teacher: teacher, Out: out, Layers: layers, Seed: 3, Init: init, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer job.Teacher.Close()
	if _, err := job.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestHybrid(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(string(fx.family), func(t *testing.T) {
			mamba := []int{1, 5}
			out := convert(t, fx.dir, mamba, false)
			r := inspectOK(t, out)
			cfg, err := formats.ReadModelConfig(out)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Hybrid || !r.MambaConfig || !reflect.DeepEqual(r.MambaLayers, mamba) || len(r.AttnLayers) != cfg.Text.NumLayers-len(mamba) {
				t.Errorf("hybrid %v config %v mamba %v attention %v", r.Hybrid, r.MambaConfig, r.MambaLayers, r.AttnLayers)
			}
			want := formula(cfg)
			mixer, attention := mixerParams(cfg)
			want.llm += int64(len(mamba)) * (mixer - attention)
			checkCounts(t, r, want)
			tc := cfg.Text
			wantMixer := &Mixer{DModel: tc.HiddenSize, DInner: tc.NumHeads * tc.HeadDim, DXB: tc.NumKVHeads * tc.HeadDim, NHeads: tc.NumHeads,
				HeadDim: tc.HeadDim, ConvDim: tc.NumHeads*tc.HeadDim + 2*tc.NumKVHeads*tc.HeadDim, ConvKernel: 4,
				InProjRows: 2*tc.NumHeads*tc.HeadDim + 2*tc.NumKVHeads*tc.HeadDim + tc.NumHeads}
			for _, l := range r.Layers {
				isMamba := slices.Contains(mamba, l.Index)
				if isMamba != (l.Mixer == "mamba") || (l.Mixer != "mamba" && l.Mixer != "attention") {
					t.Errorf("layer %d: mixer %s", l.Index, l.Mixer)
				}
				if isMamba && !reflect.DeepEqual(l.Mamba, wantMixer) {
					t.Errorf("layer %d: mixer sizes %+v, want %+v", l.Index, l.Mamba, wantMixer)
				}
			}
			if !strings.Contains(r.layoutLine(), "2 of 8 decoder layers are Mamba-2") {
				t.Errorf("layout line %q", r.layoutLine())
			}
		})
	}
	// Mixers with the attention biases kept (is_bias true).
	r := inspectOK(t, convert(t, fixtures[0].dir, []int{2}, true))
	if m := r.Layers[2].Mamba; m == nil || !m.Bias {
		t.Errorf("keep-bias mixer %+v", m)
	}
}

// ---------------------------------------------------------------------------
// Broken checkpoints.
// ---------------------------------------------------------------------------

// edit describes how rewrite changes a checkpoint.
type edit struct {
	drop    map[string]bool
	reshape map[string][]int64 // same element count: the bytes are kept
	resize  map[string][]int64 // new element count: the bytes are regenerated
	retype  map[string]formats.DType
	add     []formats.TensorSpec
}

// rewrite copies the checkpoint in src to a new directory with the edits
// applied to its tensors, and its JSON files as they are.
func rewrite(t *testing.T, src string, e edit) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "edited")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".json") && en.Name() != formats.IndexFileName {
			data, err := os.ReadFile(filepath.Join(src, en.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, en.Name()), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	ck, err := formats.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var specs []formats.TensorSpec
	for _, ti := range ck.Tensors() {
		if e.drop[ti.Name] {
			continue
		}
		s := formats.TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape}
		if sh, ok := e.reshape[ti.Name]; ok {
			s.Shape = sh
		}
		if sh, ok := e.resize[ti.Name]; ok {
			s.Shape = sh
		}
		if dt, ok := e.retype[ti.Name]; ok {
			s.DType = dt
		}
		specs = append(specs, s)
	}
	specs = append(specs, e.add...)
	w, err := formats.NewWriter(dst, specs, formats.WriterOptions{Metadata: map[string]string{"format": "pt"}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	for _, s := range specs {
		n := int64(1)
		for _, d := range s.Shape {
			n *= d
		}
		_, resized := e.resize[s.Name]
		ti, inSrc := ck.Tensor(s.Name)
		var data []byte
		switch {
		case !inSrc || resized:
			data = make([]byte, n*int64(s.DType.Size()))
			for i := range data {
				data[i] = byte(i*7 + 1) // the values do not matter: inspect reads headers only
			}
		case s.DType != ti.DType:
			vals, err := ck.Float32(s.Name)
			if err != nil {
				t.Fatal(err)
			}
			data = make([]byte, n*int64(s.DType.Size()))
			if err := formats.EncodeFloat32(s.DType, vals, data); err != nil {
				t.Fatal(err)
			}
		default:
			if data, err = ck.Raw(s.Name); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.WriteBytes(s.Name, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return dst
}

func inspectBad(t *testing.T, dir string) *Report {
	t.Helper()
	r, err := Dir(dir)
	if err != nil {
		t.Fatalf("Dir(%s): %v", dir, err)
	}
	if len(r.Problems) == 0 {
		t.Fatalf("%s: no problems found", dir)
	}
	return r
}

func TestMissingTensor(t *testing.T) {
	name := "language_model.model.layers.3.mlp.fc2.bias"
	r := inspectBad(t, rewrite(t, fixtures[0].dir, edit{drop: map[string]bool{name: true}}))
	ps := problemsOf(r, KindMissing)
	if len(ps) != 1 || ps[0].Tensor != name || ps[0].Severity != Error || ps[0].Layer == nil || *ps[0].Layer != 3 ||
		!strings.Contains(ps[0].Message, "[2560]") && !strings.Contains(ps[0].Message, "[80]") {
		t.Errorf("problems %+v", r.Problems)
	}
	if len(r.Problems) != 1 {
		t.Errorf("one deleted tensor gave %d problems: %+v", len(r.Problems), r.Problems)
	}
}

func TestWrongShape(t *testing.T) {
	name := "language_model.model.layers.6.mlp.fc1.weight" // [256, 80] stored as [80, 256]
	r := inspectBad(t, rewrite(t, fixtures[0].dir, edit{reshape: map[string][]int64{name: {80, 256}}}))
	ps := problemsOf(r, KindShape)
	if len(ps) != 1 || ps[0].Tensor != name || !strings.Contains(ps[0].Message, "[80 256]") || !strings.Contains(ps[0].Message, "[256 80]") ||
		ps[0].File != "model.safetensors" {
		t.Errorf("problems %+v", r.Problems)
	}
}

func TestUnexpectedTensors(t *testing.T) {
	add := []formats.TensorSpec{
		{Name: "language_model.model.layers.8.input_layernorm.weight", DType: formats.F16, Shape: []int64{64}},
		{Name: "language_model.lm_head.weight", DType: formats.F16, Shape: []int64{1024, 64}},
		{Name: "stray.weight", DType: formats.F16, Shape: []int64{3}},
	}
	r := inspectBad(t, rewrite(t, fixtures[1].dir, edit{add: add}))
	ps := problemsOf(r, KindUnexpected)
	if len(ps) != 3 || len(r.Problems) != 3 {
		t.Fatalf("problems %+v", r.Problems)
	}
	msgs := map[string]string{}
	for _, p := range ps {
		msgs[p.Tensor] = p.Message
	}
	if !strings.Contains(msgs[add[0].Name], "decoder layer 8, but config.json has 8 layers") ||
		!strings.Contains(msgs[add[1].Name], "tie_word_embeddings") || msgs[add[2].Name] == "" {
		t.Errorf("messages %v", msgs)
	}
	if c := componentOf(r, "other"); c.Tensors != 1 || c.Params != 3 {
		t.Errorf("other component %+v", c)
	}
}

func TestMixedDTypes(t *testing.T) {
	name := "language_model.model.layers.2.self_attn.k_proj.weight"
	r := inspectBad(t, rewrite(t, fixtures[0].dir, edit{retype: map[string]formats.DType{name: formats.F32}}))
	ps := problemsOf(r, KindMixedDType)
	if len(ps) != 1 || ps[0].Tensor != name || ps[0].Severity != Warning || !strings.Contains(ps[0].Message, "F32 in a layer of BF16") {
		t.Errorf("problems %+v", r.Problems)
	}
	if r.Errors() != 0 || len(r.DTypes) != 2 || r.DTypes[0].DType != "BF16" || r.DTypes[1].DType != "F32" || r.DTypes[1].Tensors != 1 {
		t.Errorf("errors %d, dtypes %+v", r.Errors(), r.DTypes)
	}
	if got := r.Layers[2].DTypes; !reflect.DeepEqual(got, []string{"BF16", "F32"}) {
		t.Errorf("layer 2 dtypes %v", got)
	}
}

func readMamba(t *testing.T, dir string) *formats.MambaConfig {
	t.Helper()
	m, ok, err := formats.ReadMambaConfig(dir)
	if err != nil || !ok {
		t.Fatalf("mamba_config.json: %v %v", ok, err)
	}
	return m
}

func writeMamba(t *testing.T, dir string, m *formats.MambaConfig) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, formats.MambaConfigName), m.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInconsistentMambaConfig(t *testing.T) {
	hybrid := convert(t, fixtures[2].dir, []int{0, 4}, false) // llama: d_inner 64, d_xb 32, 4 heads

	// Layer 0 listed as attention although it holds a mixer; layer 3 left
	// out of attn_layers although it is attention.
	m := readMamba(t, hybrid)
	m.AttnLayers = []int{0, 1, 2, 5, 6, 7}
	writeMamba(t, hybrid, m)
	r := inspectBad(t, hybrid)
	ps := problemsOf(r, KindMambaConfig)
	if len(ps) != 2 || *ps[0].Layer != 0 || !strings.Contains(ps[0].Message, "listed in attn_layers but holds Mamba tensors") ||
		*ps[1].Layer != 3 || !strings.Contains(ps[1].Message, "holds attention tensors") || len(r.Problems) != 2 {
		t.Errorf("problems %+v", r.Problems)
	}

	// Sizes that disagree with config.json and with in_proj.
	m = readMamba(t, hybrid)
	m.AttnLayers = []int{1, 2, 3, 5, 6, 7}
	m.DXB = 64
	writeMamba(t, hybrid, m)
	r = inspectBad(t, hybrid)
	var rows, dxb int
	for _, p := range problemsOf(r, KindMambaConfig) {
		switch {
		case strings.Contains(p.Message, "in_proj has 196 rows") && strings.Contains(p.Message, "= 260"):
			rows++
			if p.Tensor != "language_model.model.layers.0.mamba.in_proj.weight" && p.Tensor != "language_model.model.layers.4.mamba.in_proj.weight" {
				t.Errorf("in_proj problem names %q", p.Tensor)
			}
		case strings.Contains(p.Message, "d_xb 64"):
			dxb++
		}
	}
	if rows != 2 || dxb != 1 || len(r.Problems) != 3 {
		t.Errorf("problems %+v", r.Problems)
	}

	// No mamba_config.json at all.
	if err := os.Remove(filepath.Join(hybrid, formats.MambaConfigName)); err != nil {
		t.Fatal(err)
	}
	r = inspectBad(t, hybrid)
	if ps := problemsOf(r, KindMambaConfig); len(ps) != 1 || !strings.Contains(ps[0].Message, "layers 0,4 hold Mamba tensors but there is no mamba_config.json") {
		t.Errorf("problems %+v", r.Problems)
	}
	if !r.Hybrid || r.MambaConfig {
		t.Errorf("hybrid %v mamba_config %v", r.Hybrid, r.MambaConfig)
	}

	// Unparsable mamba_config.json.
	if err := os.WriteFile(filepath.Join(hybrid, formats.MambaConfigName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = inspectBad(t, hybrid)
	if ps := problemsOf(r, KindMambaConfig); len(ps) != 1 || ps[0].File != formats.MambaConfigName {
		t.Errorf("problems %+v", r.Problems)
	}
}

func TestInProjRows(t *testing.T) {
	hybrid := convert(t, fixtures[2].dir, []int{4}, false)
	name := "language_model.model.layers.4.mamba.in_proj.weight"
	r := inspectBad(t, rewrite(t, hybrid, edit{resize: map[string][]int64{name: {197, 64}}}))
	var internal, config, shape int
	for _, p := range r.Problems {
		if p.Tensor != name {
			t.Errorf("problem names %q: %+v", p.Tensor, p)
		}
		switch {
		case p.Kind == KindShape && strings.Contains(p.Message, "other tensors give 2·d_inner + 2·d_xb + nheads = 2·64 + 2·32 + 4 = 196"):
			internal++
		case p.Kind == KindShape && strings.Contains(p.Message, "shape [197 64], but the config asks for [196 64]"):
			shape++
		case p.Kind == KindMambaConfig && strings.Contains(p.Message, "in_proj has 197 rows"):
			config++
		}
	}
	if internal != 1 || shape != 1 || config != 1 || len(r.Problems) != 3 {
		t.Errorf("problems %+v", r.Problems)
	}
}

func TestBothMixers(t *testing.T) {
	hybrid := convert(t, fixtures[1].dir, []int{4}, false)
	add := []formats.TensorSpec{{Name: "language_model.model.layers.4.self_attn.o_proj.weight", DType: formats.F16, Shape: []int64{64, 64}}}
	r := inspectBad(t, rewrite(t, hybrid, edit{add: add}))
	if r.Layers[4].Mixer != "both" {
		t.Errorf("layer 4 mixer %s", r.Layers[4].Mixer)
	}
	if ps := problemsOf(r, KindLayerMixer); len(ps) != 1 || *ps[0].Layer != 4 {
		t.Errorf("problems %+v", r.Problems)
	}
	if ps := problemsOf(r, KindMambaConfig); len(ps) != 0 {
		t.Errorf("mamba_config problems %+v", ps)
	}
}

// writeLegacy makes a checkpoint in the bczhou/TinyLLaVA-3.1B layout.
func writeLegacy(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "legacy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := `{"model_type": "tiny_llava_phi", "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu", "hidden_size": 8}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	specs := []formats.TensorSpec{
		{Name: "model.embed_tokens.weight", DType: formats.F32, Shape: []int64{16, 8}},
		{Name: "model.layers.0.self_attn.q_proj.weight", DType: formats.F32, Shape: []int64{8, 8}},
		{Name: "model.mm_projector.0.weight", DType: formats.F32, Shape: []int64{8, 4}},
		{Name: "model.vision_tower.vision_tower.vision_model.post_layernorm.weight", DType: formats.F32, Shape: []int64{4}},
		{Name: "lm_head.weight", DType: formats.F32, Shape: []int64{16, 8}},
	}
	w, err := formats.NewWriter(dir, specs, formats.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		n := int64(4)
		for _, d := range s.Shape {
			n *= d
		}
		if err := w.WriteBytes(s.Name, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLegacy(t *testing.T) {
	r := inspectBad(t, writeLegacy(t))
	ps := problemsOf(r, KindLegacy)
	if r.Layout != "legacy" || len(ps) != 1 || !strings.Contains(ps[0].Message, "re-export the model with TinyLLaVA_Factory") || len(r.Problems) != 1 {
		t.Errorf("layout %q problems %+v", r.Layout, r.Problems)
	}
	want := map[string]int64{"vision_tower": 4, "connector": 32, "llm": 128 + 64, "lm_head": 128}
	for c, n := range want {
		if got := componentOf(r, c).Params; got != n {
			t.Errorf("legacy %s: %d params, want %d", c, got, n)
		}
	}
	if r.Text != nil || len(r.Layers) != 0 {
		t.Errorf("legacy sizes %+v layers %+v", r.Text, r.Layers)
	}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "legacy bczhou/TinyLLaVA") {
		t.Errorf("text:\n%s", b.String())
	}
}

// Legacy tensor names under a TinyLLaVA_Factory config.json are legacy too.
func TestLegacyTensorsFactoryConfig(t *testing.T) {
	dir := writeLegacy(t)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(mustRead(t, filepath.Join(fixtures[0].dir, "config.json"))), 0o644); err != nil {
		t.Fatal(err)
	}
	r := inspectBad(t, dir)
	if r.Layout != "legacy" || len(r.Problems) != 1 || r.Problems[0].Kind != KindLegacy || r.Family != "" {
		t.Errorf("layout %q family %q problems %+v", r.Layout, r.Family, r.Problems)
	}
}

func TestConfigProblems(t *testing.T) {
	dir := rewrite(t, fixtures[2].dir, edit{})
	cfg := strings.Replace(mustRead(t, filepath.Join(dir, "config.json")), "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "stabilityai/stablelm-2-1_6b", 1)
	cfg = strings.Replace(cfg, `"model_type": "llama"`, `"model_type": "stablelm"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := inspectBad(t, dir)
	if ps := problemsOf(r, KindConfig); len(ps) != 1 || !strings.Contains(ps[0].Message, "stablelm") || len(r.Problems) != 1 {
		t.Errorf("problems %+v", r.Problems)
	}
	// The tensors are still counted and the layers still listed.
	if r.TotalParams == 0 || len(r.Layers) != 8 || r.Family != "" {
		t.Errorf("total %d, layers %d, family %q", r.TotalParams, len(r.Layers), r.Family)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestNoCheckpoint(t *testing.T) {
	dir := t.TempDir()
	if _, err := Dir(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("empty directory: err %v", err)
	}
	if _, err := Dir(filepath.Join(dir, "absent")); err == nil {
		t.Error("absent directory accepted")
	}
	// A truncated shard is an error naming the file.
	src := rewrite(t, fixtures[2].dir, edit{})
	p := filepath.Join(src, "model.safetensors")
	if err := os.Truncate(p, 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := Dir(src); err == nil || !strings.Contains(err.Error(), "model.safetensors") {
		t.Errorf("truncated shard: err %v", err)
	}
}

func TestJSON(t *testing.T) {
	r := inspectBad(t, rewrite(t, convert(t, fixtures[0].dir, []int{0}, false), edit{drop: map[string]bool{"connector._connector.2.bias": true}}))
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, r) {
		t.Errorf("JSON round trip differs:\n%s", data)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"family", "total_params", "components", "dtypes", "files", "layers", "problems", "mamba_layers", "text", "vision"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	if vis := doc["vision"].(map[string]any); vis["num_patches"] != 16.0 || vis["hidden_size"] != 32.0 {
		t.Errorf("vision JSON %v", vis)
	}
}

func TestWriteText(t *testing.T) {
	hybrid := convert(t, fixtures[1].dir, []int{0, 4}, false)
	r := inspectBad(t, rewrite(t, hybrid, edit{drop: map[string]bool{"language_model.model.layers.2.mlp.up_proj.weight": true}}))
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, want := range []string{
		"family      qwen2 (Qwen/Qwen2-0.5B)",
		"text        hidden 64, 8 layers, 4 heads, 2 KV heads, head_dim 16, intermediate 160, vocab 1024, tied head",
		"TinyLLaVA_Factory hybrid: 2 of 8 decoder layers are Mamba-2 (mamba_config.json): 0,4",
		"lm_head             0        tied       -  shares language_model.model.embed_tokens.weight",
		"problems: 1 error, 0 warnings",
		"  error  language_model.model.layers.2.mlp.up_proj.weight  missing: the config asks for [160 64]",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	// Right-aligned columns end at the same place on every row of a table.
	lines := strings.Split(text, "\n")
	var layerRows []string
	for _, l := range lines {
		if strings.Contains(l, "  attention  ") || strings.Contains(l, "  mamba  ") {
			layerRows = append(layerRows, l)
		}
	}
	if len(layerRows) != 8 {
		t.Fatalf("%d layer rows:\n%s", len(layerRows), text)
	}
	paramEnd := func(l string) int { return strings.Index(l, "F16") }
	for _, l := range layerRows {
		if paramEnd(l) != paramEnd(layerRows[0]) {
			t.Errorf("misaligned layer row %q", l)
		}
		if strings.HasSuffix(l, " ") {
			t.Errorf("trailing space in %q", l)
		}
	}
	if strings.Contains(text, "\x1b") {
		t.Error("colour codes in plain text")
	}
}

func TestTextProblemCap(t *testing.T) {
	ck, err := formats.Open(fixtures[0].dir)
	if err != nil {
		t.Fatal(err)
	}
	drop := map[string]bool{}
	for _, ti := range ck.Tensors() {
		if strings.Contains(ti.Name, ".layers.") && strings.HasPrefix(ti.Name, "language_model.") {
			drop[ti.Name] = true
		}
	}
	ck.Close()
	r := inspectBad(t, rewrite(t, fixtures[0].dir, edit{drop: drop}))
	if len(r.Problems) != len(drop) {
		t.Errorf("%d problems for %d dropped tensors", len(r.Problems), len(drop))
	}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("… and %d more", len(drop)-MaxTextProblems); !strings.Contains(b.String(), want) || strings.Count(b.String(), "  error  ") != MaxTextProblems {
		t.Errorf("no cap line:\n%s", b.String())
	}
}

func TestFormatting(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 3217417280: "3,217,417,280", -1234: "-1,234"} {
		if got := group(n); got != want {
			t.Errorf("group(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{512: "512 B", 1500: "1.5 kB", 6_434_834_560: "6.43 GB", 2_500_000: "2.50 MB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	if got := shortCount(3_217_417_280); got != "3.22 B" {
		t.Errorf("shortCount = %q", got)
	}
}

// ---------------------------------------------------------------------------
// A full-size checkpoint made of headers and holes (sparse files), to time
// inspect on 6 GB without writing 6 GB.
// ---------------------------------------------------------------------------

func sparseFullPhi(tb testing.TB) string {
	tb.Helper()
	a, _, specs, err := synth.Plan(synth.Options{Family: formats.Phi, Preset: synth.Full})
	if err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join(tb.TempDir(), "phi-full-sparse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	cfg, err := a.ConfigJSON(formats.BF16)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		tb.Fatal(err)
	}
	// Shards cut as save_pretrained cuts them at 5 GB.
	var shards [][]formats.TensorSpec
	var cur []formats.TensorSpec
	var size int64
	bytesOf := func(s formats.TensorSpec) int64 {
		n := int64(2)
		for _, d := range s.Shape {
			n *= d
		}
		return n
	}
	for _, s := range specs {
		if len(cur) > 0 && size+bytesOf(s) > synth.DefaultShardSize {
			shards = append(shards, cur)
			cur, size = nil, 0
		}
		cur = append(cur, s)
		size += bytesOf(s)
	}
	shards = append(shards, cur)
	weightMap := map[string]string{}
	var total int64
	for k, sh := range shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, len(shards))
		header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
		var off int64
		for _, s := range sh {
			header[s.Name] = map[string]any{"dtype": "BF16", "shape": s.Shape, "data_offsets": []int64{off, off + bytesOf(s)}}
			off += bytesOf(s)
			weightMap[s.Name] = name
		}
		total += off
		h, err := json.Marshal(header)
		if err != nil {
			tb.Fatal(err)
		}
		for len(h)%8 != 0 {
			h = append(h, ' ')
		}
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			tb.Fatal(err)
		}
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
		if _, err := f.Write(append(n[:], h...)); err != nil {
			tb.Fatal(err)
		}
		if err := f.Truncate(int64(8+len(h)) + off); err != nil {
			tb.Fatal(err)
		}
		f.Close()
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(dir, formats.IndexFileName), idx, 0o644); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func TestSparseFullPhi(t *testing.T) {
	dir := sparseFullPhi(t)
	r := inspectOK(t, dir)
	cfg, err := formats.ReadModelConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, r, formula(cfg))
	if r.TotalBytes != 2*r.TotalParams || len(r.Files) != 4 || r.Files[0].Name != "model-00001-of-00002.safetensors" {
		t.Errorf("bytes %d files %+v", r.TotalBytes, r.Files)
	}
}

// BenchmarkDirFullPhi inspects a 6.4 GB (sparse) full-phi checkpoint:
// headers and configs only.
func BenchmarkDirFullPhi(b *testing.B) {
	dir := sparseFullPhi(b)
	for b.Loop() {
		if _, err := Dir(dir); err != nil {
			b.Fatal(err)
		}
	}
}
