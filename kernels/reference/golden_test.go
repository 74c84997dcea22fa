package reference_test

import (
	"path/filepath"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// The float64 references against PyTorch's float64 outputs: they must agree
// to float64 rounding (1e-12 relative).
const goldenTol = 1e-12

func golden(t *testing.T, file string) *conformance.Golden {
	t.Helper()
	g, err := conformance.ReadGolden(filepath.Join("..", "..", "testdata", "golden", "kernels", file))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func tensor(t *testing.T, g *conformance.Golden, name string) *reference.Array {
	t.Helper()
	a, err := g.Tensor(name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func agree(t *testing.T, what string, got *reference.Array, err error, want *reference.Array) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if e := conformance.RelErr(got.Data, want.Data); !(e <= goldenTol) {
		t.Errorf("%s: relative error %.3g > %.0g", what, e, goldenTol)
	} else {
		t.Logf("%s: relative error %.3g", what, e)
	}
}

func TestGoldenMixer(t *testing.T) {
	g := golden(t, "mamba2_mixer.safetensors")
	cfg, err := g.Mamba2Config()
	if err != nil {
		t.Fatal(err)
	}
	w, err := g.Mamba2Weights()
	if err != nil {
		t.Fatal(err)
	}
	out, err := reference.Mamba2Mixer(cfg, w, tensor(t, g, "hidden"))
	agree(t, "mixer", out, err, tensor(t, g, "out"))
}

func TestGoldenSSD(t *testing.T) {
	g := golden(t, "ssd_scan.safetensors")
	chunk, err := g.Int("chunk")
	if err != nil {
		t.Fatal(err)
	}
	x, dt, A := tensor(t, g, "x"), tensor(t, g, "dt"), tensor(t, g, "A")
	B, C, D, s0 := tensor(t, g, "B"), tensor(t, g, "C"), tensor(t, g, "D"), tensor(t, g, "state_in")
	y, s, err := reference.SSDRecurrence(x, dt, A, B, C, D, s0)
	agree(t, "recurrence y", y, err, tensor(t, g, "y"))
	agree(t, "recurrence state", s, err, tensor(t, g, "state_out"))
	y, s, err = reference.SSDChunked(x, dt, A, B, C, D, s0, chunk)
	agree(t, "chunked y", y, err, tensor(t, g, "y"))
	agree(t, "chunked state", s, err, tensor(t, g, "state_out"))
}

func TestGoldenAttention(t *testing.T) {
	g := golden(t, "linear_attention.safetensors")
	out, err := reference.LinearAttention(tensor(t, g, "q"), tensor(t, g, "k"), tensor(t, g, "v"))
	agree(t, "linear attention", out, err, tensor(t, g, "out"))

	g = golden(t, "softmax_attention.safetensors")
	scale, err := g.Float("scale")
	if err != nil {
		t.Fatal(err)
	}
	q, k, v := tensor(t, g, "q"), tensor(t, g, "k"), tensor(t, g, "v")
	out, err = reference.SoftmaxAttention(q, k, v, scale, true)
	agree(t, "softmax attention causal", out, err, tensor(t, g, "out_causal"))
	out, err = reference.SoftmaxAttention(q, k, v, scale, false)
	agree(t, "softmax attention full", out, err, tensor(t, g, "out_full"))
}

func TestGoldenRoPE(t *testing.T) {
	g := golden(t, "rope.safetensors")
	for _, c := range []string{"full", "partial", "far"} {
		rot, theta, pos0, err := g.RopeParams(c)
		if err != nil {
			t.Fatal(err)
		}
		out, err := reference.RoPE(tensor(t, g, "x_"+c), rot, theta, pos0)
		agree(t, "rope "+c, out, err, tensor(t, g, "out_"+c))
	}
}

func TestGoldenNormsActivations(t *testing.T) {
	g := golden(t, "norms_activations.safetensors")
	x, w, b, z := tensor(t, g, "x"), tensor(t, g, "weight"), tensor(t, g, "bias"), tensor(t, g, "z")
	out, err := reference.LayerNorm(x, w, b, 1e-5)
	agree(t, "layernorm", out, err, tensor(t, g, "layernorm"))
	out, err = reference.RMSNorm(x, w, 1e-6)
	agree(t, "rmsnorm", out, err, tensor(t, g, "rmsnorm"))
	out, err = reference.GatedRMSNorm(x, z, w, 10, 1e-5)
	agree(t, "gated rmsnorm", out, err, tensor(t, g, "gated_rmsnorm"))
	a := tensor(t, g, "a")
	agree(t, "gelu erf", reference.GELU(a, false), nil, tensor(t, g, "gelu_erf"))
	agree(t, "gelu tanh", reference.GELU(a, true), nil, tensor(t, g, "gelu_tanh"))
	agree(t, "silu", reference.SiLU(a), nil, tensor(t, g, "silu"))
	out, err = reference.DtSoftplus(tensor(t, g, "softplus_in"), nil)
	agree(t, "softplus", out, err, tensor(t, g, "softplus"))
	out, err = reference.CausalConv1d(tensor(t, g, "conv_u"), tensor(t, g, "conv_weight"), tensor(t, g, "conv_bias"), true)
	agree(t, "causal conv1d + silu", out, err, tensor(t, g, "conv_silu"))
}
