package model

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// mixer is one Mamba-2 mixer (SPEC §3) with its weights on the backend.
// w.ALog holds A_log as stored; a = −exp(A_log), computed once at load.
type mixer struct {
	cfg kernels.Mamba2Config
	w   kernels.Mamba2Weights
	a   kernels.Tensor // [H]
}

// mixerPlan holds a mixer's activations for n tokens.
type mixerPlan struct {
	n             int
	proj          kernels.Tensor // [1,n,dProj]: z | xBC | dt
	z             kernels.Tensor // [1,n,dInner]
	xBC, xBCc     kernels.Tensor // [1,n,convDim]: before and after conv+SiLU
	dtRaw, dt     kernels.Tensor // [1,n,H]
	xs, bs, cs    kernels.Tensor // [1,n,dXB], [1,n,dXB], [1,n,G·N]
	x, B, C       kernels.Tensor // [1,n,H,P], [1,n,G,N], [1,n,G,N] (views when nothing repeats)
	y, yFlat, yn  kernels.Tensor // [1,n,H,P], its [1,n,dInner] view, gated-normed
	xb, bb, cb    kernels.Tensor // bf16 copies of x, B, C (bf16 precision only)
	u, uc         kernels.Tensor // [1,K+n,convDim]: conv state then new inputs (decode), and its conv
	uFlat, ucFlat kernels.Tensor // [1,(K+n)·convDim] views
	xBCcFlat      kernels.Tensor // [1,n·convDim] view
	ar            *arena
}

// newMixerPlan allocates a mixer's activations for n tokens, taking from
// lend (may be nil) the buffers of matching shape it has.
func newMixerPlan(a *arena, c kernels.Mamba2Config, n int, bf16 bool, lend *lender) *mixerPlan {
	H, P, G, N := c.NHeads, c.HeadDim, c.NGroups, c.DState
	mp := &mixerPlan{n: n, ar: a}
	get := func(shape ...int) kernels.Tensor {
		if lend != nil && a.Err() == nil {
			if t := lend.take(shape...); t != nil {
				return t
			}
		}
		return a.Alloc(shape...)
	}
	mp.proj = get(1, n, c.DProj())
	mp.z = get(1, n, c.DInner())
	mp.xBC, mp.xBCc = get(1, n, c.ConvDim()), get(1, n, c.ConvDim())
	mp.dtRaw, mp.dt = get(1, n, H), get(1, n, H)
	mp.xs, mp.bs, mp.cs = get(1, n, c.DXB), get(1, n, c.DXB), get(1, n, G*N)
	if c.DXB/P == H {
		mp.x = a.View(mp.xs, 1, n, H, P)
	} else {
		mp.x = get(1, n, H, P)
	}
	if c.DXB/N == G {
		mp.B = a.View(mp.bs, 1, n, G, N)
	} else {
		mp.B = get(1, n, G, N)
	}
	mp.C = a.View(mp.cs, 1, n, G, N)
	mp.y = get(1, n, H, P)
	mp.yFlat = a.View(mp.y, 1, n, c.DInner())
	mp.yn = get(1, n, c.DInner())
	if bf16 {
		mp.xb = a.AllocOf(kernels.BF16, 1, n, H, P)
		mp.bb, mp.cb = a.AllocOf(kernels.BF16, 1, n, G, N), a.AllocOf(kernels.BF16, 1, n, G, N)
	}
	return mp
}

// decodeBuffers allocates, on first use, the buffers of a stateful conv.
func (mp *mixerPlan) decodeBuffers(c kernels.Mamba2Config) error {
	if mp.u != nil {
		return nil
	}
	a := mp.ar
	rows := c.ConvKernel + mp.n
	mp.u, mp.uc = a.Alloc(1, rows, c.ConvDim()), a.Alloc(1, rows, c.ConvDim())
	mp.uFlat, mp.ucFlat = a.View(mp.u, 1, rows*c.ConvDim()), a.View(mp.uc, 1, rows*c.ConvDim())
	mp.xBCcFlat = a.View(mp.xBCc, 1, mp.n*c.ConvDim())
	if a.Err() != nil {
		err := a.Err()
		a.ClearErr()
		mp.u = nil
		return err
	}
	return nil
}

// mixerState is a Mamba layer's decode state: conv [1, K, convDim] holds the
// last K raw x|B|C rows (oldest first; SPEC's conv_state [conv_dim, 4],
// time-major here), ssm [1, H, P, N] the scan state.
type mixerState struct {
	conv, ssm kernels.Tensor
	convFlat  kernels.Tensor // [1, K·convDim] view of conv
}

// forward runs the mixer on h [1,n,d] into out [1,n,d], its products and
// scan in mm's precision. st is nil for a stateless pass; otherwise pos
// tokens came before (pos = 0: a prefill from zero state) and st is
// advanced past these n tokens. chunked selects the chunked scan (a
// stateless or prefill pass only).
func (mx *mixer) forward(mm *products, rows *rowMover, mp *mixerPlan, h, out kernels.Tensor, st *mixerState, pos int, chunked bool) error {
	be, c, w := mm.be, mx.cfg, mx.w
	dInner, convDim, K := c.DInner(), c.ConvDim(), c.ConvKernel
	H, P, G, N := c.NHeads, c.HeadDim, c.NGroups, c.DState
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("mamba mixer: %s: %w", what, err)
		}
		return nil
	}
	// 1. in_proj, split into z | xBC | dt.
	if err := step("in_proj", mm.matmulT(mp.proj, h, w.InProj)); err != nil {
		return err
	}
	if w.InProjBias != nil {
		if err := step("in_proj bias", be.AddBias(mp.proj, w.InProjBias)); err != nil {
			return err
		}
	}
	if err := step("split z", be.SliceCols(mp.z, mp.proj, 0)); err != nil {
		return err
	}
	if err := step("split xBC", be.SliceCols(mp.xBC, mp.proj, dInner)); err != nil {
		return err
	}
	if err := step("split dt", be.SliceCols(mp.dtRaw, mp.proj, dInner+convDim)); err != nil {
		return err
	}

	// 2. Depthwise causal conv + SiLU over x|B|C, continuing the conv state.
	switch {
	case st == nil || pos == 0:
		if err := step("conv1d", be.CausalConv1d(mp.xBCc, mp.xBC, w.Conv1dWeight, w.Conv1dBias, true)); err != nil {
			return err
		}
		if st != nil { // the state starts at zero: keep the last K raw rows
			k := min(K, mp.n)
			if err := step("save conv state", rows.copy(st.conv, K-k, mp.xBC, mp.n-k, k)); err != nil {
				return err
			}
		}
	default:
		if err := mp.decodeBuffers(c); err != nil {
			return step("conv buffers", err)
		}
		if err := step("load conv state", rows.copy(mp.u, 0, st.conv, 0, K)); err != nil {
			return err
		}
		if err := step("append conv input", rows.copy(mp.u, K, mp.xBC, 0, mp.n)); err != nil {
			return err
		}
		if err := step("conv1d", be.CausalConv1d(mp.uc, mp.u, w.Conv1dWeight, w.Conv1dBias, true)); err != nil {
			return err
		}
		if err := step("conv output rows", be.SliceCols(mp.xBCcFlat, mp.ucFlat, K*convDim)); err != nil {
			return err
		}
		if err := step("save conv state", be.SliceCols(st.convFlat, mp.uFlat, mp.n*convDim)); err != nil {
			return err
		}
	}

	// 3. x and B repeated to H heads and G groups; C full width.
	if err := step("split x", be.SliceCols(mp.xs, mp.xBCc, 0)); err != nil {
		return err
	}
	if err := step("split B", be.SliceCols(mp.bs, mp.xBCc, c.DXB)); err != nil {
		return err
	}
	if err := step("split C", be.SliceCols(mp.cs, mp.xBCc, 2*c.DXB)); err != nil {
		return err
	}
	if c.DXB/P != H {
		if err := step("repeat x", be.RepeatHeads(mp.x, mp.xs, c.DXB/P, H, P)); err != nil {
			return err
		}
	}
	if c.DXB/N != G {
		if err := step("repeat B", be.RepeatHeads(mp.B, mp.bs, c.DXB/N, G, N)); err != nil {
			return err
		}
	}

	// 4. dt = softplus(dt_raw + dt_bias); the scan with A = −exp(A_log).
	if err := step("dt softplus", be.DtSoftplus(mp.dt, mp.dtRaw, w.DtBias)); err != nil {
		return err
	}
	var state kernels.Tensor
	if st != nil {
		state = st.ssm
	}
	x, B, C, err := mm.scanInputs(mp.x, mp.B, mp.C, mp.xb, mp.bb, mp.cb)
	if err != nil {
		return step("scan inputs", err)
	}
	if chunked && (st == nil || pos == 0) {
		if err := step("ssd chunk scan", be.SSDChunkScan(mp.y, x, mp.dt, mx.a, B, C, w.D, state, c.Chunk)); err != nil {
			return err
		}
	} else if err := step("ssd recurrence", be.SSDRecurrence(mp.y, x, mp.dt, mx.a, B, C, w.D, state)); err != nil {
		return err
	}

	// 5. Gated RMSNorm (norm after gate), out_proj.
	if err := step("gated norm", be.GatedRMSNorm(mp.yn, mp.yFlat, mp.z, w.NormWeight, dInner/G, c.NormEps)); err != nil {
		return err
	}
	if err := step("out_proj", mm.matmulT(out, mp.yn, w.OutProj)); err != nil {
		return err
	}
	if w.OutProjBias != nil {
		if err := step("out_proj bias", be.AddBias(out, w.OutProjBias)); err != nil {
			return err
		}
	}
	return nil
}

// newState returns a zero decode state for this mixer.
func (mx *mixer) newState(be kernels.Backend) (*mixerState, error) {
	c := mx.cfg
	conv, err := be.Upload(make([]float32, c.ConvKernel*c.ConvDim()), kernels.F32, 1, c.ConvKernel, c.ConvDim())
	if err != nil {
		return nil, fmt.Errorf("mamba conv state: %w", err)
	}
	ssm, err := be.Upload(make([]float32, c.NHeads*c.HeadDim*c.DState), kernels.F32, 1, c.NHeads, c.HeadDim, c.DState)
	if err != nil {
		be.Free(conv)
		return nil, fmt.Errorf("mamba ssm state: %w", err)
	}
	flat, err := be.Reshape(conv, 1, c.ConvKernel*c.ConvDim())
	if err != nil {
		be.Free(conv)
		be.Free(ssm)
		return nil, fmt.Errorf("mamba conv state view: %w", err)
	}
	return &mixerState{conv: conv, ssm: ssm, convFlat: flat}, nil
}
