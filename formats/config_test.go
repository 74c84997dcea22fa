package formats

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPythonFloat(t *testing.T) {
	for f, want := range map[float64]string{
		1e-5: "1e-05", 1e-6: "1e-06", 0.1: "0.1", 1: "1.0", 100: "100.0", 1e16: "1e+16", 0.0001: "0.0001",
		1.5e-7: "1.5e-07", 123456789: "123456789.0", 0: "0.0", -2.5: "-2.5", 1e-4 * 0.99: "9.9e-05", 1e15: "1000000000000000.0",
	} {
		if got := PythonFloat(f); got != want {
			t.Errorf("PythonFloat(%v) = %q, want %q", f, got, want)
		}
	}
}

// The golden file was written by Python's json.dump(…, indent=4) (testdata/gen/mamba_config_golden.py).
func TestMambaConfigMarshalMatchesPython(t *testing.T) {
	pd := 0.1
	m := &MambaConfig{DModel: 2560, Expand: 1, NGroups: 32, DState: 80, NormEps: 1e-5, NormEpsKey: "layer_norm_eps",
		DInner: 2560, DXB: 2560, IntermediateSize: 10240, HiddenAct: "gelu_new", NLayer: 32,
		AttnLayers: []int{1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31},
		ResidPdrop: &pd}
	want, err := os.ReadFile("testdata/mamba_config_phi25.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Marshal(); string(got) != string(want) {
		t.Fatalf("Marshal:\n%s\nwant (Python):\n%s", got, want)
	}
	back, err := ParseMambaConfig(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.MambaLayers(); len(got) != 8 || got[0] != 0 || got[7] != 28 {
		t.Errorf("MambaLayers = %v", got)
	}
	if back.NormEpsKey != "layer_norm_eps" || back.NormEps != 1e-5 || *back.ResidPdrop != 0.1 {
		t.Errorf("round trip: %+v", back)
	}
}

func TestParseMambaConfigErrors(t *testing.T) {
	for name, body := range map[string]string{
		"not json":     `{`,
		"no n_layer":   `{"d_model": 8}`,
		"out of range": `{"d_model": 8, "n_layer": 4, "attn_layers": [4]}`,
		"duplicate":    `{"d_model": 8, "n_layer": 4, "attn_layers": [1, 1]}`,
	} {
		if _, err := ParseMambaConfig([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

const phiConfig = `{
  "model_type": "tinyllava", "llm_model_name_or_path": "microsoft/phi-2",
  "vision_model_name_or_path": "google/siglip-so400m-patch14-384", "connector_type": "mlp2x_gelu",
  "hidden_size": 2560, "vocab_size": 51200, "image_token_index": -200, "pad_token_id": 50256,
  "tokenizer_model_max_length": 3072,
  "text_config": {"model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
                  "partial_rotary_factor": 0.4, "resid_pdrop": 0.1, "eos_token_id": 50256},
  "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304, "num_attention_heads": 16,
                    "num_hidden_layers": 27, "patch_size": 14, "model_type": "siglip_vision_model"}
}`

func TestParseModelConfigPhi(t *testing.T) {
	c, err := ParseModelConfig([]byte(phiConfig))
	if err != nil {
		t.Fatal(err)
	}
	tx := c.Text
	if c.Family != Phi || tx.HiddenSize != 2560 || tx.NumLayers != 32 || tx.NumHeads != 32 || tx.NumKVHeads != 32 ||
		tx.HeadDim != 80 || tx.VocabSize != 51200 || tx.HiddenAct != "gelu_new" || tx.NormEps != 1e-5 ||
		tx.RotaryDim() != 32 || tx.TieWordEmbeddings || tx.ResidPdrop != 0.1 || tx.RopeTheta != 10000 {
		t.Errorf("phi text config: %+v", tx)
	}
	v := c.Vision
	if v.HiddenSize != 1152 || v.NumLayers != 27 || v.NumPatches() != 729 || v.LayerNormEps != 1e-6 || v.HiddenAct != "gelu_pytorch_tanh" {
		t.Errorf("vision config: %+v", v)
	}
	if c.ImageTokenIndex != -200 || c.VisionFeatureLayer != -2 || c.VisionFeatureSelectStrategy != "patch" || *c.PadTokenID != 50256 {
		t.Errorf("top level: %+v", c)
	}
}

func TestParseModelConfigQwen2Defaults(t *testing.T) {
	c, err := ParseModelConfig([]byte(`{"llm_model_name_or_path": "Qwen/Qwen2-0.5B", "hidden_size": 896,
		"text_config": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
		"num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0, "tie_word_embeddings": true,
		"vocab_size": 151936}}`))
	if err != nil {
		t.Fatal(err)
	}
	tx := c.Text
	if c.Family != Qwen2 || tx.HeadDim != 64 || tx.NumKVHeads != 2 || !tx.TieWordEmbeddings || tx.RopeTheta != 1e6 ||
		tx.NormEps != 1e-6 || tx.RotaryDim() != 64 {
		t.Errorf("qwen2: %+v", tx)
	}
}

func TestParseModelConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"invalid json": {`{"x"`, "invalid JSON"},
		"unknown":      {`{"llm_model_name_or_path": "mistralai/Mistral-7B"}`, "supported: phi, qwen2, llama"},
		"recognised":   {`{"llm_model_name_or_path": "google/gemma-2b"}`, "not supported yet"},
		"legacy":       {`{"model_type": "tiny_llava_phi", "mm_vision_tower": "x"}`, "legacy"},
		"bad gqa":      {`{"llm_model_name_or_path": "TinyLlama/x", "text_config": {"num_attention_heads": 32, "num_key_value_heads": 5}}`, "multiple"},
		"bad hidden":   {`{"llm_model_name_or_path": "microsoft/phi-2", "hidden_size": 7}`, "disagrees"},
		"wrong type":   {`{"llm_model_name_or_path": "microsoft/phi-2", "text_config": {"hidden_size": "big"}}`, "hidden_size"},
	} {
		_, err := ParseModelConfig([]byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
	_, err := ParseModelConfig([]byte(`{"mm_vision_tower": "x"}`))
	if !errors.Is(err, ErrLegacyLayout) {
		t.Errorf("legacy: %v", err)
	}
}

func TestReadModelConfigNamesFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	os.WriteFile(path, []byte(`{"llm_model_name_or_path": "nope"}`), 0o644)
	_, err := ReadModelConfig(dir)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v does not name %s", err, path)
	}
}

// The fixtures' config.json files were written by the real transformers code (testdata/gen/make_fixtures.py);
// qwen2-tiny keeps transformers 5's rope_parameters form on purpose.
func TestReadModelConfigFixtures(t *testing.T) {
	for _, tc := range []struct {
		dir                          string
		fam                          Family
		hidden, layers, heads, kv, P int
		rotary                       int
		theta, eps                   float64
		tied                         bool
	}{
		{"phi-tiny", Phi, 80, 8, 4, 4, 20, 8, 10000, 1e-5, false},
		{"qwen2-tiny", Qwen2, 64, 8, 4, 2, 16, 16, 1e6, 1e-6, true},
		{"llama-tiny", Llama, 64, 8, 4, 2, 16, 16, 10000, 1e-5, false},
	} {
		c, err := ReadModelConfig(filepath.Join("..", "testdata", "fixtures", tc.dir))
		if err != nil {
			t.Fatal(err)
		}
		tx := c.Text
		if c.Family != tc.fam || tx.HiddenSize != tc.hidden || tx.NumLayers != tc.layers || tx.NumHeads != tc.heads ||
			tx.NumKVHeads != tc.kv || tx.HeadDim != tc.P || tx.RotaryDim() != tc.rotary || tx.RopeTheta != tc.theta ||
			tx.NormEps != tc.eps || tx.TieWordEmbeddings != tc.tied || tx.VocabSize != 1024 {
			t.Errorf("%s: %+v", tc.dir, tx)
		}
		if v := c.Vision; v.HiddenSize != 32 || v.NumLayers != 3 || v.NumPatches() != 16 || v.ImageSize != 56 {
			t.Errorf("%s vision: %+v", tc.dir, v)
		}
	}
}

func TestVisionChecks(t *testing.T) {
	c, err := ParseModelConfig([]byte(phiConfig))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Vision.Validate(); err != nil {
		t.Fatal(err)
	}
	if idx, err := c.VisionFeatureIndex(); err != nil || idx != 26 { // −2 of 27 layers: output of layer 25
		t.Errorf("feature index %d, %v", idx, err)
	}
	c.VisionFeatureLayer = -29
	if _, err := c.VisionFeatureIndex(); err == nil {
		t.Error("feature layer −29 of 27 accepted")
	}
	v := c.Vision
	v.NumHeads = 7
	if err := v.Validate(); err == nil || !strings.Contains(err.Error(), "multiple") {
		t.Errorf("7 heads: %v", err)
	}
	v = c.Vision
	v.PatchSize = 0
	if err := v.Validate(); err == nil {
		t.Error("patch size 0 accepted")
	}
}
