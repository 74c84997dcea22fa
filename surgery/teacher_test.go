package surgery

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/layout"
)

// tinyConfigs are TinyLLaVA config.json files of tiny models of each family.
var tinyConfigs = map[formats.Family]string{
	formats.Phi: `{"model_type": "tinyllava", "llm_model_name_or_path": "microsoft/phi-2", "connector_type": "mlp2x_gelu",
  "hidden_size": 80, "vocab_size": 96,
  "text_config": {"model_type": "phi", "hidden_size": 80, "intermediate_size": 160, "num_hidden_layers": 8,
    "num_attention_heads": 4, "partial_rotary_factor": 0.4, "vocab_size": 96, "resid_pdrop": 0.1},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 28, "patch_size": 14}}`,
	formats.Qwen2: `{"model_type": "tinyllava", "llm_model_name_or_path": "Qwen/Qwen2-0.5B", "connector_type": "mlp2x_gelu",
  "hidden_size": 64, "vocab_size": 96,
  "text_config": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96, "tie_word_embeddings": true, "rope_theta": 1000000.0},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 28, "patch_size": 14}}`,
	formats.Llama: `{"model_type": "tinyllava", "llm_model_name_or_path": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "connector_type": "mlp2x_gelu",
  "hidden_size": 64, "vocab_size": 96,
  "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 28, "patch_size": 14}}`,
}

// makeTeacher writes a random tiny teacher of a family in dtype dt, in
// shards files (1 = unsharded), with a tokenizer.json side file.
func makeTeacher(t testing.TB, fam formats.Family, dt formats.DType, shards int, seed uint64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "teacher-"+string(fam))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfgText := tinyConfigs[fam]
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(`{"version": "1.0", "model": {"type": "BPE"}}`), 0o644)
	cfg, err := formats.ParseModelConfig([]byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	specs, err := layout.Expected(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for i := range specs {
		specs[i].DType = dt
		total += numel(specs[i].Shape) * int64(dt.Size())
	}
	opts := formats.WriterOptions{Metadata: map[string]string{"format": "pt"}}
	if shards > 1 {
		opts.MaxShardSize = total/int64(shards) + 1
	}
	w, err := formats.NewWriter(dir, specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 99))
	for _, s := range specs {
		v := make([]float32, numel(s.Shape))
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.1)
		}
		b := make([]byte, len(v)*dt.Size())
		if err := formats.EncodeFloat32(dt, v, b); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteBytes(s.Name, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func mustRaw(t testing.TB, c *formats.Checkpoint, name string) []byte {
	t.Helper()
	b, err := c.Raw(name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func fileHashes(t testing.TB, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		h, err := SHA256File(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = h
	}
	return out
}

func layerName(l int, rest string) string {
	return fmt.Sprintf("language_model.model.layers.%d.%s", l, rest)
}
