package formats

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestFloatTensorChecks(t *testing.T) {
	c, err := Open(filepath.Join("..", "testdata", "fixtures", "llama-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	name := "language_model.model.embed_tokens.weight"
	v, err := c.Float32Shaped(name, 1024, 64)
	if err != nil || len(v) != 1024*64 {
		t.Fatalf("Float32Shaped: %d values, %v", len(v), err)
	}
	for _, tc := range []struct {
		name  string
		shape []int
		want  string
	}{
		{name, []int{1024}, "has shape"},
		{name, []int{64, 1024}, "has shape"},
		{"nope", []int{1}, "is missing"},
	} {
		if _, err := c.FloatTensor(tc.name, tc.shape...); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("FloatTensor(%s, %v) = %v, want %q", tc.name, tc.shape, err, tc.want)
		}
	}
}

func TestStackRows(t *testing.T) {
	c, err := Open(filepath.Join("..", "testdata", "fixtures", "phi-tiny")) // BF16, hidden 80
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := "language_model.model.layers.1.self_attn."
	names := []string{p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight"}
	rows := []int{80, 80, 80}
	bits, f32, err := c.StackRows(names, rows, 80, true)
	if err != nil || bits == nil || f32 != nil || len(bits) != 240*80 {
		t.Fatalf("bf16 stack: %d bits, %v", len(bits), err)
	}
	_, wide, err := c.StackRows(names, rows, 80, false)
	if err != nil || len(wide) != 240*80 {
		t.Fatalf("f32 stack: %v", err)
	}
	for i, n := range names {
		want, _ := c.Float32(n)
		for j, w := range want {
			k := i*80*80 + j
			if wide[k] != w || BF16ToF32(bits[k]) != w {
				t.Fatalf("%s[%d]: %v / %v, want %v", n, j, wide[k], BF16ToF32(bits[k]), w)
			}
		}
	}
	if _, _, err := c.StackRows(names, []int{80, 80, 79}, 80, true); err == nil {
		t.Error("wrong rows accepted")
	}
	q, err := Open(filepath.Join("..", "testdata", "fixtures", "qwen2-tiny")) // q/k/v biases, no o bias
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	qp := "language_model.model.layers.0.self_attn."
	b, err := q.StackOptionalVectors([]string{qp + "q_proj.bias", qp + "o_proj.bias", qp + "v_proj.bias"}, []int{64, 5, 32})
	if err != nil || len(b) != 64+5+32 {
		t.Fatalf("biases: %d, %v", len(b), err)
	}
	for _, v := range b[64:69] {
		if v != 0 {
			t.Fatal("absent bias not zero")
		}
	}
	if none, err := q.StackOptionalVectors([]string{qp + "o_proj.bias"}, []int{64}); none != nil || err != nil {
		t.Errorf("no biases: %v, %v", none, err)
	}
}
