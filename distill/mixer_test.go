package distill

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// scanInputs are random operands of a scan: dt = softplus of a normal
// around dtMid, A = −exp(A_log) with A_log = log U(1, aMax).
type scanInputs struct {
	x, dt, B, C, D []float32
	A              []float64
}

func newScanInputs(rng *rand.Rand, sh ssdShape, dtMid, aMax float64) scanInputs {
	var in scanInputs
	in.x = randn(rng, sh.n*sh.heads*sh.headDim, 1)
	in.B = randn(rng, sh.n*sh.groups*sh.dstate, 1)
	in.C = randn(rng, sh.n*sh.groups*sh.dstate, 1)
	in.D = uniform(rng, sh.heads, 0.5, 1.5)
	in.dt = make([]float32, sh.n*sh.heads)
	for i := range in.dt {
		in.dt[i] = float32(softplus(dtMid + rng.NormFloat64()))
	}
	in.A = make([]float64, sh.heads)
	for h := range in.A {
		// A as the mixer computes it from a float32 A_log.
		in.A[h] = -math.Exp(float64(float32(math.Log(1 + (aMax-1)*rng.Float64()))))
	}
	return in
}

// scanGradients runs the forward with saved states and the backward.
func scanGradients(p *pool, sh ssdShape, in scanInputs, up []float32) (y, dx, ddt, dB, dC []float32, dA, dD []float64) {
	states := make([]float64, sh.statesSize())
	y = make([]float32, sh.n*sh.heads*sh.headDim)
	ssdForward(p, sh, y, in.x, in.dt, in.A, in.B, in.C, in.D, states)
	dx, ddt = make([]float32, len(in.x)), make([]float32, len(in.dt))
	dB, dC = make([]float32, len(in.B)), make([]float32, len(in.C))
	dA, dD = make([]float64, sh.heads), make([]float64, sh.heads)
	ssdBackward(p, sh, dx, ddt, dA, dD, dB, dC, up, in.x, in.dt, in.A, in.B, in.C, in.D, states)
	return
}

func narrow(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// The scan against reference.SSDRecurrence, and every gradient against
// central differences of it: heads sharing groups, a partial last chunk,
// and a long sequence with strong decays (dt up to ~3, A down to −16:
// per-token decays down to e^−48) where a reverse cumulative sum of the
// chunked form's cumsum would cancel.
func TestSSDScan(t *testing.T) {
	for _, c := range []struct {
		name       string
		sh         ssdShape
		dtMid, aMx float64
	}{
		{"grouped", ssdShape{n: 23, heads: 4, headDim: 3, groups: 2, dstate: 5, chunk: 5}, -1, 16},
		{"strong-decay", ssdShape{n: 300, heads: 2, headDim: 4, groups: 2, dstate: 3, chunk: 64}, 1.5, 16},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(11)
			sh := c.sh
			in := newScanInputs(rng, sh, c.dtMid, c.aMx)
			x64, dt64, B64, C64, D64 := widen(in.x), widen(in.dt), widen(in.B), widen(in.C), widen(in.D)
			A64 := slices.Clone(in.A)
			ref := func() *reference.Array {
				y, _, err := reference.SSDRecurrence(arr(t, x64, 1, sh.n, sh.heads, sh.headDim), arr(t, dt64, 1, sh.n, sh.heads), arr(t, A64, sh.heads),
					arr(t, B64, 1, sh.n, sh.groups, sh.dstate), arr(t, C64, 1, sh.n, sh.groups, sh.dstate), arr(t, D64, sh.heads), nil)
				return must(t)(y, err)
			}
			up := randn(rng, sh.n*sh.heads*sh.headDim, 1)
			y, dx, ddt, dB, dC, dA, dD := scanGradients(newPool(3), sh, in, up)
			checkRel(t, "forward", y, ref().Data, fwdTol)
			checkGradients(t, rng, "scan", func() float64 { return dot(up, ref()) }, []gradInput{
				{"x", x64, dx}, {"dt", dt64, ddt}, {"A", A64, narrow(dA)}, {"B", B64, dB}, {"C", C64, dC}, {"D", D64, narrow(dD)},
			}, defaultFD)
		})
	}
}

// The states inside a chunk are recomputed bit for bit, so the gradients
// do not depend on the chunk length; nor on the number of workers.
func TestSSDScanChunkAndWorkerInvariance(t *testing.T) {
	rng := newRand(12)
	base := ssdShape{n: 150, heads: 4, headDim: 5, groups: 2, dstate: 4, chunk: 64}
	in := newScanInputs(rng, base, 0, 16)
	up := randn(rng, base.n*base.heads*base.headDim, 1)
	flat := func(y, dx, ddt, dB, dC []float32, dA, dD []float64) []float32 {
		return slices.Concat(y, dx, ddt, dB, dC, narrow(dA), narrow(dD))
	}
	want := flat(scanGradients(newPool(1), base, in, up))
	for _, v := range []struct{ chunk, workers int }{{1, 1}, {7, 4}, {64, 4}, {150, 2}, {1000, 3}} {
		sh := base
		sh.chunk = v.chunk
		got := flat(scanGradients(newPool(v.workers), sh, in, up))
		if !slices.Equal(got, want) {
			t.Errorf("chunk %d, %d workers: results differ from chunk 64, 1 worker (relative %.3g)", v.chunk, v.workers, relErr(got, widen(want)))
		}
	}
}

// newTestMixer builds a mixer of cfg with random weights in the ranges of
// Mamba-2's init (dt_bias the inverse softplus of dt ∈ [1e-3, 1e-1],
// A_log = log U(1, 16), conv U(±0.5)), perturbed so that every parameter
// matters; optional tensors only when full.
func newTestMixer(t testing.TB, rng *rand.Rand, cfg kernels.Mamba2Config, full bool) *mixer {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	H, dInner, convDim, dProj := cfg.NHeads, cfg.DInner(), cfg.ConvDim(), cfg.DProj()
	param := func(name string, data []float32, shape ...int) *Param {
		p, err := newParam(name, data, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	m := &mixer{cfg: cfg, eps: reference.Decimal32(cfg.NormEps), chunk: cfg.Chunk}
	m.inProj.w = param("in_proj.weight", randn(rng, dProj*cfg.DModel, 1/math.Sqrt(float64(cfg.DModel))), dProj, cfg.DModel)
	m.convW = param("conv1d.weight", uniform(rng, convDim*cfg.ConvKernel, -0.5, 0.5), convDim, 1, cfg.ConvKernel)
	aLog := make([]float32, H)
	for i := range aLog {
		aLog[i] = float32(math.Log(1 + 15*rng.Float64()))
	}
	m.aLog = param("A_log", aLog, H)
	m.normW = param("norm.weight", uniform(rng, dInner, 0.8, 1.2), dInner)
	m.outProj.w = param("out_proj.weight", randn(rng, cfg.DModel*dInner, 1/math.Sqrt(float64(dInner))), cfg.DModel, dInner)
	if full {
		m.inProj.b = param("in_proj.bias", randn(rng, dProj, 0.1), dProj)
		m.convB = param("conv1d.bias", uniform(rng, convDim, -0.5, 0.5), convDim)
		dtBias := make([]float32, H)
		for i := range dtBias {
			dt := math.Exp(math.Log(1e-3) + (math.Log(1e-1)-math.Log(1e-3))*rng.Float64())
			dtBias[i] = float32(dt + math.Log(-math.Expm1(-dt)))
		}
		m.dtBias = param("dt_bias", dtBias, H)
		m.d = param("D", uniform(rng, H, 0.7, 1.3), H)
		m.outProj.b = param("out_proj.bias", randn(rng, cfg.DModel, 0.1), cfg.DModel)
	}
	return m
}

// mixerTwin is a float64 copy of a mixer's weights for
// reference.Mamba2Mixer, with the gradient inputs pairing each copy with
// the analytic gradient.
type mixerTwin struct {
	cfg    kernels.Mamba2Config
	w      reference.Mamba2Weights
	inputs []gradInput
}

func newMixerTwin(t testing.TB, m *mixer) *mixerTwin {
	tw := &mixerTwin{cfg: m.cfg}
	c := m.cfg
	add := func(dst **reference.Array, p *Param, shape ...int) {
		if p == nil {
			return
		}
		x := widen(p.Data)
		*dst = arr(t, x, shape...)
		tw.inputs = append(tw.inputs, gradInput{name: p.Name, x: x, grad: p.Grad})
	}
	add(&tw.w.InProj, m.inProj.w, c.DProj(), c.DModel)
	add(&tw.w.InProjBias, m.inProj.b, c.DProj())
	add(&tw.w.Conv1dWeight, m.convW, c.ConvDim(), c.ConvKernel)
	add(&tw.w.Conv1dBias, m.convB, c.ConvDim())
	add(&tw.w.DtBias, m.dtBias, c.NHeads)
	add(&tw.w.ALog, m.aLog, c.NHeads)
	add(&tw.w.D, m.d, c.NHeads)
	add(&tw.w.NormWeight, m.normW, c.DInner())
	add(&tw.w.OutProj, m.outProj.w, c.DModel, c.DInner())
	add(&tw.w.OutProjBias, m.outProj.b, c.DModel)
	return tw
}

func (tw *mixerTwin) forward(t testing.TB, h *reference.Array) *reference.Array {
	return must(t)(reference.Mamba2Mixer(tw.cfg, tw.w, h))
}

// The mixer's forward against reference.Mamba2Mixer and the gradients of
// every parameter and of the input against central differences of it:
// GQA-style repeats of x and B (d_xb < d_inner) with one group per head
// as MaTVLM builds it, and heads sharing groups without the optional
// tensors.
func TestMixer(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  kernels.Mamba2Config
		full bool
	}{
		{"matvlm-gqa", kernels.Mamba2Config{DModel: 12, NHeads: 4, HeadDim: 4, DState: 4, NGroups: 4, DXB: 8, ConvKernel: 4, NormEps: 1e-5, Chunk: 8}, true},
		{"shared-groups-minimal", kernels.Mamba2Config{DModel: 10, NHeads: 4, HeadDim: 3, DState: 3, NGroups: 2, DXB: 6, ConvKernel: 3, NormEps: 1e-5, Chunk: 6}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := newRand(13)
			m := newTestMixer(t, rng, c.cfg, c.full)
			const n = 19
			h := randn(rng, n*c.cfg.DModel, 1)
			h64 := widen(h)
			tw := newMixerTwin(t, m)
			ref := func() *reference.Array { return tw.forward(t, arr(t, h64, 1, n, c.cfg.DModel)) }
			p := newPool(3)
			out := make([]float32, n*c.cfg.DModel)
			a := m.forward(p, out, h, n, true)
			checkRel(t, "forward", out, ref().Data, fwdTol)
			up := randn(rng, len(out), 1)
			dh := make([]float32, len(h))
			m.backward(p, dh, up, a)
			checkGradients(t, rng, "mixer", func() float64 { return dot(up, ref()) },
				append([]gradInput{{"hidden", h64, dh}}, tw.inputs...), defaultFD)
		})
	}
}

// A mixer at Phi-2's head sizes (P = N = 80) over a sequence of several
// chunks: the forward against the float64 reference and the gradients by
// directional derivatives.
func TestMixerLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large mixer check")
	}
	rng := newRand(14)
	cfg := kernels.Mamba2Config{DModel: 96, NHeads: 2, HeadDim: 80, DState: 80, NGroups: 2, DXB: 80, ConvKernel: 4, NormEps: 1e-5, Chunk: 16}
	m := newTestMixer(t, rng, cfg, true)
	const n = 50
	h := randn(rng, n*cfg.DModel, 1)
	h64 := widen(h)
	tw := newMixerTwin(t, m)
	ref := func() *reference.Array { return tw.forward(t, arr(t, h64, 1, n, cfg.DModel)) }
	p := newPool(2)
	out := make([]float32, n*cfg.DModel)
	a := m.forward(p, out, h, n, true)
	checkRel(t, "forward", out, ref().Data, 1e-5)
	up := randn(rng, len(out), 1)
	dh := make([]float32, len(h))
	m.backward(p, dh, up, a)
	fd := defaultFD
	fd.full = 200
	checkGradients(t, rng, "mixer", func() float64 { return dot(up, ref()) }, append([]gradInput{{"hidden", h64, dh}}, tw.inputs...), fd)
}
