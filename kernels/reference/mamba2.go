package reference

import (
	"fmt"
	"math"
	"strconv"

	"github.com/matsurgery/matsurgery/kernels"
)

// Mamba2Weights are the float64 tensors of one mixer (see
// kernels.Mamba2Weights). Conv1dWeight is [ConvDim, k]; biases and D may
// be nil.
type Mamba2Weights struct {
	InProj, InProjBias       *Array
	Conv1dWeight, Conv1dBias *Array
	DtBias, ALog, D          *Array
	NormWeight               *Array
	OutProj, OutProjBias     *Array
}

// Mamba2Mixer is the float64 reference of kernels.Mamba2Forward: in_proj,
// split z | x | B | C | dt, causal conv + SiLU over x|B|C, x and B repeated
// to the heads and groups, dt = softplus(dt_raw + dt_bias), A = −exp(A_log),
// the sequential scan, the gated RMSNorm (norm after gate, groups of
// DInner/NGroups) and out_proj. hidden is [b, l, DModel].
func Mamba2Mixer(cfg kernels.Mamba2Config, w Mamba2Weights, hidden *Array) (*Array, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if hidden == nil || len(hidden.Shape) != 3 || hidden.Shape[2] != cfg.DModel {
		return nil, fmt.Errorf("mamba2 mixer: hidden has shape %v, want [batch, seqlen, %d]", shapeOf(hidden), cfg.DModel)
	}
	nb, l := hidden.Shape[0], hidden.Shape[1]
	H, P, G, N := cfg.NHeads, cfg.HeadDim, cfg.NGroups, cfg.DState
	dInner, convDim := cfg.DInner(), cfg.ConvDim()
	step := func(name string, err error) error {
		if err != nil {
			return fmt.Errorf("mamba2 mixer: %s: %w", name, err)
		}
		return nil
	}

	proj, err := MatMul(hidden, w.InProj, true)
	if err := step("in_proj", err); err != nil {
		return nil, err
	}
	if w.InProjBias != nil {
		if proj, err = AddBias(proj, w.InProjBias); err != nil {
			return nil, step("in_proj bias", err)
		}
	}
	z, err := SliceCols(proj, 0, dInner)
	if err != nil {
		return nil, step("split z", err)
	}
	xBC, err := SliceCols(proj, dInner, convDim)
	if err != nil {
		return nil, step("split xBC", err)
	}
	dtRaw, err := SliceCols(proj, dInner+convDim, H)
	if err != nil {
		return nil, step("split dt", err)
	}
	xBC, err = CausalConv1d(xBC, w.Conv1dWeight, w.Conv1dBias, true)
	if err != nil {
		return nil, step("conv1d", err)
	}
	xs, err := SliceCols(xBC, 0, cfg.DXB)
	if err != nil {
		return nil, step("split x", err)
	}
	x, err := RepeatHeads(xs, cfg.DXB/P, H, P)
	if err != nil {
		return nil, step("repeat x", err)
	}
	bs, err := SliceCols(xBC, cfg.DXB, cfg.DXB)
	if err != nil {
		return nil, step("split B", err)
	}
	B, err := RepeatHeads(bs, cfg.DXB/N, G, N)
	if err != nil {
		return nil, step("repeat B", err)
	}
	C, err := SliceCols(xBC, 2*cfg.DXB, G*N)
	if err != nil {
		return nil, step("split C", err)
	}
	dt, err := DtSoftplus(dtRaw, w.DtBias)
	if err != nil {
		return nil, step("dt softplus", err)
	}
	if w.ALog == nil || w.ALog.Len() != H {
		return nil, fmt.Errorf("mamba2 mixer: A_log has shape %v, want [%d]", shapeOf(w.ALog), H)
	}
	A := unary(w.ALog, func(v float64) float64 { return -math.Exp(v) })
	x4, _ := x.Reshape(nb, l, H, P)
	B4, _ := B.Reshape(nb, l, G, N)
	C4, _ := C.Reshape(nb, l, G, N)
	y, _, err := SSDRecurrence(x4, dt, A, B4, C4, w.D, nil)
	if err != nil {
		return nil, step("ssd", err)
	}
	yf, _ := y.Reshape(nb, l, dInner)
	yn, err := GatedRMSNorm(yf, z, w.NormWeight, dInner/G, Decimal32(cfg.NormEps))
	if err != nil {
		return nil, step("gated norm", err)
	}
	out, err := MatMul(yn, w.OutProj, true)
	if err != nil {
		return nil, step("out_proj", err)
	}
	if w.OutProjBias != nil {
		if out, err = AddBias(out, w.OutProjBias); err != nil {
			return nil, step("out_proj bias", err)
		}
	}
	return out, nil
}

// Decimal32 widens a float32 parameter such as an epsilon to the float64
// of its shortest decimal form (float32 1e-5 becomes float64 1e-5, not
// 9.99999974738e-06), the value the configuration meant.
func Decimal32(v float32) float64 {
	d, err := strconv.ParseFloat(strconv.FormatFloat(float64(v), 'g', -1, 32), 64)
	if err != nil {
		return float64(v)
	}
	return d
}
