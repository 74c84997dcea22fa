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
