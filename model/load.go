package model

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/layout"
)

// loader reads tensors from a checkpoint, checks their shapes and uploads
// them; every uploaded tensor is appended to owned.
type loader struct {
	ck    *formats.Checkpoint
	be    kernels.Backend
	f32   bool
	owned *[]kernels.Tensor
}

// info returns a tensor's header after checking its shape and dtype.
func (ld *loader) info(name string, shape ...int) (formats.TensorInfo, error) {
	return ld.ck.FloatTensor(name, shape...)
}

// has reports whether the checkpoint holds name.
func (ld *loader) has(name string) bool {
	_, ok := ld.ck.Tensor(name)
	return ok
}

// host reads a tensor of the given shape as float32.
func (ld *loader) host(name string, shape ...int) ([]float32, error) {
	return ld.ck.Float32Shaped(name, shape...)
}

// upload uploads host data as an F32 tensor.
func (ld *loader) upload(what string, host []float32, shape ...int) (kernels.Tensor, error) {
	t, err := ld.be.Upload(host, kernels.F32, shape...)
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", what, err)
	}
	*ld.owned = append(*ld.owned, t)
	return t, nil
}

// vector uploads a float32 weight of the given shape (norm weights, biases).
func (ld *loader) vector(name string, shape ...int) (kernels.Tensor, error) {
	v, err := ld.host(name, shape...)
	if err != nil {
		return nil, err
	}
	return ld.upload(name, v, shape...)
}

// optVector is vector for an optional tensor: nil when absent.
func (ld *loader) optVector(name string, shape ...int) (kernels.Tensor, error) {
	if !ld.has(name) {
		return nil, nil
	}
	return ld.vector(name, shape...)
}

// matrix uploads the row-wise concatenation of names (each [rows[i], cols])
// as one [Σrows, cols] matrix: BF16 when every part is stored as BF16 and
// float32 weights were not asked for, else F32.
func (ld *loader) matrix(names []string, rows []int, cols int) (kernels.Tensor, error) {
	total := 0
	for _, r := range rows {
		total += r
	}
	what := names[0]
	if len(names) > 1 {
		what = fmt.Sprintf("%s (+%d fused)", names[0], len(names)-1)
	}
	bits, data, err := ld.ck.StackRows(names, rows, cols, !ld.f32)
	if err != nil {
		return nil, err
	}
	if bits != nil {
		t, err := ld.be.UploadBF16(bits, total, cols)
		if err != nil {
			return nil, fmt.Errorf("upload %s: %w", what, err)
		}
		*ld.owned = append(*ld.owned, t)
		return t, nil
	}
	return ld.upload(what, data, total, cols)
}

// fusedBias concatenates optional biases of the parts of a fused matrix:
// nil when none is present, zeros for the parts without one.
func (ld *loader) fusedBias(names []string, rows []int) (kernels.Tensor, error) {
	data, err := ld.ck.StackOptionalVectors(names, rows)
	if err != nil || data == nil {
		return nil, err
	}
	what := names[0]
	if len(names) > 1 {
		what = fmt.Sprintf("%s (+%d fused)", names[0], len(names)-1)
	}
	return ld.upload(what, data, len(data))
}

// linear loads the Linear stem.weight [out, in] (+ stem.bias when present
// and bias is allowed).
func (ld *loader) linear(stem string, out, in int, bias bool) (linear, error) {
	w, err := ld.matrix([]string{stem + ".weight"}, []int{out}, in)
	if err != nil {
		return linear{}, err
	}
	l := linear{w: w, out: out}
	if bias {
		if l.b, err = ld.optVector(stem+".bias", out); err != nil {
			return linear{}, err
		}
	}
	return l, nil
}

// fusedLinear loads Linears sharing their input as one: weights stacked by
// rows, biases concatenated.
func (ld *loader) fusedLinear(stems []string, outs []int, in int) (linear, error) {
	ws := make([]string, len(stems))
	bs := make([]string, len(stems))
	total := 0
	for i, s := range stems {
		ws[i], bs[i] = s+".weight", s+".bias"
		total += outs[i]
	}
	w, err := ld.matrix(ws, outs, in)
	if err != nil {
		return linear{}, err
	}
	b, err := ld.fusedBias(bs, outs)
	if err != nil {
		return linear{}, err
	}
	return linear{w: w, b: b, out: total}, nil
}

// norm loads stem.weight (+ stem.bias when withBias) [n].
func (ld *loader) norm(stem string, n int, withBias, rms bool, eps float32) (norm, error) {
	w, err := ld.vector(stem+".weight", n)
	if err != nil {
		return norm{}, err
	}
	nm := norm{w: w, rms: rms, eps: eps}
	if withBias {
		if nm.b, err = ld.vector(stem+".bias", n); err != nil {
			return norm{}, err
		}
	}
	return nm, nil
}

// load reads every weight of the model.
func (m *Model) load(ld *loader) error {
	cfg := m.Config
	desc, err := layout.For(cfg.Family)
	if err != nil {
		return err
	}
	if cfg.ConnectorType != "" && cfg.ConnectorType != "mlp2x_gelu" {
		return fmt.Errorf("connector_type %q is not supported (mlp2x_gelu)", cfg.ConnectorType)
	}
	if m.vision, err = loadVision(ld, cfg); err != nil {
		return err
	}
	s := m.sizes
	vd := cfg.Vision.HiddenSize
	if m.conn.fc1, err = ld.linear(layout.ConnectorPrefix+"0", s.d, vd, true); err != nil {
		return err
	}
	if m.conn.fc2, err = ld.linear(layout.ConnectorPrefix+"2", s.d, s.d, true); err != nil {
		return err
	}
	if m.embed, err = ld.matrix([]string{desc.ModelTensor(layout.Embed, "weight")}, []int{s.vocab}, s.d); err != nil {
		return err
	}
	if m.rows.native == nil {
		// The backend cannot gather rows: keep the table on the host.
		if m.rows.table, err = ld.host(desc.ModelTensor(layout.Embed, "weight"), s.vocab, s.d); err != nil {
			return err
		}
	}

	mamba, err := m.mambaLayerSet()
	if err != nil {
		return err
	}
	for l := range cfg.Text.NumLayers {
		layer, err := m.loadLayer(ld, desc, l, mamba[l])
		if err != nil {
			return fmt.Errorf("layer %d: %w", l, err)
		}
		m.layers = append(m.layers, layer)
	}
	if m.final, err = ld.norm(desc.Model[layout.FinalNorm], s.d, !s.rms, s.rms, s.eps); err != nil {
		return err
	}
	headStem := desc.Model[layout.LMHead]
	switch {
	case ld.has(headStem + ".weight"):
		if m.head, err = ld.linear(headStem, s.vocab, s.d, true); err != nil {
			return err
		}
	case cfg.Text.TieWordEmbeddings || desc.TiedHeadAllowed:
		m.head = linear{w: m.embed, out: s.vocab}
	default:
		return fmt.Errorf("tensor %s.weight is missing and text_config.tie_word_embeddings is false", headStem)
	}
	return nil
}

// mambaLayerSet checks mamba_config.json against config.json and returns
// which layers are Mamba layers.
func (m *Model) mambaLayerSet() ([]bool, error) {
	n := m.Config.Text.NumLayers
	set := make([]bool, n)
	h := m.Hybrid
	if h == nil {
		return set, nil
	}
	if h.NLayer != n {
		return nil, fmt.Errorf("%s: n_layer %d, config.json has %d layers", formats.MambaConfigName, h.NLayer, n)
	}
	if h.DModel != m.sizes.d {
		return nil, fmt.Errorf("%s: d_model %d, config.json has hidden_size %d", formats.MambaConfigName, h.DModel, m.sizes.d)
	}
	for _, l := range h.MambaLayers() {
		set[l] = true
	}
	return set, nil
}

// mixerConfig is the Mamba-2 mixer's sizes from mamba_config.json (SPEC §3:
// headdim = d_state, nheads = d_inner/headdim), its conv kernel from the
// checkpoint.
func (m *Model) mixerConfig(convKernel int) (kernels.Mamba2Config, error) {
	h := m.Hybrid
	if h.DState <= 0 || h.DInner <= 0 || h.DInner%h.DState != 0 {
		return kernels.Mamba2Config{}, fmt.Errorf("%s: d_inner %d is not a positive multiple of d_state %d", formats.MambaConfigName, h.DInner, h.DState)
	}
	c := kernels.Mamba2Config{DModel: h.DModel, NHeads: h.DInner / h.DState, HeadDim: h.DState, DState: h.DState,
		NGroups: h.NGroups, DXB: h.DXB, ConvKernel: convKernel, NormEps: mixerNormEps, Chunk: m.opts.Chunk}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", formats.MambaConfigName, err)
	}
	return c, nil
}

// mixerNormEps is the epsilon of the mixer's gated RMSNorm (Mamba-2's
// RMSNormGated default; mamba_config.json does not store it).
const mixerNormEps = 1e-5

func (m *Model) loadLayer(ld *loader, desc *layout.Descriptor, l int, isMamba bool) (*decoderLayer, error) {
	s := m.sizes
	stem := func(p layout.Part) string { return fmt.Sprintf("%s%d.%s", layout.LayerPrefix, l, desc.Layer[p]) }
	layer := &decoderLayer{index: l}
	var err error
	if layer.inNorm, err = ld.norm(stem(layout.InputNorm), s.d, !s.rms, s.rms, s.eps); err != nil {
		return nil, err
	}
	if !s.parallel {
		if layer.postNorm, err = ld.norm(stem(layout.PostNorm), s.d, false, true, s.eps); err != nil {
			return nil, err
		}
	}
	if isMamba {
		if layer.mixer, err = m.loadMixer(ld, l); err != nil {
			return nil, err
		}
	} else {
		dq, dkv := s.heads*s.headDim, s.kvHeads*s.headDim
		if layer.qkv, err = ld.fusedLinear([]string{stem(layout.AttnQ), stem(layout.AttnK), stem(layout.AttnV)},
			[]int{dq, dkv, dkv}, s.d); err != nil {
			return nil, err
		}
		if layer.o, err = ld.linear(stem(layout.AttnO), s.d, dq, true); err != nil {
			return nil, err
		}
	}
	if s.gated {
		if layer.up, err = ld.fusedLinear([]string{stem(layout.MLPGate), stem(layout.MLPUp)}, []int{s.inter, s.inter}, s.d); err != nil {
			return nil, err
		}
	} else if layer.up, err = ld.linear(stem(layout.MLPUp), s.inter, s.d, true); err != nil {
		return nil, err
	}
	if layer.down, err = ld.linear(stem(layout.MLPDown), s.d, s.inter, true); err != nil {
		return nil, err
	}
	return layer, nil
}

func (m *Model) loadMixer(ld *loader, l int) (*mixer, error) {
	p := layout.MambaPrefix(l)
	ti, ok := ld.ck.Tensor(p + initmap.Conv1dW)
	if !ok {
		return nil, fmt.Errorf("tensor %s is missing (a Mamba layer by %s)", p+initmap.Conv1dW, formats.MambaConfigName)
	}
	if len(ti.Shape) != 3 || ti.Shape[1] != 1 || ti.Shape[2] <= 0 || ti.Shape[2] > 64 {
		return nil, fmt.Errorf("tensor %s has shape %v, want [conv_dim, 1, kernel]", ti.Name, ti.Shape)
	}
	cfg, err := m.mixerConfig(int(ti.Shape[2]))
	if err != nil {
		return nil, err
	}
	H, convDim := cfg.NHeads, cfg.ConvDim()
	mx := &mixer{cfg: cfg}
	w := &mx.w
	if w.InProj, err = ld.matrix([]string{p + initmap.InProj}, []int{cfg.DProj()}, cfg.DModel); err != nil {
		return nil, err
	}
	if w.InProjBias, err = ld.optVector(p+initmap.InProjBias, cfg.DProj()); err != nil {
		return nil, err
	}
	convW, err := ld.host(p+initmap.Conv1dW, convDim, 1, cfg.ConvKernel)
	if err != nil {
		return nil, err
	}
	if w.Conv1dWeight, err = ld.upload(p+initmap.Conv1dW, convW, convDim, cfg.ConvKernel); err != nil {
		return nil, err
	}
	if w.Conv1dBias, err = ld.optVector(p+initmap.Conv1dB, convDim); err != nil {
		return nil, err
	}
	if w.DtBias, err = ld.vector(p+initmap.DtBias, H); err != nil {
		return nil, err
	}
	aLog, err := ld.host(p+initmap.ALog, H)
	if err != nil {
		return nil, err
	}
	if w.ALog, err = ld.upload(p+initmap.ALog, aLog, H); err != nil {
		return nil, err
	}
	a := make([]float32, H)
	for i, v := range aLog {
		a[i] = float32(-math.Exp(float64(v)))
		if math.IsInf(float64(a[i]), 0) || math.IsNaN(float64(a[i])) {
			return nil, fmt.Errorf("tensor %s: head %d: A = −exp(%g) is not finite", p+initmap.ALog, i, v)
		}
	}
	if mx.a, err = ld.upload(p+initmap.ALog+" (A = −exp)", a, H); err != nil {
		return nil, err
	}
	if w.D, err = ld.optVector(p+initmap.DSkip, H); err != nil {
		return nil, err
	}
	if w.NormWeight, err = ld.vector(p+initmap.NormW, cfg.DInner()); err != nil {
		return nil, err
	}
	if w.OutProj, err = ld.matrix([]string{p + initmap.OutProj}, []int{cfg.DModel}, cfg.DInner()); err != nil {
		return nil, err
	}
	if w.OutProjBias, err = ld.optVector(p+initmap.OutProjB, cfg.DModel); err != nil {
		return nil, err
	}
	return mx, nil
}
