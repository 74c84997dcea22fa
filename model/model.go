// Package model runs the TinyLLaVA forward pass — the teacher and its
// hybrid Mamba-2/Transformer student — on any kernels.Backend.
//
// It is written llm.c style: one plain function per block, named after its
// maths (SigLIP encoder layer, mlp2x_gelu connector, Phi parallel block,
// Llama/Qwen2 pre-norm block, Mamba-2 mixer), weights uploaded once by Load,
// and the activations of a sequence length allocated once per length and
// reused (see arena.go). Batch size is 1.
//
// The pieces, in order (SPEC §2–3):
//
//   - vision tower (SigLIP): patch embedding as im2col + MatMul, position
//     embeddings, encoder layers; the features are hidden_states[
//     vision_feature_layer] (no post_layernorm), the "patch" strategy drops
//     row 0;
//   - connector mlp2x_gelu: Linear, exact-erf GELU, Linear;
//   - splicing: each −200 placeholder of the ids is replaced by one image's
//     connector rows; positions run over the spliced sequence;
//   - decoder layers: Phi's parallel block, Llama/Qwen2's sequential
//     pre-norm block, and in a hybrid the Mamba-2 mixer in place of the
//     attention of the layers mamba_config.json does not list;
//   - final norm and lm_head (the embeddings when the head is tied).
//
// Forward returns the logits of every position; ForwardHooked also shows
// each decoder layer's input and output (the distillation trainer's
// per-layer targets); RunLayer runs one decoder layer on a given input.
// Prefill and Step decode incrementally with a KV cache for the attention
// layers and conv/SSM states for the Mamba layers.
//
// Tensors a method returns belong to the Model and stay valid until the
// next call of a method that computes (Embed, ImageFeatures, Forward*,
// RunLayer, Prefill, Step); copy what must outlive it. A Model is not safe
// for concurrent use, like its Backend.
package model

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
)

// Options tune Load.
type Options struct {
	// F32Weights uploads every weight as float32. By default a matrix stored
	// as BF16 stays BF16 on the backend (MatMul and the row gathers take
	// it); every other weight, and any matrix stored in another dtype, is
	// float32.
	F32Weights bool
	// Chunk is the chunk length of the Mamba layers' chunked scan (default 64).
	Chunk int
	// Recurrence runs the Mamba layers' scan sequentially (SSDRecurrence)
	// instead of by chunks; decode steps always use the recurrence.
	Recurrence bool
	// DecodeReserve is how many tokens past the prompt the decode caches
	// hold before they grow (default 256); they double when full.
	DecodeReserve int
	// Precision of the activations in matrix products and scans:
	// PrecisionF32 (the default, "" too) or PrecisionBF16 (precision.go).
	// PrecisionBF16 needs BF16 weights and excludes F32Weights.
	Precision Precision
}

// DefaultChunk is the SSD chunk length when Options.Chunk is 0.
const DefaultChunk = 64

// DefaultDecodeReserve is the cache room after the prompt when
// Options.DecodeReserve is 0.
const DefaultDecodeReserve = 256

// Model is a loaded TinyLLaVA teacher or hybrid on one backend.
type Model struct {
	Config *formats.ModelConfig
	// Hybrid is the parsed mamba_config.json; nil for a teacher.
	Hybrid *formats.MambaConfig
	Dir    string

	be   kernels.Backend
	opts Options
	rows *rowMover
	mm   *products               // matrix products in opts.Precision
	att  kernels.CachedAttention // nil when the backend lacks it

	sizes   textSizes
	vision  *visionTower
	conn    connector
	embed   kernels.Tensor // [vocab, d], F32 or BF16
	layers  []*decoderLayer
	final   norm
	head    linear // weight is embed when tied
	weights []kernels.Tensor

	plans   map[int]*seqPlan
	vplan   *visionPlan
	decoder *decodeState
	closed  bool
}

// textSizes are the decoder's dimensions, read once from the config.
type textSizes struct {
	d, heads, kvHeads, headDim, inter, vocab int
	rotary                                   int
	theta                                    float64
	eps                                      float32
	parallel                                 bool // Phi's parallel block
	gated                                    bool // SwiGLU MLP (gate, up, down)
	act                                      kernels.GELUForm
	rms                                      bool // RMSNorm (else LayerNorm with bias)
}

// Load reads the checkpoint in dir (config.json, the safetensors files and,
// on a hybrid, mamba_config.json) and uploads its weights to be once.
// Weights the forward pass does not use (SigLIP's post_layernorm and
// pooling head) are not read. The Model does not own be: Close frees the
// weights, not the backend.
func Load(dir string, be kernels.Backend, opts Options) (*Model, error) {
	if be == nil {
		return nil, errors.New("model: load: no backend")
	}
	if opts.Chunk == 0 {
		opts.Chunk = DefaultChunk
	}
	if opts.Chunk < 0 {
		return nil, fmt.Errorf("model: load %s: chunk length %d must be positive", dir, opts.Chunk)
	}
	if opts.DecodeReserve == 0 {
		opts.DecodeReserve = DefaultDecodeReserve
	}
	if opts.DecodeReserve < 0 {
		return nil, fmt.Errorf("model: load %s: decode reserve %d must be positive", dir, opts.DecodeReserve)
	}
	prec, err := ParsePrecision(string(opts.Precision))
	if err != nil {
		return nil, fmt.Errorf("model: load %s: %w", dir, err)
	}
	opts.Precision = prec
	if prec == PrecisionBF16 && opts.F32Weights {
		return nil, fmt.Errorf("model: load %s: precision bf16 multiplies bf16 weights, and F32Weights asks for float32 ones", dir)
	}
	cfg, err := formats.ReadModelConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("model: load %s: %w", dir, err)
	}
	hybrid, isHybrid, err := formats.ReadMambaConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("model: load %s: %w", dir, err)
	}
	if !isHybrid {
		hybrid = nil
	}
	sizes, err := textSizesOf(cfg)
	if err != nil {
		return nil, fmt.Errorf("model: load %s: %w", dir, err)
	}
	ck, err := formats.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("model: load %s: %w", dir, err)
	}
	defer ck.Close()

	m := &Model{Config: cfg, Hybrid: hybrid, Dir: dir, be: be, opts: opts, sizes: sizes, plans: map[int]*seqPlan{},
		mm: &products{be: be, bf16: prec == PrecisionBF16}}
	if m.mm.bf16 && hybrid != nil {
		if m.mm.scanBF16, err = scansTakeBF16(be); err != nil {
			return nil, fmt.Errorf("model: load %s: probe the scans for bf16 inputs: %w", dir, err)
		}
	}
	if m.mm.bf16 {
		if m.mm.attnBF16, err = attentionTakesBF16(be); err != nil {
			return nil, fmt.Errorf("model: load %s: probe attention for bf16 inputs: %w", dir, err)
		}
	}
	if rc, ok := be.(kernels.RowCopier); ok {
		m.rows = &rowMover{be: be, native: rc}
	} else {
		m.rows = &rowMover{be: be}
	}
	if ca, ok := be.(kernels.CachedAttention); ok {
		m.att = ca
	}
	ld := &loader{ck: ck, be: be, f32: opts.F32Weights, owned: &m.weights}
	if err := m.load(ld); err != nil {
		m.freeWeights()
		return nil, fmt.Errorf("model: load %s: %w", dirName(dir), err)
	}
	return m, nil
}

func dirName(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

// textSizesOf checks the decoder config and derives its sizes.
func textSizesOf(cfg *formats.ModelConfig) (textSizes, error) {
	t := cfg.Text
	s := textSizes{d: t.HiddenSize, heads: t.NumHeads, kvHeads: t.NumKVHeads, headDim: t.HeadDim, inter: t.IntermediateSize,
		vocab: t.VocabSize, rotary: t.RotaryDim(), theta: t.RopeTheta, eps: float32(t.NormEps)}
	if cfg.VocabSize != 0 && cfg.VocabSize != t.VocabSize {
		return s, fmt.Errorf("config.json: vocab_size %d disagrees with text_config.vocab_size %d", cfg.VocabSize, t.VocabSize)
	}
	switch cfg.Family {
	case formats.Phi:
		s.parallel = true
	case formats.Qwen2, formats.Llama:
		s.gated, s.rms = true, true
	default:
		return s, fmt.Errorf("model family %q is not supported", cfg.Family)
	}
	var err error
	if s.gated {
		if t.HiddenAct != "silu" && t.HiddenAct != "swish" {
			err = fmt.Errorf("text_config.hidden_act %q: the %s MLP runs with silu only", t.HiddenAct, cfg.Family)
		}
	} else {
		s.act, err = geluForm(t.HiddenAct)
		if err != nil {
			err = fmt.Errorf("text_config.hidden_act: %w", err)
		}
	}
	if err != nil {
		return s, err
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
	if !(s.theta > 0) {
		return s, fmt.Errorf("text_config: rope_theta %g must be positive", s.theta)
	}
	if !(s.eps > 0) {
		return s, fmt.Errorf("text_config: norm epsilon %g must be positive", t.NormEps)
	}
	return s, nil
}

// geluForm maps an HF activation name to the GELU it computes.
func geluForm(act string) (kernels.GELUForm, error) {
	switch act {
	case "gelu_new", "gelu_pytorch_tanh", "gelu_fast":
		return kernels.GELUTanh, nil
	case "gelu":
		return kernels.GELUErf, nil
	}
	return 0, fmt.Errorf("activation %q is not supported (gelu, gelu_new, gelu_pytorch_tanh)", act)
}

// Backend is the backend the model runs on.
func (m *Model) Backend() kernels.Backend { return m.be }

// Precision is the precision the model was loaded with.
func (m *Model) Precision() Precision { return m.opts.Precision }

// NumLayers is the number of decoder layers.
func (m *Model) NumLayers() int { return len(m.layers) }

// IsMamba reports whether decoder layer l is a Mamba-2 layer.
func (m *Model) IsMamba(l int) bool { return l >= 0 && l < len(m.layers) && m.layers[l].mixer != nil }

// MambaLayers lists the Mamba-2 layers (empty for a teacher).
func (m *Model) MambaLayers() []int {
	var out []int
	for i, l := range m.layers {
		if l.mixer != nil {
			out = append(out, i)
		}
	}
	return out
}

// ImageTokens is the number of sequence rows one image becomes.
func (m *Model) ImageTokens() int { return m.vision.featureRows() }

// Close frees the weights and activations. The backend stays open.
func (m *Model) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	m.resetDecode()
	m.freePlans()
	m.mm.release()
	m.freeWeights()
	return nil
}

func (m *Model) freeWeights() {
	for _, t := range m.weights {
		m.be.Free(t)
	}
	m.weights = nil
}

func (m *Model) alive() error {
	if m.closed {
		return errors.New("model is closed")
	}
	return nil
}
