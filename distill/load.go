package distill

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/layout"
)

// loader reads tensors from a checkpoint into host memory, checking their
// shapes: frozen matrices as stored (BF16 stays BF16 unless f32), trainable
// tensors as float32 master copies.
type loader struct {
	ck  *formats.Checkpoint
	f32 bool
}

func (ld *loader) info(name string, shape ...int) (formats.TensorInfo, error) {
	return ld.ck.FloatTensor(name, shape...)
}

func (ld *loader) has(name string) bool {
	_, ok := ld.ck.Tensor(name)
	return ok
}

// host reads a tensor of the given shape as float32.
func (ld *loader) host(name string, shape ...int) ([]float32, error) {
	return ld.ck.Float32Shaped(name, shape...)
}

// optHost is host for an optional tensor: nil when absent.
func (ld *loader) optHost(name string, shape ...int) ([]float32, error) {
	if !ld.has(name) {
		return nil, nil
	}
	return ld.host(name, shape...)
}

// matrix reads the row-wise concatenation of names (each [rows[i], cols])
// as one frozen [Σrows, cols] matrix, BF16 when every part is stored as
// BF16 and float32 weights were not asked for.
func (ld *loader) matrix(names []string, rows []int, cols int) (matrix, error) {
	bits, data, err := ld.ck.StackRows(names, rows, cols, !ld.f32)
	if err != nil {
		return matrix{}, err
	}
	total := 0
	for _, r := range rows {
		total += r
	}
	return matrix{rows: total, cols: cols, bf16: bits, f32: data}, nil
}

// fusedBias concatenates the optional biases of a fused matrix's parts:
// nil when none is present, zeros for the parts without one.
func (ld *loader) fusedBias(names []string, rows []int) ([]float32, error) {
	return ld.ck.StackOptionalVectors(names, rows)
}

// linear reads the frozen Linear stem.weight [out, in] and its bias when
// present.
func (ld *loader) linear(stem string, out, in int) (linear, error) {
	return ld.fusedLinear([]string{stem}, []int{out}, in)
}

// fusedLinear reads frozen Linears sharing their input as one: weights
// stacked by rows, biases concatenated.
func (ld *loader) fusedLinear(stems []string, outs []int, in int) (linear, error) {
	ws := make([]string, len(stems))
	bs := make([]string, len(stems))
	for i, s := range stems {
		ws[i], bs[i] = s+".weight", s+".bias"
	}
	w, err := ld.matrix(ws, outs, in)
	if err != nil {
		return linear{}, err
	}
	b, err := ld.fusedBias(bs, outs)
	if err != nil {
		return linear{}, err
	}
	return linear{w: w, b: b}, nil
}

// norm reads stem.weight (+ stem.bias when withBias) [n].
func (ld *loader) norm(stem string, n int, withBias, rms bool, eps float64) (norm, error) {
	w, err := ld.host(stem+".weight", n)
	if err != nil {
		return norm{}, err
	}
	nm := norm{w: w, rms: rms, eps: eps}
	if withBias {
		if nm.b, err = ld.host(stem+".bias", n); err != nil {
			return norm{}, err
		}
	}
	return nm, nil
}

// param reads a trainable tensor as a float32 master copy with a gradient
// buffer.
func (ld *loader) param(name string, shape ...int) (*Param, error) {
	v, err := ld.host(name, shape...)
	if err != nil {
		return nil, err
	}
	return newParam(name, v, shape...)
}

// optParam is param for an optional tensor: nil when absent.
func (ld *loader) optParam(name string, shape ...int) (*Param, error) {
	if !ld.has(name) {
		return nil, nil
	}
	return ld.param(name, shape...)
}

// textSizesOf checks the decoder config and derives its sizes.
func textSizesOf(cfg *formats.ModelConfig) (textSizes, error) {
	t := cfg.Text
	s := textSizes{d: t.HiddenSize, heads: t.NumHeads, kvHeads: t.NumKVHeads, headDim: t.HeadDim, inter: t.IntermediateSize,
		vocab: t.VocabSize, rotary: t.RotaryDim(), theta: t.RopeTheta, eps: t.NormEps}
	if cfg.VocabSize != 0 && cfg.VocabSize != t.VocabSize {
		return s, fmt.Errorf("config.json: vocab_size %d disagrees with text_config.vocab_size %d", cfg.VocabSize, t.VocabSize)
	}
	switch cfg.Family {
	case formats.Phi:
		s.parallel = true
	case formats.Qwen2, formats.Llama:
		s.gated, s.rms = true, true
	default:
		return s, fmt.Errorf("model family %q is not supported (phi, qwen2, llama)", cfg.Family)
	}
	if s.gated {
		if t.HiddenAct != "silu" && t.HiddenAct != "swish" {
			return s, fmt.Errorf("text_config.hidden_act %q: the %s MLP runs with silu only", t.HiddenAct, cfg.Family)
		}
	} else {
		var err error
		if s.act, err = geluKindOf(t.HiddenAct); err != nil {
			return s, fmt.Errorf("text_config.hidden_act: %w", err)
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"hidden_size", s.d}, {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kvHeads},
		{"head_dim", s.headDim}, {"intermediate_size", s.inter}, {"vocab_size", s.vocab}} {
		if f.v <= 0 {
			return s, fmt.Errorf("text_config.%s = %d, want > 0", f.name, f.v)
		}
	}
	if s.heads%s.kvHeads != 0 {
		return s, fmt.Errorf("text_config: %d attention heads is not a multiple of %d key/value heads", s.heads, s.kvHeads)
	}
	if s.rotary <= 0 || s.rotary%2 != 0 || s.rotary > s.headDim {
		return s, fmt.Errorf("text_config: rotary dim %d (head_dim %d × partial_rotary_factor %g) must be even and in (0, head_dim]",
			s.rotary, s.headDim, t.PartialRotaryFactor)
	}
	if !(s.theta > 0) || math.IsInf(s.theta, 0) {
		return s, fmt.Errorf("text_config: rope_theta %g must be a positive number", s.theta)
	}
	if !(s.eps > 0) {
		return s, fmt.Errorf("text_config: norm epsilon %g must be positive", s.eps)
	}
	return s, nil
}

// geluKindOf maps an HF activation name to its GELU form.
func geluKindOf(act string) (geluKind, error) {
	switch act {
	case "gelu_new", "gelu_pytorch_tanh", "gelu_fast":
		return geluTanh, nil
	case "gelu":
		return geluErf, nil
	}
	return 0, fmt.Errorf("activation %q is not supported (gelu, gelu_new, gelu_pytorch_tanh)", act)
}

// mixerNormEps is the epsilon of the mixer's gated RMSNorm (Mamba-2's
// RMSNormGated default; mamba_config.json does not store it).
const mixerNormEps = 1e-5

// load reads every weight of the student.
func (s *Student) load(ld *loader) error {
	cfg := s.Config
	desc, err := layout.For(cfg.Family)
	if err != nil {
		return err
	}
	if cfg.ConnectorType != "" && cfg.ConnectorType != "mlp2x_gelu" {
		return fmt.Errorf("connector_type %q is not supported (mlp2x_gelu)", cfg.ConnectorType)
	}
	if s.vision, err = loadVision(ld, cfg); err != nil {
		return err
	}
	d, vd := s.sizes.d, cfg.Vision.HiddenSize
	for i, c := range []struct {
		lin *trainableLinear
		in  int
	}{{&s.conn.fc1, vd}, {&s.conn.fc2, d}} {
		stem := fmt.Sprintf("%s%d", layout.ConnectorPrefix, 2*i)
		if c.lin.w, err = ld.param(stem+".weight", d, c.in); err != nil {
			return err
		}
		if c.lin.b, err = ld.optParam(stem+".bias", d); err != nil {
			return err
		}
	}
	s.conn.trainable = !s.opts.FreezeConnector
	if s.embed, err = ld.matrix([]string{desc.ModelTensor(layout.Embed, "weight")}, []int{s.sizes.vocab}, d); err != nil {
		return err
	}
	isMamba, err := s.mambaLayerSet()
	if err != nil {
		return err
	}
	for l := range cfg.Text.NumLayers {
		layer, err := s.loadLayer(ld, desc, l, isMamba[l])
		if err != nil {
			return fmt.Errorf("layer %d: %w", l, err)
		}
		s.layers = append(s.layers, layer)
	}
	if s.final, err = ld.norm(desc.Model[layout.FinalNorm], d, !s.sizes.rms, s.sizes.rms, s.sizes.eps); err != nil {
		return err
	}
	headStem := desc.Model[layout.LMHead]
	switch {
	case ld.has(headStem + ".weight"):
		if s.head, err = ld.linear(headStem, s.sizes.vocab, d); err != nil {
			return err
		}
	case cfg.Text.TieWordEmbeddings || desc.TiedHeadAllowed:
		s.head = linear{w: s.embed}
	default:
		return fmt.Errorf("tensor %s.weight is missing and text_config.tie_word_embeddings is false", headStem)
	}
	return nil
}

// mambaLayerSet checks mamba_config.json against config.json and returns
// which layers are Mamba layers.
func (s *Student) mambaLayerSet() ([]bool, error) {
	n := s.Config.Text.NumLayers
	h := s.Hybrid
	if h.NLayer != n {
		return nil, fmt.Errorf("%s: n_layer %d, config.json has %d layers", formats.MambaConfigName, h.NLayer, n)
	}
	if h.DModel != s.sizes.d {
		return nil, fmt.Errorf("%s: d_model %d, config.json has hidden_size %d", formats.MambaConfigName, h.DModel, s.sizes.d)
	}
	set := make([]bool, n)
	for _, l := range h.MambaLayers() {
		set[l] = true
	}
	return set, nil
}

func (s *Student) loadLayer(ld *loader, desc *layout.Descriptor, l int, isMamba bool) (*decoderLayer, error) {
	z := s.sizes
	stem := func(p layout.Part) string { return fmt.Sprintf("%s%d.%s", layout.LayerPrefix, l, desc.Layer[p]) }
	layer := &decoderLayer{index: l}
	var err error
	if layer.inNorm, err = ld.norm(stem(layout.InputNorm), z.d, !z.rms, z.rms, z.eps); err != nil {
		return nil, err
	}
	if !z.parallel {
		if layer.postNorm, err = ld.norm(stem(layout.PostNorm), z.d, false, true, z.eps); err != nil {
			return nil, err
		}
	}
	if isMamba {
		if layer.mixer, err = s.loadMixer(ld, l); err != nil {
			return nil, err
		}
	} else {
		if layer.qkv, err = ld.fusedLinear([]string{stem(layout.AttnQ), stem(layout.AttnK), stem(layout.AttnV)},
			[]int{z.dq(), z.dkv(), z.dkv()}, z.d); err != nil {
			return nil, err
		}
		if layer.o, err = ld.linear(stem(layout.AttnO), z.d, z.dq()); err != nil {
			return nil, err
		}
	}
	if z.gated {
		if layer.up, err = ld.fusedLinear([]string{stem(layout.MLPGate), stem(layout.MLPUp)}, []int{z.inter, z.inter}, z.d); err != nil {
			return nil, err
		}
	} else if layer.up, err = ld.linear(stem(layout.MLPUp), z.inter, z.d); err != nil {
		return nil, err
	}
	if layer.down, err = ld.linear(stem(layout.MLPDown), z.d, z.inter); err != nil {
		return nil, err
	}
	return layer, nil
}

// mixerConfig is the Mamba-2 mixer's sizes from mamba_config.json (SPEC §3:
// headdim = d_state, nheads = d_inner/headdim), its conv kernel from the
// checkpoint.
func (s *Student) mixerConfig(convKernel int) (kernels.Mamba2Config, error) {
	h := s.Hybrid
	if h.DState <= 0 || h.DInner <= 0 || h.DInner%h.DState != 0 {
		return kernels.Mamba2Config{}, fmt.Errorf("%s: d_inner %d is not a positive multiple of d_state %d", formats.MambaConfigName, h.DInner, h.DState)
	}
	c := kernels.Mamba2Config{DModel: h.DModel, NHeads: h.DInner / h.DState, HeadDim: h.DState, DState: h.DState,
		NGroups: h.NGroups, DXB: h.DXB, ConvKernel: convKernel, NormEps: mixerNormEps, Chunk: s.opts.Chunk}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", formats.MambaConfigName, err)
	}
	return c, nil
}

func (s *Student) loadMixer(ld *loader, l int) (*mixer, error) {
	p := layout.MambaPrefix(l)
	ti, ok := ld.ck.Tensor(p + initmap.Conv1dW)
	if !ok {
		return nil, fmt.Errorf("tensor %s is missing (a Mamba layer by %s)", p+initmap.Conv1dW, formats.MambaConfigName)
	}
	if len(ti.Shape) != 3 || ti.Shape[1] != 1 || ti.Shape[2] <= 0 || ti.Shape[2] > 64 {
		return nil, fmt.Errorf("tensor %s has shape %v, want [conv_dim, 1, kernel]", ti.Name, ti.Shape)
	}
	cfg, err := s.mixerConfig(int(ti.Shape[2]))
	if err != nil {
		return nil, err
	}
	H, dInner, convDim := cfg.NHeads, cfg.DInner(), cfg.ConvDim()
	m := &mixer{cfg: cfg, eps: mixerNormEps, chunk: s.opts.Chunk}
	for _, t := range []struct {
		dst   **Param
		name  string
		opt   bool
		shape []int
	}{
		{&m.inProj.w, initmap.InProj, false, []int{cfg.DProj(), cfg.DModel}},
		{&m.inProj.b, initmap.InProjBias, true, []int{cfg.DProj()}},
		{&m.convW, initmap.Conv1dW, false, []int{convDim, 1, cfg.ConvKernel}},
		{&m.convB, initmap.Conv1dB, true, []int{convDim}},
		{&m.dtBias, initmap.DtBias, true, []int{H}},
		{&m.aLog, initmap.ALog, false, []int{H}},
		{&m.d, initmap.DSkip, true, []int{H}},
		{&m.normW, initmap.NormW, false, []int{dInner}},
		{&m.outProj.w, initmap.OutProj, false, []int{cfg.DModel, dInner}},
		{&m.outProj.b, initmap.OutProjB, true, []int{cfg.DModel}},
	} {
		var err error
		if t.opt {
			*t.dst, err = ld.optParam(p+t.name, t.shape...)
		} else {
			*t.dst, err = ld.param(p+t.name, t.shape...)
		}
		if err != nil {
			return nil, err
		}
	}
	for i, v := range m.aLog.Data {
		if a := -math.Exp(float64(v)); math.IsInf(a, 0) {
			return nil, fmt.Errorf("tensor %s: head %d: A = −exp(%g) is not finite", p+initmap.ALog, i, v)
		}
	}
	return m, nil
}

// params lists a mixer's tensors in the checkpoint's order (absent
// optional ones left out).
func (m *mixer) params() []*Param {
	var out []*Param
	for _, p := range []*Param{m.inProj.w, m.inProj.b, m.convW, m.convB, m.dtBias, m.aLog, m.d, m.normW, m.outProj.w, m.outProj.b} {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

func loadVision(ld *loader, cfg *formats.ModelConfig) (*visionTower, error) {
	vc := cfg.Vision
	// A stride-patch conv without padding: 384 px in patches of 14 is a
	// 27×27 grid, the last 384 − 27·14 = 6 rows and columns unused.
	if err := vc.Validate(); err != nil {
		return nil, err
	}
	act, err := geluKindOf(vc.HiddenAct)
	if err != nil {
		return nil, fmt.Errorf("vision_config.hidden_act: %w", err)
	}
	idx, err := cfg.VisionFeatureIndex()
	if err != nil {
		return nil, err
	}
	v := &visionTower{cfg: vc, headDim: vc.HiddenSize / vc.NumHeads, act: act, eps: vc.LayerNormEps}
	switch cfg.VisionFeatureSelectStrategy {
	case "patch", "":
		v.dropFirst = true
	case "cls_patch":
	default:
		return nil, fmt.Errorf("vision_feature_select_strategy %q is not supported (patch, cls_patch)", cfg.VisionFeatureSelectStrategy)
	}
	if v.featureRows() <= 0 {
		return nil, fmt.Errorf("vision_config: %d patches leave no image rows", vc.NumPatches())
	}
	vp := layout.VisionPrefix + "vision_model."
	d, cpp := vc.HiddenSize, vc.NumChannels*vc.PatchSize*vc.PatchSize
	pw, err := ld.host(vp+"embeddings.patch_embedding.weight", d, vc.NumChannels, vc.PatchSize, vc.PatchSize)
	if err != nil {
		return nil, err
	}
	v.patch.w = matrix{rows: d, cols: cpp, f32: pw}
	if v.patch.b, err = ld.host(vp+"embeddings.patch_embedding.bias", d); err != nil {
		return nil, err
	}
	if v.pos, err = ld.host(vp+"embeddings.position_embedding.weight", vc.NumPatches(), d); err != nil {
		return nil, err
	}
	for i := range idx {
		lp := fmt.Sprintf("%sencoder.layers.%d.", vp, i)
		var l visionLayer
		if l.ln1, err = ld.norm(lp+"layer_norm1", d, true, false, v.eps); err != nil {
			return nil, err
		}
		if l.ln2, err = ld.norm(lp+"layer_norm2", d, true, false, v.eps); err != nil {
			return nil, err
		}
		a := lp + "self_attn."
		if l.qkv, err = ld.fusedLinear([]string{a + "q_proj", a + "k_proj", a + "v_proj"}, []int{d, d, d}, d); err != nil {
			return nil, err
		}
		if l.o, err = ld.linear(a+"out_proj", d, d); err != nil {
			return nil, err
		}
		if l.fc1, err = ld.linear(lp+"mlp.fc1", vc.IntermediateSize, d); err != nil {
			return nil, err
		}
		if l.fc2, err = ld.linear(lp+"mlp.fc2", d, vc.IntermediateSize); err != nil {
			return nil, err
		}
		v.layers = append(v.layers, l)
	}
	return v, nil
}
