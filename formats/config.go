package formats

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Family is the decoder family of a TinyLLaVA checkpoint.
type Family string

const (
	Phi   Family = "phi"
	Qwen2 Family = "qwen2"
	Llama Family = "llama"
)

// SupportedFamilies lists the families matsurgery converts, in display order.
var SupportedFamilies = []Family{Phi, Qwen2, Llama}

// recognisedFamilies are families TinyLLaVA ships that matsurgery knows by name
// but does not convert yet.
var recognisedFamilies = []string{"stablelm", "gemma"}

// TextConfig holds the decoder's architecture, with every field filled: stored
// values from config.json's text_config, the rest from the family's defaults
// (the transformers config class defaults, which is how the file is written:
// only non-default fields are stored).
type TextConfig struct {
	ModelType             string  `json:"model_type"`
	HiddenSize            int     `json:"hidden_size"`
	IntermediateSize      int     `json:"intermediate_size"`
	NumLayers             int     `json:"num_hidden_layers"`
	NumHeads              int     `json:"num_attention_heads"`
	NumKVHeads            int     `json:"num_key_value_heads"`
	HeadDim               int     `json:"head_dim"`
	VocabSize             int     `json:"vocab_size"`
	HiddenAct             string  `json:"hidden_act"`
	NormEps               float64 `json:"norm_eps"` // layer_norm_eps (phi) or rms_norm_eps
	RopeTheta             float64 `json:"rope_theta"`
	PartialRotaryFactor   float64 `json:"partial_rotary_factor"`
	MaxPositionEmbeddings int     `json:"max_position_embeddings"`
	TieWordEmbeddings     bool    `json:"tie_word_embeddings"`
	ResidPdrop            float64 `json:"resid_pdrop"`
}

// RotaryDim is the number of leading dims of each head that RoPE rotates.
func (t TextConfig) RotaryDim() int {
	return int(float64(t.HeadDim) * t.PartialRotaryFactor)
}

// VisionConfig holds the SigLIP vision tower's architecture, defaults filled.
type VisionConfig struct {
	ModelType        string  `json:"model_type"`
	HiddenSize       int     `json:"hidden_size"`
	IntermediateSize int     `json:"intermediate_size"`
	NumLayers        int     `json:"num_hidden_layers"`
	NumHeads         int     `json:"num_attention_heads"`
	NumChannels      int     `json:"num_channels"`
	ImageSize        int     `json:"image_size"`
	PatchSize        int     `json:"patch_size"`
	HiddenAct        string  `json:"hidden_act"`
	LayerNormEps     float64 `json:"layer_norm_eps"`
}

// NumPatches is the number of patch positions of the tower.
func (v VisionConfig) NumPatches() int {
	if v.PatchSize == 0 {
		return 0
	}
	n := v.ImageSize / v.PatchSize
	return n * n
}

// ModelConfig is a parsed TinyLLaVA config.json (TinyLLaVA_Factory layout).
type ModelConfig struct {
	Path                        string       `json:"-"`
	Family                      Family       `json:"family"`
	LLMName                     string       `json:"llm_model_name_or_path"`
	VisionName                  string       `json:"vision_model_name_or_path"`
	ConnectorType               string       `json:"connector_type"`
	HiddenSize                  int          `json:"hidden_size"`
	VocabSize                   int          `json:"vocab_size"`
	ImageTokenIndex             int          `json:"image_token_index"`
	ImageAspectRatio            string       `json:"image_aspect_ratio"`
	TokenizerMaxLength          int          `json:"tokenizer_model_max_length"`
	PadTokenID                  *int         `json:"pad_token_id"`
	VisionFeatureLayer          int          `json:"vision_feature_layer"`
	VisionFeatureSelectStrategy string       `json:"vision_feature_select_strategy"`
	Text                        TextConfig   `json:"text_config"`
	Vision                      VisionConfig `json:"vision_config"`
}

// ErrLegacyLayout marks the legacy bczhou/TinyLLaVA-3.1B layout.
var ErrLegacyLayout = errors.New("legacy bczhou/TinyLLaVA layout (model.*, model.mm_projector.*) is not supported: " +
	"re-export the model with TinyLLaVA_Factory (keys language_model.*, vision_tower._vision_tower.*, connector._connector.*)")

// ReadModelConfig reads a TinyLLaVA config.json (a file, or a directory holding one).
func ReadModelConfig(path string) (*ModelConfig, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "config.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseModelConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// ParseModelConfig parses the bytes of a TinyLLaVA config.json.
func ParseModelConfig(data []byte) (*ModelConfig, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if isLegacy(raw) {
		return nil, ErrLegacyLayout
	}
	c := &ModelConfig{
		ImageTokenIndex:             -200,
		ImageAspectRatio:            "square",
		VisionFeatureLayer:          -2,
		VisionFeatureSelectStrategy: "patch",
		ConnectorType:               "",
	}
	fields := []struct {
		key string
		dst any
	}{
		{"llm_model_name_or_path", &c.LLMName},
		{"vision_model_name_or_path", &c.VisionName},
		{"connector_type", &c.ConnectorType},
		{"hidden_size", &c.HiddenSize},
		{"vocab_size", &c.VocabSize},
		{"image_token_index", &c.ImageTokenIndex},
		{"image_aspect_ratio", &c.ImageAspectRatio},
		{"tokenizer_model_max_length", &c.TokenizerMaxLength},
		{"pad_token_id", &c.PadTokenID},
		{"vision_feature_layer", &c.VisionFeatureLayer},
		{"vision_feature_select_strategy", &c.VisionFeatureSelectStrategy},
	}
	for _, f := range fields {
		if v, ok := raw[f.key]; ok && string(v) != "null" {
			if err := json.Unmarshal(v, f.dst); err != nil {
				return nil, fmt.Errorf("field %q: %w", f.key, err)
			}
		}
	}
	var text map[string]json.RawMessage
	if v, ok := raw["text_config"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &text); err != nil {
			return nil, fmt.Errorf("field \"text_config\": %w", err)
		}
	}
	fam, err := detectFamily(c.LLMName, text)
	if err != nil {
		return nil, err
	}
	c.Family = fam
	if c.Text, err = parseTextConfig(fam, text); err != nil {
		return nil, fmt.Errorf("text_config: %w", err)
	}
	var vis map[string]json.RawMessage
	if v, ok := raw["vision_config"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &vis); err != nil {
			return nil, fmt.Errorf("field \"vision_config\": %w", err)
		}
	}
	if c.Vision, err = parseVisionConfig(vis); err != nil {
		return nil, fmt.Errorf("vision_config: %w", err)
	}
	if c.HiddenSize == 0 {
		c.HiddenSize = c.Text.HiddenSize
	}
	if c.VocabSize == 0 {
		c.VocabSize = c.Text.VocabSize
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func isLegacy(raw map[string]json.RawMessage) bool {
	if _, ok := raw["mm_vision_tower"]; ok {
		return true
	}
	if _, ok := raw["mm_projector_type"]; ok {
		return true
	}
	var mt string
	if v, ok := raw["model_type"]; ok {
		_ = json.Unmarshal(v, &mt)
	}
	return strings.Contains(mt, "llava_phi") || strings.Contains(mt, "tiny_llava")
}

func detectFamily(llmName string, text map[string]json.RawMessage) (Family, error) {
	name := strings.ToLower(llmName)
	var mt string
	if v, ok := text["model_type"]; ok {
		_ = json.Unmarshal(v, &mt)
	}
	for _, probe := range []string{name, strings.ToLower(mt)} {
		switch {
		case probe == "":
			continue
		case strings.Contains(probe, "phi"):
			return Phi, nil
		case strings.Contains(probe, "qwen2"):
			return Qwen2, nil
		case strings.Contains(probe, "tinyllama"), strings.Contains(probe, "llama"):
			return Llama, nil
		}
		for _, r := range recognisedFamilies {
			if strings.Contains(probe, r) {
				return "", fmt.Errorf("model family %q (llm_model_name_or_path %q) is not supported yet; supported: %s", r, llmName, familyList())
			}
		}
	}
	return "", fmt.Errorf("unknown model family for llm_model_name_or_path %q (text_config.model_type %q); supported: %s", llmName, mt, familyList())
}

func familyList() string {
	var s []string
	for _, f := range SupportedFamilies {
		s = append(s, string(f))
	}
	return strings.Join(s, ", ")
}

// textDefaults are the transformers config-class defaults of each family
// (PhiConfig, Qwen2Config, LlamaConfig), used for fields text_config omits.
func textDefaults(f Family) TextConfig {
	switch f {
	case Phi:
		return TextConfig{ModelType: "phi", HiddenSize: 2048, IntermediateSize: 8192, NumLayers: 24, NumHeads: 32,
			VocabSize: 51200, HiddenAct: "gelu_new", NormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 0.5,
			MaxPositionEmbeddings: 2048}
	case Qwen2:
		return TextConfig{ModelType: "qwen2", HiddenSize: 4096, IntermediateSize: 22016, NumLayers: 32, NumHeads: 32,
			NumKVHeads: 32, VocabSize: 151936, HiddenAct: "silu", NormEps: 1e-6, RopeTheta: 10000, PartialRotaryFactor: 1,
			MaxPositionEmbeddings: 32768}
	default:
		return TextConfig{ModelType: "llama", HiddenSize: 4096, IntermediateSize: 11008, NumLayers: 32, NumHeads: 32,
			VocabSize: 32000, HiddenAct: "silu", NormEps: 1e-6, RopeTheta: 10000, PartialRotaryFactor: 1,
			MaxPositionEmbeddings: 2048}
	}
}

func parseTextConfig(f Family, raw map[string]json.RawMessage) (TextConfig, error) {
	t := textDefaults(f)
	epsKey := "rms_norm_eps"
	if f == Phi {
		epsKey = "layer_norm_eps"
	}
	headDim := 0
	kv := 0
	fields := []struct {
		key string
		dst any
	}{
		{"model_type", &t.ModelType},
		{"hidden_size", &t.HiddenSize},
		{"intermediate_size", &t.IntermediateSize},
		{"num_hidden_layers", &t.NumLayers},
		{"num_attention_heads", &t.NumHeads},
		{"num_key_value_heads", &kv},
		{"head_dim", &headDim},
		{"vocab_size", &t.VocabSize},
		{"hidden_act", &t.HiddenAct},
		{epsKey, &t.NormEps},
		{"rope_theta", &t.RopeTheta},
		{"partial_rotary_factor", &t.PartialRotaryFactor},
		{"max_position_embeddings", &t.MaxPositionEmbeddings},
		{"tie_word_embeddings", &t.TieWordEmbeddings},
		{"resid_pdrop", &t.ResidPdrop},
	}
	for _, fd := range fields {
		if v, ok := raw[fd.key]; ok && string(v) != "null" {
			if err := json.Unmarshal(v, fd.dst); err != nil {
				return t, fmt.Errorf("field %q: %w", fd.key, err)
			}
		}
	}
	// rope_theta may also live in rope_parameters (transformers ≥ 5).
	if v, ok := raw["rope_parameters"]; ok {
		var rp struct {
			RopeTheta           *float64 `json:"rope_theta"`
			PartialRotaryFactor *float64 `json:"partial_rotary_factor"`
		}
		if json.Unmarshal(v, &rp) == nil {
			if rp.RopeTheta != nil {
				t.RopeTheta = *rp.RopeTheta
			}
			if rp.PartialRotaryFactor != nil {
				t.PartialRotaryFactor = *rp.PartialRotaryFactor
			}
		}
	}
	if t.NumHeads <= 0 || t.HiddenSize <= 0 || t.NumLayers <= 0 {
		return t, fmt.Errorf("hidden_size %d, num_hidden_layers %d, num_attention_heads %d: all must be positive", t.HiddenSize, t.NumLayers, t.NumHeads)
	}
	t.NumKVHeads = t.NumHeads
	if kv > 0 {
		t.NumKVHeads = kv
	}
	t.HeadDim = t.HiddenSize / t.NumHeads
	if headDim > 0 {
		t.HeadDim = headDim
	}
	if t.NumHeads%t.NumKVHeads != 0 {
		return t, fmt.Errorf("num_attention_heads %d is not a multiple of num_key_value_heads %d", t.NumHeads, t.NumKVHeads)
	}
	return t, nil
}

func parseVisionConfig(raw map[string]json.RawMessage) (VisionConfig, error) {
	// SiglipVisionConfig defaults.
	v := VisionConfig{ModelType: "siglip_vision_model", HiddenSize: 768, IntermediateSize: 3072, NumLayers: 12,
		NumHeads: 12, NumChannels: 3, ImageSize: 224, PatchSize: 16, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6}
	fields := []struct {
		key string
		dst any
	}{
		{"model_type", &v.ModelType},
		{"hidden_size", &v.HiddenSize},
		{"intermediate_size", &v.IntermediateSize},
		{"num_hidden_layers", &v.NumLayers},
		{"num_attention_heads", &v.NumHeads},
		{"num_channels", &v.NumChannels},
		{"image_size", &v.ImageSize},
		{"patch_size", &v.PatchSize},
		{"hidden_act", &v.HiddenAct},
		{"layer_norm_eps", &v.LayerNormEps},
	}
	for _, fd := range fields {
		if r, ok := raw[fd.key]; ok && string(r) != "null" {
			if err := json.Unmarshal(r, fd.dst); err != nil {
				return v, fmt.Errorf("field %q: %w", fd.key, err)
			}
		}
	}
	if v.HiddenSize <= 0 || v.NumHeads <= 0 || v.PatchSize <= 0 || v.ImageSize <= 0 {
		return v, fmt.Errorf("hidden_size %d, num_attention_heads %d, patch_size %d, image_size %d: all must be positive",
			v.HiddenSize, v.NumHeads, v.PatchSize, v.ImageSize)
	}
	return v, nil
}

func (c *ModelConfig) validate() error {
	if c.HiddenSize != c.Text.HiddenSize {
		return fmt.Errorf("hidden_size %d disagrees with text_config.hidden_size %d", c.HiddenSize, c.Text.HiddenSize)
	}
	if c.Text.HeadDim*c.Text.NumHeads != c.Text.HiddenSize && c.Family != Qwen2 && c.Family != Llama {
		return fmt.Errorf("text_config: %d heads × head_dim %d ≠ hidden_size %d", c.Text.NumHeads, c.Text.HeadDim, c.Text.HiddenSize)
	}
	return nil
}

// MambaConfig is the hybrid layout file mamba_config.json written next to the
// teacher's unchanged config.json, in the reference code's format.
type MambaConfig struct {
	DModel           int
	Expand           int
	NGroups          int
	DState           int
	NormEps          float64
	NormEpsKey       string // "layer_norm_eps" (phi) or "rms_norm_eps"
	DInner           int
	DXB              int
	IntermediateSize int
	HiddenAct        string
	NLayer           int
	AttnLayers       []int
	ResidPdrop       *float64 // written only when set (phi)
	Bidirectional    bool
	IsBias           bool
}

// MambaLayers is the complement of AttnLayers over [0, NLayer).
func (m *MambaConfig) MambaLayers() []int {
	attn := map[int]bool{}
	for _, l := range m.AttnLayers {
		attn[l] = true
	}
	var out []int
	for l := 0; l < m.NLayer; l++ {
		if !attn[l] {
			out = append(out, l)
		}
	}
	return out
}

// Marshal writes the file as the reference code does (json.dump, indent 4,
// Python float repr), fields in the reference order.
func (m *MambaConfig) Marshal() []byte {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	key := m.NormEpsKey
	if key == "" {
		key = "layer_norm_eps"
	}
	w("{\n")
	w("    \"d_model\": %d,\n", m.DModel)
	w("    \"ssm_cfg\": {\n        \"expand\": %d,\n        \"ngroups\": %d,\n        \"d_state\": %d\n    },\n", m.Expand, m.NGroups, m.DState)
	w("    %q: %s,\n", key, PythonFloat(m.NormEps))
	w("    \"vocab_size\": null,\n")
	w("    \"d_inner\": %d,\n", m.DInner)
	w("    \"d_xb\": %d,\n", m.DXB)
	w("    \"intermediate_size\": %d,\n", m.IntermediateSize)
	hid, _ := json.Marshal(m.HiddenAct)
	w("    \"hidden_act\": %s,\n", hid)
	w("    \"n_layer\": %d,\n", m.NLayer)
	if len(m.AttnLayers) == 0 {
		w("    \"attn_layers\": [],\n")
	} else {
		w("    \"attn_layers\": [\n")
		for i, l := range m.AttnLayers {
			sep := ","
			if i == len(m.AttnLayers)-1 {
				sep = ""
			}
			w("        %d%s\n", l, sep)
		}
		w("    ],\n")
	}
	if m.ResidPdrop != nil {
		w("    \"resid_pdrop\": %s,\n", PythonFloat(*m.ResidPdrop))
	}
	w("    \"bidirectional\": %t,\n", m.Bidirectional)
	w("    \"is_bias\": %t\n", m.IsBias)
	w("}")
	return b.Bytes()
}

// ParseMambaConfig reads mamba_config.json bytes.
func ParseMambaConfig(data []byte) (*MambaConfig, error) {
	var raw struct {
		DModel *int `json:"d_model"`
		SSM    struct {
			Expand  int `json:"expand"`
			NGroups int `json:"ngroups"`
			DState  int `json:"d_state"`
		} `json:"ssm_cfg"`
		LayerNormEps     *float64 `json:"layer_norm_eps"`
		RMSNormEps       *float64 `json:"rms_norm_eps"`
		DInner           int      `json:"d_inner"`
		DXB              int      `json:"d_xb"`
		IntermediateSize int      `json:"intermediate_size"`
		HiddenAct        string   `json:"hidden_act"`
		NLayer           *int     `json:"n_layer"`
		AttnLayers       []int    `json:"attn_layers"`
		ResidPdrop       *float64 `json:"resid_pdrop"`
		Bidirectional    bool     `json:"bidirectional"`
		IsBias           bool     `json:"is_bias"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if raw.DModel == nil || raw.NLayer == nil {
		return nil, fmt.Errorf("missing d_model or n_layer")
	}
	m := &MambaConfig{DModel: *raw.DModel, Expand: raw.SSM.Expand, NGroups: raw.SSM.NGroups, DState: raw.SSM.DState,
		DInner: raw.DInner, DXB: raw.DXB, IntermediateSize: raw.IntermediateSize, HiddenAct: raw.HiddenAct,
		NLayer: *raw.NLayer, AttnLayers: raw.AttnLayers, ResidPdrop: raw.ResidPdrop, Bidirectional: raw.Bidirectional,
		IsBias: raw.IsBias}
	switch {
	case raw.LayerNormEps != nil:
		m.NormEps, m.NormEpsKey = *raw.LayerNormEps, "layer_norm_eps"
	case raw.RMSNormEps != nil:
		m.NormEps, m.NormEpsKey = *raw.RMSNormEps, "rms_norm_eps"
	}
	seen := map[int]bool{}
	for _, l := range m.AttnLayers {
		if l < 0 || l >= m.NLayer {
			return nil, fmt.Errorf("attn_layers: layer %d outside [0, %d)", l, m.NLayer)
		}
		if seen[l] {
			return nil, fmt.Errorf("attn_layers: layer %d listed twice", l)
		}
		seen[l] = true
	}
	if !sort.IntsAreSorted(m.AttnLayers) {
		sorted := append([]int(nil), m.AttnLayers...)
		sort.Ints(sorted)
		m.AttnLayers = sorted
	}
	return m, nil
}

// ReadMambaConfig reads DIR/mamba_config.json; ok is false when the file does
// not exist (a plain teacher checkpoint).
func ReadMambaConfig(dir string) (m *MambaConfig, ok bool, err error) {
	path := filepath.Join(dir, MambaConfigName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	m, err = ParseMambaConfig(data)
	if err != nil {
		return nil, true, fmt.Errorf("%s: %w", path, err)
	}
	return m, true, nil
}

// MambaConfigName is the hybrid layout file's name.
const MambaConfigName = "mamba_config.json"

// PythonFloat formats f as Python's repr does (json.dump uses it): shortest
// round-trip digits, scientific outside [1e-4, 1e16), ".0" on integral values.
func PythonFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// Validate checks the vision tower's sizes are usable for a forward pass.
func (v VisionConfig) Validate() error {
	if v.PatchSize <= 0 || v.ImageSize < v.PatchSize {
		return fmt.Errorf("vision_config: image_size %d is smaller than patch_size %d", v.ImageSize, v.PatchSize)
	}
	if v.NumHeads <= 0 || v.HiddenSize%v.NumHeads != 0 {
		return fmt.Errorf("vision_config: hidden_size %d is not a multiple of %d heads", v.HiddenSize, v.NumHeads)
	}
	if v.NumChannels <= 0 || v.IntermediateSize <= 0 || !(v.LayerNormEps > 0) {
		return fmt.Errorf("vision_config: num_channels %d, intermediate_size %d, layer_norm_eps %g: all must be positive",
			v.NumChannels, v.IntermediateSize, v.LayerNormEps)
	}
	return nil
}

// VisionFeatureIndex resolves vision_feature_layer to an index into the
// tower's hidden states (hidden_states[0] is the embeddings, [k] the output
// of layer k−1; negative values count from the end).
func (c *ModelConfig) VisionFeatureIndex() (int, error) {
	n := c.Vision.NumLayers
	idx := c.VisionFeatureLayer
	if idx < 0 {
		idx += n + 1
	}
	if idx < 0 || idx > n {
		return 0, fmt.Errorf("vision_feature_layer %d is outside the %d hidden states of a %d-layer tower",
			c.VisionFeatureLayer, n+1, n)
	}
	return idx, nil
}
