// Package layout knows model families and layer plans: which tensor names
// hold which logical part of a TinyLLaVA checkpoint, and which decoder layers
// become Mamba-2 layers.
package layout

import (
	"fmt"
	"strings"

	"github.com/matsurgery/matsurgery/formats"
)

// Part is a logical piece of a decoder layer or of the model.
type Part string

// Per-layer parts.
const (
	AttnQ     Part = "attn.q"
	AttnK     Part = "attn.k"
	AttnV     Part = "attn.v"
	AttnO     Part = "attn.o"
	InputNorm Part = "norm.input"
	PostNorm  Part = "norm.post_attention"
	MLPUp     Part = "mlp.up"   // fc1 (phi) / up_proj
	MLPDown   Part = "mlp.down" // fc2 (phi) / down_proj
	MLPGate   Part = "mlp.gate" // gate_proj (SwiGLU families)
)

// Model-level parts.
const (
	Embed     Part = "embed"
	FinalNorm Part = "norm.final"
	LMHead    Part = "lm_head"
)

// Key prefixes of the TinyLLaVA_Factory layout.
const (
	LLMPrefix       = "language_model."
	LayerPrefix     = "language_model.model.layers."
	VisionPrefix    = "vision_tower._vision_tower."
	ConnectorPrefix = "connector._connector."
)

// Descriptor maps a family's logical parts to tensor-name stems (without the
// ".weight"/".bias" suffix). Per-layer stems are relative to the layer prefix
// "language_model.model.layers.N.".
type Descriptor struct {
	Family formats.Family
	Layer  map[Part]string
	Model  map[Part]string
	// AttnBias says which attention projections carry biases in the teacher.
	AttnBias map[Part]bool
	// ParallelBlock: h = LN(x); x + attn(h) + mlp(h) (Phi); else pre-norm sequential.
	ParallelBlock bool
	// TiedHeadAllowed: the head may be absent and reuse the embeddings.
	TiedHeadAllowed bool
}

var descriptors = map[formats.Family]*Descriptor{
	formats.Phi: {
		Family: formats.Phi,
		Layer: map[Part]string{
			AttnQ: "self_attn.q_proj", AttnK: "self_attn.k_proj", AttnV: "self_attn.v_proj", AttnO: "self_attn.dense",
			InputNorm: "input_layernorm", MLPUp: "mlp.fc1", MLPDown: "mlp.fc2",
		},
		Model: map[Part]string{
			Embed: "language_model.model.embed_tokens", FinalNorm: "language_model.model.final_layernorm",
			LMHead: "language_model.lm_head",
		},
		AttnBias:      map[Part]bool{AttnQ: true, AttnK: true, AttnV: true, AttnO: true},
		ParallelBlock: true,
	},
	formats.Qwen2: {
		Family: formats.Qwen2,
		Layer: map[Part]string{
			AttnQ: "self_attn.q_proj", AttnK: "self_attn.k_proj", AttnV: "self_attn.v_proj", AttnO: "self_attn.o_proj",
			InputNorm: "input_layernorm", PostNorm: "post_attention_layernorm",
			MLPGate: "mlp.gate_proj", MLPUp: "mlp.up_proj", MLPDown: "mlp.down_proj",
		},
		Model: map[Part]string{
			Embed: "language_model.model.embed_tokens", FinalNorm: "language_model.model.norm",
			LMHead: "language_model.lm_head",
		},
		AttnBias:        map[Part]bool{AttnQ: true, AttnK: true, AttnV: true},
		TiedHeadAllowed: true,
	},
	formats.Llama: {
		Family: formats.Llama,
		Layer: map[Part]string{
			AttnQ: "self_attn.q_proj", AttnK: "self_attn.k_proj", AttnV: "self_attn.v_proj", AttnO: "self_attn.o_proj",
			InputNorm: "input_layernorm", PostNorm: "post_attention_layernorm",
			MLPGate: "mlp.gate_proj", MLPUp: "mlp.up_proj", MLPDown: "mlp.down_proj",
		},
		Model: map[Part]string{
			Embed: "language_model.model.embed_tokens", FinalNorm: "language_model.model.norm",
			LMHead: "language_model.lm_head",
		},
		AttnBias:        map[Part]bool{},
		TiedHeadAllowed: true,
	},
}

// For returns the descriptor of a family.
func For(f formats.Family) (*Descriptor, error) {
	d, ok := descriptors[f]
	if !ok {
		var names []string
		for _, s := range formats.SupportedFamilies {
			names = append(names, string(s))
		}
		return nil, fmt.Errorf("unknown model family %q; supported: %s", f, strings.Join(names, ", "))
	}
	return d, nil
}

// LayerTensor is the full name of a per-layer tensor, suffix "weight" or "bias".
func (d *Descriptor) LayerTensor(layer int, p Part, suffix string) string {
	return fmt.Sprintf("%s%d.%s.%s", LayerPrefix, layer, d.Layer[p], suffix)
}

// ModelTensor is the full name of a model-level tensor.
func (d *Descriptor) ModelTensor(p Part, suffix string) string {
	return d.Model[p] + "." + suffix
}

// AttentionPrefix is the prefix of every attention tensor of a layer.
func AttentionPrefix(layer int) string {
	return fmt.Sprintf("%s%d.self_attn.", LayerPrefix, layer)
}

// MambaPrefix is the prefix of every Mamba mixer tensor of a layer.
func MambaPrefix(layer int) string {
	return fmt.Sprintf("%s%d.mamba.", LayerPrefix, layer)
}

// Mamba mixer tensor suffixes, in the order the reference code's module lists them.
var MambaTensors = []string{"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"}

// Component classifies a tensor name for parameter accounting.
type Component string

const (
	Vision    Component = "vision_tower"
	Connector Component = "connector"
	LLM       Component = "llm"
	Head      Component = "lm_head"
	Other     Component = "other"
)

// Components in display order.
var Components = []Component{Vision, Connector, LLM, Head, Other}

// ComponentOf classifies a tensor name.
func ComponentOf(name string) Component {
	switch {
	case strings.HasPrefix(name, VisionPrefix):
		return Vision
	case strings.HasPrefix(name, ConnectorPrefix):
		return Connector
	case strings.HasPrefix(name, "language_model.lm_head."):
		return Head
	case strings.HasPrefix(name, LLMPrefix):
		return LLM
	}
	return Other
}

// LayerOf returns the decoder layer index of a tensor name, or −1.
func LayerOf(name string) int {
	if !strings.HasPrefix(name, LayerPrefix) {
		return -1
	}
	rest := name[len(LayerPrefix):]
	n := 0
	i := 0
	for ; i < len(rest) && rest[i] >= '0' && rest[i] <= '9'; i++ {
		n = n*10 + int(rest[i]-'0')
	}
	if i == 0 || i >= len(rest) || rest[i] != '.' {
		return -1
	}
	return n
}
