// Package synth writes random-weight TinyLLaVA checkpoints with the real
// shapes, keys, config.json layout and sharding of the published models, so
// that convert, verify and distil can be exercised without downloading
// gigabytes. Every value is a deterministic function of (seed, tensor name,
// element index): the same options give the same bytes, whatever the number
// of workers.
package synth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matsurgery/matsurgery/formats"
)

// Preset names, from smallest to largest.
const (
	Tiny  = "tiny"  // a few hundred KB: the test fixtures' sizes
	Small = "small" // up to a few hundred MB: real vocabularies and image size, small widths
	Full  = "full"  // the published checkpoints' shapes (TinyLLaVA-Phi-2-SigLIP-3.1B: ~6.2 GB in bf16)
)

// PresetNames lists the presets, smallest first.
var PresetNames = []string{Tiny, Small, Full}

// DefaultShardSize is Hugging Face's default max_shard_size ("5GB"), which
// the published checkpoints were saved with.
const DefaultShardSize int64 = 5_000_000_000

// siglipName is the vision tower every TinyLLaVA preset names.
const siglipName = "google/siglip-so400m-patch14-384"

// Architecture is everything a preset fixes: the model's shapes and the
// identifying fields config.json carries.
type Architecture struct {
	Family formats.Family
	Preset string

	LLMName  string // llm_model_name_or_path (holds the family's name, which is how it is detected)
	LLMClass string // text_config.architectures[0]
	Text     formats.TextConfig
	Vision   formats.VisionConfig

	TokenizerMaxLength int    // tokenizer_model_max_length
	PadToken           string // pad_token
	PadTokenID         int    // pad_token_id
	BOS, EOS           *int   // text_config bos/eos token ids (nil: the class default)
}

// smallSigLIP is the small preset's vision tower: real image and patch size
// (so preprocessing is the real one, 729 patches), narrow and shallow.
var smallSigLIP = formats.VisionConfig{ModelType: "siglip_vision_model", HiddenSize: 256, IntermediateSize: 1024,
	NumLayers: 4, NumHeads: 4, NumChannels: 3, ImageSize: 384, PatchSize: 14, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6}

// tinySigLIP matches the committed test fixtures (testdata/gen/make_fixtures.py).
var tinySigLIP = formats.VisionConfig{ModelType: "siglip_vision_model", HiddenSize: 32, IntermediateSize: 64,
	NumLayers: 3, NumHeads: 4, NumChannels: 3, ImageSize: 56, PatchSize: 14, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6}

// fullSigLIP is SigLIP so400m-patch14-384.
var fullSigLIP = formats.VisionConfig{ModelType: "siglip_vision_model", HiddenSize: 1152, IntermediateSize: 4304,
	NumLayers: 27, NumHeads: 16, NumChannels: 3, ImageSize: 384, PatchSize: 14, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6}

func intp(v int) *int { return &v }

// Lookup returns the architecture of a family's preset.
func Lookup(f formats.Family, preset string) (Architecture, error) {
	a := Architecture{Family: f, Preset: preset}
	switch f {
	case formats.Phi:
		a.LLMClass = "PhiForCausalLM"
		a.TokenizerMaxLength = 3072
		t := formats.TextConfig{ModelType: "phi", HiddenAct: "gelu_new", NormEps: 1e-5, RopeTheta: 10000,
			PartialRotaryFactor: 0.4, MaxPositionEmbeddings: 2048, ResidPdrop: 0.1}
		switch preset {
		case Full: // Phi-2
			a.LLMName = "microsoft/phi-2"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.VocabSize = 2560, 10240, 32, 32, 51200
			a.Vision = fullSigLIP
		case Small: // head_dim 80 like Phi-2, so the rotary dim (32) is whole
			a.LLMName = "matsurgery-synth/phi-2-small"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.VocabSize = 640, 2560, 8, 8, 51200
			a.Vision = smallSigLIP
		case Tiny: // 4 heads of 20: rotary dim 8
			a.LLMName = "matsurgery-synth/phi-2-tiny"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.VocabSize = 80, 256, 8, 4, 1024
			a.Vision = tinySigLIP
		}
		t.NumKVHeads = t.NumHeads
		a.PadToken, a.PadTokenID = "<|endoftext|>", 50256
		a.BOS, a.EOS = intp(50256), intp(50256)
		a.Text = t
	case formats.Qwen2:
		a.LLMClass = "Qwen2ForCausalLM"
		a.TokenizerMaxLength = 2048
		t := formats.TextConfig{ModelType: "qwen2", HiddenAct: "silu", NormEps: 1e-6, RopeTheta: 1e6,
			PartialRotaryFactor: 1, TieWordEmbeddings: true}
		switch preset {
		case Full: // Qwen2-0.5B
			a.LLMName = "Qwen/Qwen2-0.5B"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.VocabSize = 896, 4864, 24, 14, 2, 151936
			t.MaxPositionEmbeddings = 131072
			a.Vision = fullSigLIP
		case Small:
			a.LLMName = "matsurgery-synth/qwen2-small"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.VocabSize = 512, 2048, 8, 8, 2, 151936
			t.MaxPositionEmbeddings = 32768
			a.Vision = smallSigLIP
		case Tiny:
			a.LLMName = "matsurgery-synth/qwen2-tiny"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.VocabSize = 64, 160, 8, 4, 2, 1024
			t.MaxPositionEmbeddings = 32768
			a.Vision = tinySigLIP
		}
		a.PadToken, a.PadTokenID = "<|endoftext|>", 151643
		a.BOS, a.EOS = intp(151643), intp(151643)
		a.Text = t
	case formats.Llama:
		a.LLMClass = "LlamaForCausalLM"
		a.TokenizerMaxLength = 2048
		t := formats.TextConfig{ModelType: "llama", HiddenAct: "silu", NormEps: 1e-5, RopeTheta: 10000,
			PartialRotaryFactor: 1, MaxPositionEmbeddings: 2048}
		switch preset {
		case Full: // TinyLlama-1.1B
			a.LLMName = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.VocabSize = 2048, 5632, 22, 32, 4, 32000
			a.Vision = fullSigLIP
		case Small:
			a.LLMName = "matsurgery-synth/tinyllama-small"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.VocabSize = 512, 1408, 8, 8, 2, 32000
			a.Vision = smallSigLIP
		case Tiny:
			a.LLMName = "matsurgery-synth/tinyllama-tiny"
			t.HiddenSize, t.IntermediateSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.VocabSize = 64, 96, 8, 4, 2, 1024
			a.Vision = tinySigLIP
		}
		a.PadToken, a.PadTokenID = "<unk>", 0
		a.Text = t
	default:
		var names []string
		for _, s := range formats.SupportedFamilies {
			names = append(names, string(s))
		}
		return Architecture{}, fmt.Errorf("unknown model family %q; supported: %s", f, strings.Join(names, ", "))
	}
	if a.LLMName == "" {
		return Architecture{}, fmt.Errorf("unknown preset %q; known: %s", preset, strings.Join(PresetNames, ", "))
	}
	// The tiny vocabularies hold no real token ids: keep the ids in range.
	if a.PadTokenID >= a.Text.VocabSize {
		a.PadTokenID = 0
	}
	if a.BOS != nil && *a.BOS >= a.Text.VocabSize {
		a.BOS, a.EOS = nil, nil
	}
	a.Text.HeadDim = a.Text.HiddenSize / a.Text.NumHeads
	return a, nil
}

// torchDTypeName is config.json's name of a storage dtype.
func torchDTypeName(dt formats.DType) string {
	switch dt {
	case formats.F32:
		return "float32"
	case formats.F16:
		return "float16"
	case formats.F64:
		return "float64"
	}
	return "bfloat16"
}

// pyFloat marshals as Python's json.dump writes a float (1e-05, 10000.0).
type pyFloat float64

func (f pyFloat) MarshalJSON() ([]byte, error) { return []byte(formats.PythonFloat(float64(f))), nil }

// defaults returns the text and vision fields a config.json that stores
// nothing gets from formats.ParseModelConfig: the transformers class defaults.
func defaults(a Architecture) (formats.TextConfig, formats.VisionConfig, error) {
	probe := map[string]any{
		"llm_model_name_or_path": a.LLMName,
		"text_config":            map[string]any{"model_type": a.Text.ModelType},
	}
	data, err := json.Marshal(probe)
	if err != nil {
		return formats.TextConfig{}, formats.VisionConfig{}, err
	}
	c, err := formats.ParseModelConfig(data)
	if err != nil {
		return formats.TextConfig{}, formats.VisionConfig{}, fmt.Errorf("defaults of family %s: %w", a.Family, err)
	}
	return c.Text, c.Vision, nil
}

// ConfigJSON is the architecture's config.json in the TinyLLaVA_Factory
// layout, as save_pretrained writes it (sorted keys, indent 2): text_config
// and vision_config store only the fields that differ from the class
// defaults, plus the identifying fields the published files carry.
func (a Architecture) ConfigJSON(dt formats.DType) ([]byte, error) {
	dt0, dv, err := defaults(a)
	if err != nil {
		return nil, err
	}
	t, v := a.Text, a.Vision
	text := map[string]any{
		"_name_or_path": a.LLMName,
		"architectures": []string{a.LLMClass},
		"model_type":    t.ModelType,
		"torch_dtype":   torchDTypeName(dt),
	}
	setInt := func(m map[string]any, key string, val, def int) {
		if val != def {
			m[key] = val
		}
	}
	setFloat := func(m map[string]any, key string, val, def float64) {
		if val != def {
			m[key] = pyFloat(val)
		}
	}
	setInt(text, "hidden_size", t.HiddenSize, dt0.HiddenSize)
	setInt(text, "intermediate_size", t.IntermediateSize, dt0.IntermediateSize)
	setInt(text, "num_hidden_layers", t.NumLayers, dt0.NumLayers)
	setInt(text, "num_attention_heads", t.NumHeads, dt0.NumHeads)
	// An absent num_key_value_heads means "as many as the heads".
	setInt(text, "num_key_value_heads", t.NumKVHeads, t.NumHeads)
	setInt(text, "vocab_size", t.VocabSize, dt0.VocabSize)
	setInt(text, "max_position_embeddings", t.MaxPositionEmbeddings, dt0.MaxPositionEmbeddings)
	if t.HiddenAct != dt0.HiddenAct {
		text["hidden_act"] = t.HiddenAct
	}
	epsKey := "rms_norm_eps"
	if a.Family == formats.Phi {
		epsKey = "layer_norm_eps"
	}
	setFloat(text, epsKey, t.NormEps, dt0.NormEps)
	setFloat(text, "rope_theta", t.RopeTheta, dt0.RopeTheta)
	setFloat(text, "partial_rotary_factor", t.PartialRotaryFactor, dt0.PartialRotaryFactor)
	setFloat(text, "resid_pdrop", t.ResidPdrop, dt0.ResidPdrop)
	if t.TieWordEmbeddings != dt0.TieWordEmbeddings {
		text["tie_word_embeddings"] = t.TieWordEmbeddings
	}
	if a.BOS != nil {
		text["bos_token_id"] = *a.BOS
	}
	if a.EOS != nil {
		text["eos_token_id"] = *a.EOS
	}

	// The published files list hidden_act, layer_norm_eps and the tower's
	// name even at their class defaults.
	vis := map[string]any{
		"hidden_act":          v.HiddenAct,
		"layer_norm_eps":      pyFloat(v.LayerNormEps),
		"model_name_or_path":  siglipName,
		"model_name_or_path2": "",
		"model_type":          v.ModelType,
	}
	setInt(vis, "hidden_size", v.HiddenSize, dv.HiddenSize)
	setInt(vis, "intermediate_size", v.IntermediateSize, dv.IntermediateSize)
	setInt(vis, "num_hidden_layers", v.NumLayers, dv.NumLayers)
	setInt(vis, "num_attention_heads", v.NumHeads, dv.NumHeads)
	setInt(vis, "num_channels", v.NumChannels, dv.NumChannels)
	setInt(vis, "image_size", v.ImageSize, dv.ImageSize)
	setInt(vis, "patch_size", v.PatchSize, dv.PatchSize)

	top := map[string]any{
		"architectures": []string{"TinyLlavaForConditionalGeneration"},
		"auto_map": map[string]string{
			"AutoConfig":           "configuration.TinyLlavaConfig",
			"AutoModelForCausalLM": "modeling_tinyllava_" + string(a.Family) + ".TinyLlavaForConditionalGeneration",
		},
		"cache_dir":                      nil,
		"connector_type":                 "mlp2x_gelu",
		"hidden_size":                    t.HiddenSize,
		"ignore_index":                   -100,
		"image_aspect_ratio":             "square",
		"image_token_index":              -200,
		"llm_model_name_or_path":         a.LLMName,
		"model_type":                     "tinyllava",
		"num_queries":                    128,
		"num_resampler_layers":           3,
		"pad_token":                      a.PadToken,
		"pad_token_id":                   a.PadTokenID,
		"resampler_hidden_size":          768,
		"text_config":                    text,
		"tokenizer_model_max_length":     a.TokenizerMaxLength,
		"tokenizer_padding_side":         "right",
		"tokenizer_use_fast":             false,
		"torch_dtype":                    torchDTypeName(dt),
		"tune_type_connector":            "full",
		"tune_type_llm":                  "full",
		"tune_type_vision_tower":         "frozen",
		"tune_vision_tower_from_layer":   0,
		"use_cache":                      true,
		"vision_config":                  vis,
		"vision_feature_layer":           -2,
		"vision_feature_select_strategy": "patch",
		"vision_hidden_size":             v.HiddenSize,
		"vision_model_name_or_path":      siglipName,
		"vision_model_name_or_path2":     "",
		"vocab_size":                     t.VocabSize,
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // "<|endoftext|>" stays as written
	enc.SetIndent("", "  ")
	if err := enc.Encode(top); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	return b.Bytes(), nil
}
