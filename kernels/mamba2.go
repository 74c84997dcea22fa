package kernels

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// Mamba2Config holds the sizes of one Mamba-2 mixer as MaTVLM builds it
// (SPEC §3): DInner = NHeads·HeadDim; in_proj rows are
// z (DInner) | x (DXB) | B (DXB) | C (NGroups·DState) | dt (NHeads); the
// depthwise causal conv of width ConvKernel runs over the x|B|C channels.
// x is repeated from DXB/HeadDim heads to NHeads, B from DXB/DState groups to
// NGroups (repeat_interleave). The gated RMSNorm (epsilon NormEps) works per
// group of DInner/NGroups channels. Chunk is the chunk length of the
// chunked scan.
type Mamba2Config struct {
	DModel, NHeads, HeadDim, DState, NGroups, DXB, ConvKernel int
	NormEps                                                   float32
	Chunk                                                     int
}

// DInner is NHeads·HeadDim, the width of x after the repeat, of z and of y.
func (c Mamba2Config) DInner() int { return c.NHeads * c.HeadDim }

// ConvDim is the number of conv channels: DXB (x) + DXB (B) + NGroups·DState (C).
func (c Mamba2Config) ConvDim() int { return 2*c.DXB + c.NGroups*c.DState }

// DProj is the number of in_proj rows: z | x | B | C | dt.
func (c Mamba2Config) DProj() int { return c.DInner() + c.ConvDim() + c.NHeads }

// Validate reports the first inconsistency in the sizes.
func (c Mamba2Config) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"d_model", c.DModel}, {"nheads", c.NHeads}, {"headdim", c.HeadDim}, {"d_state", c.DState},
		{"ngroups", c.NGroups}, {"d_xb", c.DXB}, {"conv kernel", c.ConvKernel}, {"chunk", c.Chunk}} {
		if f.v <= 0 {
			return fmt.Errorf("mamba2 config: %s = %d, want > 0", f.name, f.v)
		}
	}
	switch {
	case c.NHeads%c.NGroups != 0:
		return fmt.Errorf("mamba2 config: nheads %d not a multiple of ngroups %d", c.NHeads, c.NGroups)
	case c.DXB%c.HeadDim != 0 || c.NHeads%(c.DXB/c.HeadDim) != 0:
		return fmt.Errorf("mamba2 config: d_xb %d must be a whole number of heads of size %d dividing the %d heads", c.DXB, c.HeadDim, c.NHeads)
	case c.DXB%c.DState != 0 || c.NGroups%(c.DXB/c.DState) != 0:
		return fmt.Errorf("mamba2 config: d_xb %d must be a whole number of groups of size %d dividing the %d groups", c.DXB, c.DState, c.NGroups)
	case c.DInner()%c.NGroups != 0:
		return fmt.Errorf("mamba2 config: d_inner %d not a multiple of ngroups %d", c.DInner(), c.NGroups)
	case !(c.NormEps > 0) || math.IsInf(float64(c.NormEps), 0):
		return fmt.Errorf("mamba2 config: norm eps %g, want a positive number", c.NormEps)
	}
	return nil
}

// Mamba2Weights are the tensors of one mixer, named after the checkpoint
// keys (mamba.in_proj.weight, …). Biases may be nil. Conv1dWeight is
// [ConvDim, 1, k] (the checkpoint's layout) or [ConvDim, k]. Any tensor may
// be F32 or BF16.
type Mamba2Weights struct {
	InProj, InProjBias       Tensor // [DProj, DModel], [DProj]
	Conv1dWeight, Conv1dBias Tensor // [ConvDim, 1, k] or [ConvDim, k], [ConvDim]
	DtBias, ALog, D          Tensor // [NHeads] each
	NormWeight               Tensor // [DInner]
	OutProj, OutProjBias     Tensor // [DModel, DInner], [DModel]
}

// Mamba2Forward runs the whole mixer on hidden [b, l, DModel] and returns
// its output [b, l, DModel] (F32, owned by the caller: Free it), composed
// only of Backend operations so that it runs on any backend. useChunked
// selects SSDChunkScan (chunk length cfg.Chunk) over SSDRecurrence.
//
// A = −exp(A_log) is computed on the host from the NHeads values of ALog
// (the Backend has no exp operation): one small download per call.
func Mamba2Forward(be Backend, cfg Mamba2Config, w Mamba2Weights, hidden Tensor, useChunked bool) (Tensor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hs := hidden.Shape()
	if len(hs) != 3 || hs[2] != cfg.DModel {
		return nil, fmt.Errorf("mamba2 forward: hidden has shape %v, want [batch, seqlen, %d]", hs, cfg.DModel)
	}
	nb, l := hs[0], hs[1]
	H, P, G, N := cfg.NHeads, cfg.HeadDim, cfg.NGroups, cfg.DState
	dInner, convDim, dProj := cfg.DInner(), cfg.ConvDim(), cfg.DProj()

	if err := checkWeights(cfg, w); err != nil {
		return nil, err
	}

	f := &forward{be: be}
	defer f.freeAll()

	// 1. in_proj, split into z | xBC | dt.
	proj := f.alloc(nb, l, dProj)
	f.do("in_proj", func() error { return be.MatMul(proj, hidden, w.InProj, true) })
	if w.InProjBias != nil {
		bias := f.f32("in_proj.bias", w.InProjBias)
		f.do("in_proj bias", func() error { return be.AddBias(proj, bias) })
	}
	z := f.alloc(nb, l, dInner)
	f.do("split z", func() error { return be.SliceCols(z, proj, 0) })
	xBC := f.alloc(nb, l, convDim)
	f.do("split xBC", func() error { return be.SliceCols(xBC, proj, dInner) })
	dtRaw := f.alloc(nb, l, H)
	f.do("split dt", func() error { return be.SliceCols(dtRaw, proj, dInner+convDim) })

	// 2. Depthwise causal conv + SiLU over x|B|C.
	convW := f.f32("conv1d.weight", f.view(w.Conv1dWeight, convDim, cfg.ConvKernel))
	var convB Tensor
	if w.Conv1dBias != nil {
		convB = f.f32("conv1d.bias", w.Conv1dBias)
	}
	xBCc := f.alloc(nb, l, convDim)
	f.do("conv1d", func() error { return be.CausalConv1d(xBCc, xBC, convW, convB, true) })

	// 3. x, B repeated to NHeads heads / NGroups groups; C full width.
	xs := f.alloc(nb, l, cfg.DXB)
	f.do("split x", func() error { return be.SliceCols(xs, xBCc, 0) })
	x := f.repeat("x", xs, cfg.DXB/P, H, P)
	bs := f.alloc(nb, l, cfg.DXB)
	f.do("split B", func() error { return be.SliceCols(bs, xBCc, cfg.DXB) })
	B := f.repeat("B", bs, cfg.DXB/N, G, N)
	cs := f.alloc(nb, l, G*N)
	f.do("split C", func() error { return be.SliceCols(cs, xBCc, 2*cfg.DXB) })
	C := f.view(cs, nb, l, G, N)

	// 4. dt = softplus(dt_raw + dt_bias), A = −exp(A_log).
	var dtBias Tensor
	if w.DtBias != nil {
		dtBias = f.f32("dt_bias", w.DtBias)
	}
	dt := f.alloc(nb, l, H)
	f.do("dt softplus", func() error { return be.DtSoftplus(dt, dtRaw, dtBias) })
	A := f.negExp("A_log", w.ALog)
	var D Tensor
	if w.D != nil {
		D = f.f32("D", w.D)
	}

	// 5. The scan.
	y := f.alloc(nb, l, H, P)
	if useChunked {
		f.do("ssd chunk scan", func() error { return be.SSDChunkScan(y, x, dt, A, B, C, D, nil, cfg.Chunk) })
	} else {
		f.do("ssd recurrence", func() error { return be.SSDRecurrence(y, x, dt, A, B, C, D, nil) })
	}

	// 6. Gated RMSNorm (norm after gate) and out_proj.
	normW := f.f32("norm.weight", w.NormWeight)
	yn := f.alloc(nb, l, dInner)
	yFlat := f.view(y, nb, l, dInner)
	f.do("gated norm", func() error { return be.GatedRMSNorm(yn, yFlat, z, normW, dInner/G, cfg.NormEps) })
	if f.err != nil {
		return nil, f.err
	}
	out, err := be.Alloc(F32, nb, l, cfg.DModel)
	if err != nil {
		return nil, fmt.Errorf("mamba2 forward: out_proj: %w", err)
	}
	f.do("out_proj", func() error { return be.MatMul(out, yn, w.OutProj, true) })
	if w.OutProjBias != nil {
		bias := f.f32("out_proj.bias", w.OutProjBias)
		f.do("out_proj bias", func() error { return be.AddBias(out, bias) })
	}
	if f.err != nil {
		be.Free(out)
		return nil, f.err
	}
	return out, nil
}

func checkWeights(cfg Mamba2Config, w Mamba2Weights) error {
	need := func(name string, t Tensor, shapes ...[]int) error {
		if t == nil {
			return fmt.Errorf("mamba2 forward: weight %s is missing", name)
		}
		got := t.Shape()
		for _, s := range shapes {
			if slices.Equal(got, s) {
				return nil
			}
		}
		return fmt.Errorf("mamba2 forward: weight %s has shape %v, want %v", name, got, shapes[0])
	}
	maybe := func(name string, t Tensor, shape ...int) error {
		if t == nil {
			return nil
		}
		return need(name, t, shape)
	}
	dInner, convDim, dProj := cfg.DInner(), cfg.ConvDim(), cfg.DProj()
	return errors.Join(
		need("in_proj.weight", w.InProj, []int{dProj, cfg.DModel}),
		maybe("in_proj.bias", w.InProjBias, dProj),
		need("conv1d.weight", w.Conv1dWeight, []int{convDim, 1, cfg.ConvKernel}, []int{convDim, cfg.ConvKernel}),
		maybe("conv1d.bias", w.Conv1dBias, convDim),
		maybe("dt_bias", w.DtBias, cfg.NHeads),
		need("A_log", w.ALog, []int{cfg.NHeads}),
		maybe("D", w.D, cfg.NHeads),
		need("norm.weight", w.NormWeight, []int{dInner}),
		need("out_proj.weight", w.OutProj, []int{cfg.DModel, dInner}),
		maybe("out_proj.bias", w.OutProjBias, cfg.DModel),
	)
}

// forward tracks the temporaries of one Mamba2Forward call and its first
// error: after an error every further step is skipped.
type forward struct {
	be    Backend
	owned []Tensor
	err   error
}

func (f *forward) do(step string, op func() error) {
	if f.err != nil {
		return
	}
	if err := op(); err != nil {
		f.err = fmt.Errorf("mamba2 forward: %s: %w", step, err)
	}
}

func (f *forward) alloc(shape ...int) Tensor {
	if f.err != nil {
		return nil
	}
	t, err := f.be.Alloc(F32, shape...)
	if err != nil {
		f.err = fmt.Errorf("mamba2 forward: alloc %v: %w", shape, err)
		return nil
	}
	f.owned = append(f.owned, t)
	return t
}

// repeat returns src [b, l, srcHeads·dim] as [b, l, heads, dim] with heads
// repeated (repeat_interleave), or as a view when there is nothing to repeat.
func (f *forward) repeat(name string, src Tensor, srcHeads, heads, dim int) Tensor {
	if f.err != nil {
		return nil
	}
	s := src.Shape()
	if srcHeads == heads {
		return f.view(src, s[0], s[1], heads, dim)
	}
	out := f.alloc(s[0], s[1], heads, dim)
	f.do("repeat "+name, func() error { return f.be.RepeatHeads(out, src, srcHeads, heads, dim) })
	return out
}

// view reshapes t when its shape differs from shape.
func (f *forward) view(t Tensor, shape ...int) Tensor {
	if f.err != nil {
		return nil
	}
	if slices.Equal(t.Shape(), shape) {
		return t
	}
	v, err := f.be.Reshape(t, shape...)
	if err != nil {
		f.err = fmt.Errorf("mamba2 forward: reshape %v to %v: %w", t.Shape(), shape, err)
		return nil
	}
	return v
}

// f32 returns t as F32, converting a BF16 weight into a temporary.
func (f *forward) f32(name string, t Tensor) Tensor {
	if f.err != nil || t.DType() == F32 {
		return t
	}
	c := f.alloc(t.Shape()...)
	f.do("convert "+name, func() error { return f.be.Convert(c, t) })
	return c
}

// negExp returns −exp(t) computed on the host in float64.
func (f *forward) negExp(name string, t Tensor) Tensor {
	if f.err != nil {
		return nil
	}
	host, err := f.be.Download(t)
	if err != nil {
		f.err = fmt.Errorf("mamba2 forward: download %s: %w", name, err)
		return nil
	}
	for i, v := range host {
		host[i] = float32(-math.Exp(float64(v)))
	}
	a, err := f.be.Upload(host, F32, t.Shape()...)
	if err != nil {
		f.err = fmt.Errorf("mamba2 forward: upload A from %s: %w", name, err)
		return nil
	}
	f.owned = append(f.owned, a)
	return a
}

func (f *forward) freeAll() {
	for _, t := range f.owned {
		f.be.Free(t)
	}
	f.owned = nil
}
