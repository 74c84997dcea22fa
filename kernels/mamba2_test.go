package kernels

import (
	"strings"
	"testing"
)

func TestMamba2ConfigSizes(t *testing.T) {
	// Phi-2 as MaTVLM converts it (SPEC §3).
	c := Mamba2Config{DModel: 2560, NHeads: 32, HeadDim: 80, DState: 80, NGroups: 32, DXB: 2560, ConvKernel: 4, NormEps: 1e-5, Chunk: 64}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.DInner() != 2560 || c.ConvDim() != 7680 || c.DProj() != 2*2560+2*2560+32 {
		t.Errorf("sizes: d_inner %d conv %d proj %d", c.DInner(), c.ConvDim(), c.DProj())
	}
	// Qwen2-0.5B: 14 heads, 2 KV heads of 64.
	q := Mamba2Config{DModel: 896, NHeads: 14, HeadDim: 64, DState: 64, NGroups: 14, DXB: 128, ConvKernel: 4, NormEps: 1e-5, Chunk: 64}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	if q.DProj() != 896+128+128+896+14 {
		t.Errorf("qwen2 in_proj rows %d", q.DProj())
	}
}

func TestMamba2ConfigErrors(t *testing.T) {
	base := Mamba2Config{DModel: 24, NHeads: 4, HeadDim: 6, DState: 6, NGroups: 4, DXB: 12, ConvKernel: 4, NormEps: 1e-5, Chunk: 8}
	for _, c := range []struct {
		name string
		edit func(*Mamba2Config)
		want string
	}{
		{"zero heads", func(c *Mamba2Config) { c.NHeads = 0 }, "nheads"},
		{"groups not dividing heads", func(c *Mamba2Config) { c.NGroups = 3 }, "ngroups"},
		{"d_xb not whole heads", func(c *Mamba2Config) { c.DXB = 9 }, "d_xb"},
		{"kv heads not dividing heads", func(c *Mamba2Config) { c.DXB = 18 }, "d_xb"},
		{"negative eps", func(c *Mamba2Config) { c.NormEps = -1 }, "eps"},
		{"zero chunk", func(c *Mamba2Config) { c.Chunk = 0 }, "chunk"},
	} {
		cfg := base
		c.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", c.name, err, c.want)
		}
	}
}
