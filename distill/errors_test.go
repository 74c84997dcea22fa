package distill

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Bad inputs are errors that say what is wrong, never panics.
func TestInputErrors(t *testing.T) {
	s := loadStudent(t, "qwen2-tiny-h25", Options{Workers: 2})
	other := loadStudent(t, "qwen2-tiny-h25", Options{Workers: 2})
	d, V := s.Hidden(), s.Vocab()
	px := make([]float32, s.PixelCount())
	for i := range px {
		px[i] = float32(i%7)/7 - 0.5
	}
	ok := func() *Pass {
		p, err := s.Forward(Input{IDs: []int{1, 2, 3}, LayerInputs: map[int][]float32{0: make([]float32, 3*d)}}, true)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	nan := float32(math.NaN())
	cases := []struct {
		name, want string
		call       func() error
	}{
		{"no ids", "no input ids", func() error { _, err := s.Forward(Input{}, true); return err }},
		{"ids and embeddings", "both", func() error {
			_, err := s.Forward(Input{IDs: []int{1}, Embeds: make([]float32, d)}, true)
			return err
		}},
		{"id past the vocabulary", "outside the vocabulary", func() error { _, err := s.Forward(Input{IDs: []int{1, V}}, true); return err }},
		{"negative id", "outside the vocabulary", func() error { _, err := s.Forward(Input{IDs: []int{-1}}, true); return err }},
		{"placeholder without pixels", "pixel values", func() error { _, err := s.Forward(Input{IDs: []int{1, -200}}, true); return err }},
		{"pixels without placeholder", "pixel values", func() error { _, err := s.Forward(Input{IDs: []int{1}, Pixels: px}, true); return err }},
		{"NaN pixel", "NaN", func() error {
			bad := slices.Clone(px)
			bad[9] = nan
			_, err := s.Forward(Input{IDs: []int{-200}, Pixels: bad}, true)
			return err
		}},
		{"ragged embeddings", "multiple of hidden", func() error { _, err := s.Forward(Input{Embeds: make([]float32, d+1)}, true); return err }},
		{"infinite embedding", "Inf", func() error {
			e := make([]float32, d)
			e[1] = float32(math.Inf(1))
			_, err := s.Forward(Input{Embeds: e}, true)
			return err
		}},
		{"layer input for an attention layer", "not a Mamba layer", func() error {
			_, err := s.Forward(Input{IDs: []int{1}, LayerInputs: map[int][]float32{1: make([]float32, d)}}, true)
			return err
		}},
		{"short layer input", "layer input for layer 4", func() error {
			_, err := s.Forward(Input{IDs: []int{1, 2}, LayerInputs: map[int][]float32{4: make([]float32, d)}}, true)
			return err
		}},
		{"forward layer out of range", "8 layers", func() error { _, err := s.ForwardLayer(8, make([]float32, d)); return err }},
		{"forward layer ragged", "multiple of hidden", func() error { _, err := s.ForwardLayer(0, make([]float32, 3)); return err }},
		{"backward nil pass", "no pass", func() error { return s.Backward(nil, nil, nil) }},
		{"backward unsaved", "without save", func() error {
			p, err := s.Forward(Input{IDs: []int{1}}, false)
			if err != nil {
				return err
			}
			return s.Backward(p, nil, nil)
		}},
		{"backward of another student's pass", "another student", func() error { return other.Backward(ok(), nil, nil) }},
		{"short dlogits", "dlogits", func() error { return s.Backward(ok(), make([]float32, V), nil) }},
		{"NaN dlogits", "NaN", func() error {
			g := make([]float32, 3*V)
			g[4] = nan
			return s.Backward(ok(), g, nil)
		}},
		{"gradient for a layer without input", "no layer input", func() error {
			return s.Backward(ok(), nil, map[int][]float32{4: make([]float32, 3*d)})
		}},
		{"short layer gradient", "layer 0 output gradient", func() error {
			return s.Backward(ok(), nil, map[int][]float32{0: make([]float32, d)})
		}},
		{"backward twice", "already", func() error {
			p := ok()
			if err := s.Backward(p, make([]float32, 3*V), nil); err != nil {
				return fmt.Errorf("first backward: %w", err)
			}
			return s.Backward(p, make([]float32, 3*V), nil)
		}},
	}
	for _, c := range cases {
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return c.call()
		}()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}

// Checkpoints the Student cannot use are load errors naming the problem.
func TestLoadErrors(t *testing.T) {
	teacher := filepath.Join(fixtures, "phi-tiny")
	if _, err := LoadStudent(teacher, Options{}); err == nil || !strings.Contains(err.Error(), "not a hybrid") {
		t.Errorf("teacher checkpoint: %v", err)
	}
	if _, err := LoadStudent(filepath.Join(fixtures, "phi-tiny-h25"), Options{Chunk: -1}); err == nil || !strings.Contains(err.Error(), "chunk") {
		t.Errorf("negative chunk: %v", err)
	}
	if _, err := LoadStudent(filepath.Join(t.TempDir(), "none"), Options{}); err == nil {
		t.Errorf("missing directory: no error")
	}
	// A hybrid whose mamba_config.json names a Mamba layer the weights lack.
	dir := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(fixtures, "qwen2-tiny", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mc, err := os.ReadFile(filepath.Join(fixtures, "qwen2-tiny-h25", "mamba_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mamba_config.json"), mc, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadStudent(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "layer 0") || !strings.Contains(err.Error(), "mamba.conv1d.weight") {
		t.Errorf("hybrid config over teacher weights: %v", err)
	} else {
		t.Log(err)
	}
}
