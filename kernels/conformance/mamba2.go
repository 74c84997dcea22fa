package conformance

import (
	"math"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// mixerCase is one Mamba2Forward configuration.
type mixerCase struct {
	cfg        kernels.Mamba2Config
	b, l       int
	biases     bool
	noD        bool
	dtype      kernels.DType // of every weight
	conv3D     bool          // conv1d weight as [ch, 1, k]
	descriptor string
}

// RandomMamba2Weights draws a mixer's weights the way Mamba-2 initialises
// them (SPEC §3), with the attention-derived rows and out_proj uniform in
// ±1/√fan-in: dt log-uniform in [1e-3, 1e-1] stored as inverse softplus,
// A_log = log U(1,16), conv weight and bias U(−0.5, 0.5); D and the norm
// weight are drawn near 1 (not exactly 1, so that a backend ignoring them
// fails). Values are float32-exact.
func RandomMamba2Weights(e interface{ Float64() float64 }, cfg kernels.Mamba2Config, biases, withD bool) reference.Mamba2Weights {
	u := func(lo, hi float64, shape ...int) *reference.Array {
		a := reference.New(shape...)
		for i := range a.Data {
			a.Data[i] = float64(float32(lo + (hi-lo)*e.Float64()))
		}
		return a
	}
	dInner, convDim, dProj := cfg.DInner(), cfg.ConvDim(), cfg.DProj()
	inB := 1 / math.Sqrt(float64(cfg.DModel))
	outB := 1 / math.Sqrt(float64(dInner))
	w := reference.Mamba2Weights{
		InProj:       u(-inB, inB, dProj, cfg.DModel),
		Conv1dWeight: u(-0.5, 0.5, convDim, cfg.ConvKernel),
		Conv1dBias:   u(-0.5, 0.5, convDim),
		DtBias:       reference.New(cfg.NHeads),
		ALog:         reference.New(cfg.NHeads),
		NormWeight:   u(0.8, 1.2, dInner),
		OutProj:      u(-outB, outB, cfg.DModel, dInner),
	}
	for h := range cfg.NHeads {
		dt := math.Exp(math.Log(1e-3) + (math.Log(1e-1)-math.Log(1e-3))*e.Float64())
		dt = max(dt, 1e-4)
		w.DtBias.Data[h] = float64(float32(dt + math.Log(-math.Expm1(-dt))))
		w.ALog.Data[h] = float64(float32(math.Log(1 + 15*e.Float64())))
	}
	if withD {
		w.D = u(0.8, 1.2, cfg.NHeads)
	}
	if biases {
		w.InProjBias = u(-0.1, 0.1, dProj)
		w.OutProjBias = u(-0.1, 0.1, cfg.DModel)
	}
	return w
}

func (s *suite) mamba2(e *env) {
	gqa := kernels.Mamba2Config{DModel: 24, NHeads: 4, HeadDim: 6, DState: 6, NGroups: 4, DXB: 12, ConvKernel: 4, NormEps: 1e-5, Chunk: 5}
	mha := kernels.Mamba2Config{DModel: 20, NHeads: 2, HeadDim: 8, DState: 8, NGroups: 2, DXB: 16, ConvKernel: 4, NormEps: 1e-5, Chunk: 8}
	oneGroup := kernels.Mamba2Config{DModel: 16, NHeads: 2, HeadDim: 4, DState: 8, NGroups: 1, DXB: 8, ConvKernel: 4, NormEps: 1e-5, Chunk: 4}
	odd := kernels.Mamba2Config{DModel: 9, NHeads: 6, HeadDim: 5, DState: 5, NGroups: 3, DXB: 15, ConvKernel: 3, NormEps: 1e-6, Chunk: 7}
	for _, c := range []mixerCase{
		{cfg: gqa, b: 2, l: 13, conv3D: true, dtype: kernels.F32, descriptor: "gqa f32"},
		{cfg: gqa, b: 1, l: 13, conv3D: true, dtype: kernels.BF16, descriptor: "gqa bf16 weights"},
		{cfg: mha, b: 2, l: 33, biases: true, dtype: kernels.F32, descriptor: "mha biases"},
		{cfg: oneGroup, b: 1, l: 10, dtype: kernels.F32, conv3D: true, descriptor: "one group (HF layout)"},
		{cfg: odd, b: 3, l: 11, noD: true, dtype: kernels.BF16, descriptor: "odd sizes no D"},
	} {
		w := RandomMamba2Weights(e.rng, c.cfg, c.biases, !c.noD)
		hidden := e.rand(-1, 1, c.b, c.l, c.cfg.DModel)
		// Upload first: BF16 uploads round the reference weights in place.
		up := func(a *reference.Array, shape ...int) kernels.Tensor {
			if a == nil {
				return nil
			}
			t := e.upAs(a, c.dtype)
			if len(shape) > 0 {
				v, err := e.be.Reshape(t, shape...)
				e.must("reshape weight", err)
				return v
			}
			return t
		}
		var convShape []int
		if c.conv3D {
			convShape = []int{c.cfg.ConvDim(), 1, c.cfg.ConvKernel}
		}
		bw := kernels.Mamba2Weights{
			InProj: up(w.InProj), InProjBias: up(w.InProjBias),
			Conv1dWeight: up(w.Conv1dWeight, convShape...), Conv1dBias: up(w.Conv1dBias),
			DtBias: up(w.DtBias), ALog: up(w.ALog), D: up(w.D),
			NormWeight: up(w.NormWeight), OutProj: up(w.OutProj), OutProjBias: up(w.OutProjBias),
		}
		want := e.want(reference.Mamba2Mixer(c.cfg, w, hidden))
		for _, chunked := range []bool{false, true} {
			out, err := kernels.Mamba2Forward(e.be, c.cfg, bw, e.up(hidden), chunked)
			e.must(name("mamba2 forward %s chunked=%v", c.descriptor, chunked), err)
			e.check(name("mamba2 forward %s chunked=%v", c.descriptor, chunked), e.down(out), want, e.tol.Mixer)
			e.be.Free(out)
		}
	}

	// Errors: a wrong weight shape and a bad config are reported.
	w := RandomMamba2Weights(e.rng, gqa, false, true)
	bw := kernels.Mamba2Weights{
		InProj: e.up(w.InProj), Conv1dWeight: e.up(w.Conv1dWeight), DtBias: e.up(w.DtBias), ALog: e.up(w.ALog),
		D: e.up(w.D), NormWeight: e.up(w.NormWeight), OutProj: e.up(w.InProj), // wrong: in_proj as out_proj
	}
	hidden := e.up(e.rand(-1, 1, 1, 4, gqa.DModel))
	e.fails("mamba2 forward with a wrong out_proj shape", func() error {
		_, err := kernels.Mamba2Forward(e.be, gqa, bw, hidden, true)
		return err
	})
	bad := gqa
	bad.NGroups = 3
	e.fails("mamba2 forward with heads not a multiple of groups", func() error {
		_, err := kernels.Mamba2Forward(e.be, bad, bw, hidden, true)
		return err
	})
}
