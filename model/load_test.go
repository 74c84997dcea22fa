package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/cpu"
)

// copyFixture copies a fixture's files into a temporary directory.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(filepath.Join(fixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(fixtures, name, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// edit replaces old by new in dir/file, failing when old is absent.
func edit(t *testing.T, dir, file, old, new string) {
	t.Helper()
	p := filepath.Join(dir, file)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s has no %q", file, old)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(data), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Broken checkpoints are load errors naming the file, tensor or field at
// fault.
func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name    string
		fixture string
		break_  func(t *testing.T, dir string)
		want    string
	}{
		{"mamba_config on a teacher's weights", "phi-tiny", func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(fixtures, "phi-tiny-h25", "mamba_config.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "mamba_config.json"), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "layers.0.mamba.conv1d.weight is missing"},
		{"n_layer disagrees", "qwen2-tiny-h25", func(t *testing.T, dir string) {
			edit(t, dir, "mamba_config.json", `"n_layer": 8`, `"n_layer": 9`)
		}, "n_layer 9"},
		{"d_inner disagrees with in_proj", "qwen2-tiny-h25", func(t *testing.T, dir string) {
			edit(t, dir, "mamba_config.json", `"d_xb": 32`, `"d_xb": 16`)
		}, "mamba.in_proj.weight has shape"},
		{"intermediate_size disagrees with fc1", "phi-tiny", func(t *testing.T, dir string) {
			edit(t, dir, "config.json", `"intermediate_size": 256`, `"intermediate_size": 255`)
		}, "mlp.fc1.weight has shape [256 80], want [255 80]"},
		{"unsupported activation", "llama-tiny", func(t *testing.T, dir string) {
			edit(t, dir, "config.json", `"hidden_act": "silu"`, `"hidden_act": "relu"`)
		}, `hidden_act "relu"`},
		{"unsupported feature strategy", "llama-tiny", func(t *testing.T, dir string) {
			edit(t, dir, "config.json", `"vision_feature_select_strategy": "patch"`, `"vision_feature_select_strategy": "full"`)
		}, `vision_feature_select_strategy "full"`},
		{"feature layer outside the tower", "llama-tiny", func(t *testing.T, dir string) {
			edit(t, dir, "config.json", `"vision_feature_layer": -2`, `"vision_feature_layer": -5`)
		}, "vision_feature_layer -5"},
		{"missing shard", "phi-tiny", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "model-00002-of-00003.safetensors")); err != nil {
				t.Fatal(err)
			}
		}, "model-00002-of-00003.safetensors"},
		{"truncated file", "llama-tiny", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, "model.safetensors"), 100_000); err != nil {
				t.Fatal(err)
			}
		}, "model.safetensors"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyFixture(t, c.fixture)
			c.break_(t, dir)
			be := cpu.New(1)
			defer be.Close()
			m, err := Load(dir, be, Options{})
			if err == nil {
				m.Close()
				t.Fatalf("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			t.Logf("%v", err)
		})
	}
}
