package conformance

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Golden is one file of testdata/golden/kernels: float64 tensors written by
// testdata/gen/kernels_ref.py (PyTorch, float64) and the case's parameters.
type Golden struct {
	Path    string
	Tensors map[string]*reference.Array
	Meta    map[string]string
}

// ReadGolden reads a safetensors file whose tensors are all F64. It is a
// deliberately small reader for test data, independent of package formats.
func ReadGolden(path string) (*Golden, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 8 {
		return nil, fmt.Errorf("golden %s: %d bytes, too short for a safetensors header", path, len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > uint64(len(data)-8) {
		return nil, fmt.Errorf("golden %s: header length %d past the end of the file", path, n)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+n], &header); err != nil {
		return nil, fmt.Errorf("golden %s: header: %w", path, err)
	}
	buf := data[8+n:]
	g := &Golden{Path: path, Tensors: map[string]*reference.Array{}, Meta: map[string]string{}}
	for name, raw := range header {
		if name == "__metadata__" {
			if err := json.Unmarshal(raw, &g.Meta); err != nil {
				return nil, fmt.Errorf("golden %s: metadata: %w", path, err)
			}
			continue
		}
		var info struct {
			DType   string `json:"dtype"`
			Shape   []int  `json:"shape"`
			Offsets [2]int `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &info); err != nil {
			return nil, fmt.Errorf("golden %s: tensor %s: %w", path, name, err)
		}
		if info.DType != "F64" {
			return nil, fmt.Errorf("golden %s: tensor %s is %s, want F64", path, name, info.DType)
		}
		count := prod(info.Shape)
		b, e := info.Offsets[0], info.Offsets[1]
		if b < 0 || e > len(buf) || e-b != 8*count {
			return nil, fmt.Errorf("golden %s: tensor %s: offsets [%d,%d) do not hold %v F64 in a %d-byte buffer", path, name, b, e, info.Shape, len(buf))
		}
		vals := make([]float64, count)
		for i := range vals {
			vals[i] = math.Float64frombits(binary.LittleEndian.Uint64(buf[b+8*i:]))
		}
		a, err := reference.FromData(vals, info.Shape...)
		if err != nil {
			return nil, fmt.Errorf("golden %s: tensor %s: %w", path, name, err)
		}
		g.Tensors[name] = a
	}
	return g, nil
}

// Tensor returns the named tensor or an error naming the file.
func (g *Golden) Tensor(name string) (*reference.Array, error) {
	a, ok := g.Tensors[name]
	if !ok {
		names := make([]string, 0, len(g.Tensors))
		for n := range g.Tensors {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("golden %s: no tensor %q (has %v)", g.Path, name, names)
	}
	return a, nil
}

// Int and Float parse a metadata value.
func (g *Golden) Int(key string) (int, error) {
	v, err := strconv.Atoi(g.Meta[key])
	if err != nil {
		return 0, fmt.Errorf("golden %s: metadata %s: %w", g.Path, key, err)
	}
	return v, nil
}

func (g *Golden) Float(key string) (float64, error) {
	v, err := strconv.ParseFloat(g.Meta[key], 64)
	if err != nil {
		return 0, fmt.Errorf("golden %s: metadata %s: %w", g.Path, key, err)
	}
	return v, nil
}

// Mamba2Config reads a mixer case's sizes from the metadata.
func (g *Golden) Mamba2Config() (kernels.Mamba2Config, error) {
	var c kernels.Mamba2Config
	for _, f := range []struct {
		key string
		dst *int
	}{{"d_model", &c.DModel}, {"nheads", &c.NHeads}, {"headdim", &c.HeadDim}, {"d_state", &c.DState},
		{"ngroups", &c.NGroups}, {"d_xb", &c.DXB}, {"conv_kernel", &c.ConvKernel}, {"chunk", &c.Chunk}} {
		v, err := g.Int(f.key)
		if err != nil {
			return c, err
		}
		*f.dst = v
	}
	eps, err := g.Float("norm_eps")
	c.NormEps = float32(eps)
	return c, err
}

// Mamba2Weights returns the mixer weights of a golden file, conv1d weight
// reshaped from [ch, 1, k] to [ch, k].
func (g *Golden) Mamba2Weights() (reference.Mamba2Weights, error) {
	var w reference.Mamba2Weights
	var err error
	get := func(name string) *reference.Array {
		if err != nil {
			return nil
		}
		var a *reference.Array
		a, err = g.Tensor(name)
		return a
	}
	w.InProj = get("in_proj")
	conv := get("conv1d_weight")
	w.Conv1dBias = get("conv1d_bias")
	w.DtBias = get("dt_bias")
	w.ALog = get("A_log")
	w.D = get("D")
	w.NormWeight = get("norm_weight")
	w.OutProj = get("out_proj")
	if err != nil {
		return w, err
	}
	if len(conv.Shape) != 3 || conv.Shape[1] != 1 {
		return w, fmt.Errorf("golden %s: conv1d_weight has shape %v, want [ch, 1, k]", g.Path, conv.Shape)
	}
	w.Conv1dWeight, err = conv.Reshape(conv.Shape[0], conv.Shape[2])
	return w, err
}

// RopeParams parses "rot=R theta=T pos0=P" from the metadata key.
func (g *Golden) RopeParams(key string) (rot int, theta float64, pos0 int, err error) {
	s, ok := g.Meta[key]
	if !ok {
		return 0, 0, 0, fmt.Errorf("golden %s: no metadata %q", g.Path, key)
	}
	_, err = fmt.Sscanf(strings.TrimSpace(s), "rot=%d theta=%g pos0=%d", &rot, &theta, &pos0)
	if err != nil {
		err = fmt.Errorf("golden %s: metadata %s=%q: %w", g.Path, key, s, err)
	}
	return
}

// RunGolden checks a backend against the PyTorch float64 outputs stored in
// dir (testdata/golden/kernels). Inputs reach the backend rounded to
// float32, so the errors include the propagation of that rounding; the
// tolerances are the suite's.
func RunGolden(t *testing.T, newBackend func() kernels.Backend, dir string, tol Tolerances) {
	t.Helper()
	be := newBackend()
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Name(), err)
		}
	})
	s := &suite{be: be, tol: tol}
	load := func(e *env, file string) *Golden {
		e.Helper()
		g, err := ReadGolden(filepath.Join(dir, file))
		if err != nil {
			e.Fatal(err)
		}
		return g
	}
	for _, c := range []struct {
		name, file string
		fn         func(*env, *Golden)
	}{
		{"Mamba2Mixer", "mamba2_mixer.safetensors", s.goldenMixer},
		// ngroups = 1: the layout transformers' Mamba2Mixer shares with ours; kernels_ref.py checked this golden against it.
		{"Mamba2MixerNGroups1", "mamba2_mixer_ngroups1.safetensors", s.goldenMixer},
		{"SSDScan", "ssd_scan.safetensors", s.goldenSSD},
		{"LinearAttention", "linear_attention.safetensors", s.goldenLinear},
		{"SoftmaxAttention", "softmax_attention.safetensors", s.goldenSoftmax},
		{"RoPE", "rope.safetensors", s.goldenRoPE},
		{"NormsActivations", "norms_activations.safetensors", s.goldenNorms},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := s.env(t)
			c.fn(e, load(e, c.file))
		})
	}
}

// gt returns a golden tensor, failing the test when it is missing.
func (e *env) gt(g *Golden, name string) *reference.Array {
	e.Helper()
	a, err := g.Tensor(name)
	if err != nil {
		e.Fatal(err)
	}
	return a
}

// up32 uploads a golden float64 array rounded to float32.
func (e *env) up32(a *reference.Array) kernels.Tensor {
	e.Helper()
	return e.up(reference.RoundFloat32(a))
}

func (s *suite) goldenMixer(e *env, g *Golden) {
	cfg, err := g.Mamba2Config()
	e.must("config", err)
	w, err := g.Mamba2Weights()
	e.must("weights", err)
	hidden, want := e.gt(g, "hidden"), e.gt(g, "out")
	conv3 := e.gt(g, "conv1d_weight")
	bw := kernels.Mamba2Weights{
		InProj: e.up32(w.InProj), Conv1dWeight: e.up32(conv3), Conv1dBias: e.up32(w.Conv1dBias),
		DtBias: e.up32(w.DtBias), ALog: e.up32(w.ALog), D: e.up32(w.D),
		NormWeight: e.up32(w.NormWeight), OutProj: e.up32(w.OutProj),
	}
	for _, chunked := range []bool{false, true} {
		out, err := kernels.Mamba2Forward(e.be, cfg, bw, e.up32(hidden), chunked)
		e.must("mamba2 forward", err)
		e.check(name("golden mixer chunked=%v", chunked), e.down(out), want, e.tol.Mixer)
		e.be.Free(out)
	}
}

func (s *suite) goldenSSD(e *env, g *Golden) {
	chunk, err := g.Int("chunk")
	e.must("chunk", err)
	x, dt, A, B, C, D := e.gt(g, "x"), e.gt(g, "dt"), e.gt(g, "A"), e.gt(g, "B"), e.gt(g, "C"), e.gt(g, "D")
	s0, wantY, wantS := e.gt(g, "state_in"), e.gt(g, "y"), e.gt(g, "state_out")
	for _, chunked := range []bool{false, true} {
		y := e.poisoned(x.Shape...)
		st := e.up32(s0)
		if chunked {
			e.must("ssd chunk scan", e.be.SSDChunkScan(y, e.up32(x), e.up32(dt), e.up32(A), e.up32(B), e.up32(C), e.up32(D), st, chunk))
		} else {
			e.must("ssd recurrence", e.be.SSDRecurrence(y, e.up32(x), e.up32(dt), e.up32(A), e.up32(B), e.up32(C), e.up32(D), st))
		}
		e.check(name("golden ssd chunked=%v y", chunked), e.down(y), wantY, e.tol.Scan)
		e.check(name("golden ssd chunked=%v final state", chunked), e.down(st), wantS, e.tol.Scan)
	}
}

func (s *suite) goldenLinear(e *env, g *Golden) {
	q, k, v, want := e.gt(g, "q"), e.gt(g, "k"), e.gt(g, "v"), e.gt(g, "out")
	out := e.poisoned(q.Shape...)
	e.must("linearattention", e.be.LinearAttention(out, e.up32(q), e.up32(k), e.up32(v)))
	e.check("golden linear attention", e.down(out), want, e.tol.Scan)
}

func (s *suite) goldenSoftmax(e *env, g *Golden) {
	scale, err := g.Float("scale")
	e.must("scale", err)
	q, k, v := e.gt(g, "q"), e.gt(g, "k"), e.gt(g, "v")
	for _, causal := range []bool{true, false} {
		key := "out_full"
		if causal {
			key = "out_causal"
		}
		out := e.poisoned(q.Shape...)
		e.must("softmaxattention", e.be.SoftmaxAttention(out, e.up32(q), e.up32(k), e.up32(v), float32(scale), causal))
		e.check("golden softmax attention "+key, e.down(out), e.gt(g, key), e.tol.F32)
	}
}

func (s *suite) goldenRoPE(e *env, g *Golden) {
	for _, c := range []string{"full", "partial", "far"} {
		rot, theta, pos0, err := g.RopeParams(c)
		e.must("rope params", err)
		x := e.up32(e.gt(g, "x_"+c))
		e.must("rope", e.be.RoPE(x, rot, theta, pos0))
		e.check("golden rope "+c, e.down(x), e.gt(g, "out_"+c), e.tol.F32)
	}
}

func (s *suite) goldenNorms(e *env, g *Golden) {
	lnEps, err := g.Float("layernorm_eps")
	e.must("eps", err)
	rmsEps, err := g.Float("rmsnorm_eps")
	e.must("eps", err)
	gEps, err := g.Float("gated_eps")
	e.must("eps", err)
	group, err := g.Int("gated_group")
	e.must("group", err)
	x, w, b, z := e.gt(g, "x"), e.gt(g, "weight"), e.gt(g, "bias"), e.gt(g, "z")

	out := e.poisoned(x.Shape...)
	e.must("layernorm", e.be.LayerNorm(out, e.up32(x), e.up32(w), e.up32(b), float32(lnEps)))
	e.check("golden layernorm", e.down(out), e.gt(g, "layernorm"), e.tol.F32)
	out = e.poisoned(x.Shape...)
	e.must("rmsnorm", e.be.RMSNorm(out, e.up32(x), e.up32(w), float32(rmsEps)))
	e.check("golden rmsnorm", e.down(out), e.gt(g, "rmsnorm"), e.tol.F32)
	out = e.poisoned(x.Shape...)
	e.must("gatedrmsnorm", e.be.GatedRMSNorm(out, e.up32(x), e.up32(z), e.up32(w), group, float32(gEps)))
	e.check("golden gated rmsnorm", e.down(out), e.gt(g, "gated_rmsnorm"), e.tol.F32)

	a := e.gt(g, "a")
	for _, c := range []struct {
		key  string
		call func(out, x kernels.Tensor) error
	}{
		{"gelu_erf", func(o, x kernels.Tensor) error { return e.be.GELU(o, x, kernels.GELUErf) }},
		{"gelu_tanh", func(o, x kernels.Tensor) error { return e.be.GELU(o, x, kernels.GELUTanh) }},
		{"silu", e.be.SiLU},
	} {
		out := e.poisoned(a.Shape...)
		e.must(c.key, c.call(out, e.up32(a)))
		e.check("golden "+c.key, e.down(out), e.gt(g, c.key), e.tol.F32)
	}
	spIn := e.gt(g, "softplus_in")
	out = e.poisoned(spIn.Shape...)
	e.must("dtsoftplus", e.be.DtSoftplus(out, e.up32(spIn), nil))
	e.check("golden softplus", e.down(out), e.gt(g, "softplus"), e.tol.F32)

	u := e.gt(g, "conv_u")
	out = e.poisoned(u.Shape...)
	e.must("causalconv1d", e.be.CausalConv1d(out, e.up32(u), e.up32(e.gt(g, "conv_weight")), e.up32(e.gt(g, "conv_bias")), true))
	e.check("golden causal conv1d + silu", e.down(out), e.gt(g, "conv_silu"), e.tol.F32)
}
