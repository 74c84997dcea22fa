package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// BenchmarkMambaOps runs the Mamba-path and norm-backward kernels of the
// training path under the first kernels (old: rowOpsV1 = true) and the
// second (new) on the same inputs, at the distillation's shapes (phi, 25%
// hybrid): 1428 tokens, d_inner 2560 in 32 gated-norm groups of 80, the
// conv over x|B|C = 7680 channels with kernel 4, 32 dt heads, hidden 2560.
// Medians are CUDA-event times of one operation; GB/s counts bytes read
// plus written. Dropout's old/new both use the cached jump table now (its
// saving, one k_pcg_jump launch a call, shows in the per-op profile).
// -cuda.small shrinks the rows for the emulator.
//
//	../../bin/cuda.test -test.run '^$' -test.bench 'MambaOps' -test.benchtime 20x
func BenchmarkMambaOps(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(83, 84))
	rows := 1428
	if *benchSmall {
		rows = 13
	}
	const dInner, gs, convC, convK, heads, hidden = 2560, 80, 7680, 4, 32, 2560
	f32 := func(lo, hi float64, shape ...int) kernels.Tensor {
		return randomTensor(b, be, rng, kernels.F32, lo, hi, shape...)
	}
	dout, y, z, w := f32(-1, 1, rows, dInner), f32(-2, 2, rows, dInner), f32(-3, 3, rows, dInner), f32(0.5, 1.5, dInner)
	dy, dz, dw := f32(-1, 1, rows, dInner), f32(-1, 1, rows, dInner), f32(-1, 1, dInner)
	u, cg, cout, cdu := f32(-2, 2, 1, rows, convC), f32(-1, 1, 1, rows, convC), f32(-1, 1, 1, rows, convC), f32(-1, 1, 1, rows, convC)
	cw, cb, cdw, cdb := f32(-1, 1, convC, convK), f32(-1, 1, convC), f32(-1, 1, convC, convK), f32(-1, 1, convC)
	ddt, raw, draw, dtb, ddtb := f32(-1, 1, rows, heads), f32(-4, 4, rows, heads), f32(-1, 1, rows, heads), f32(-1, 1, heads), f32(-1, 1, heads)
	lx, ldy, ldx, lw := f32(-2, 2, rows, hidden), f32(-1, 1, rows, hidden), f32(-1, 1, rows, hidden), f32(0.5, 1.5, hidden)
	nd, nc, nh := float64(rows*dInner), float64(rows*convC), float64(rows*hidden)
	cases := []struct {
		name  string
		bytes float64
		op    func() error
	}{
		{fmt.Sprintf("gatedrmsnormbackward/%dx%d_g%d", rows, dInner, gs), 4 * 5 * nd,
			func() error { return be.GatedRMSNormBackward(dy, dz, dw, dout, y, z, w, gs, 1e-5) }},
		{fmt.Sprintf("causalconv1d/%dx%d_k%d", rows, convC, convK), 4 * 2 * nc,
			func() error { return be.CausalConv1d(cout, u, cw, cb, true) }},
		{fmt.Sprintf("causalconv1dbackward/%dx%d_k%d", rows, convC, convK), 4 * 3 * nc,
			func() error { return be.CausalConv1dBackward(cdu, cdw, cdb, cg, u, cw, cb, true) }},
		{fmt.Sprintf("layernormbackward/%dx%d", rows, hidden), 4 * 3 * nh,
			func() error { return be.LayerNormBackward(ldx, ldy, lx, lw, 1e-5) }},
		{fmt.Sprintf("rmsnormbackward/%dx%d", rows, hidden), 4 * 3 * nh,
			func() error { return be.RMSNormBackward(ldx, ldy, lx, lw, 1e-5) }},
		{fmt.Sprintf("dtsoftplusbackward/%dx%d", rows, heads), 4 * 3 * float64(rows*heads),
			func() error { return be.DtSoftplusBackward(draw, ddtb, ddt, raw, dtb) }},
		{fmt.Sprintf("dropout/%dx%d", rows, hidden), 4 * 2 * nh,
			func() error { return be.Dropout(ldx, lx, 12345, 0.1) }},
	}
	saved, savedConv := rowOpsV1, convBackwardV2
	defer func() { rowOpsV1, convBackwardV2 = saved, savedConv }()
	for _, c := range cases {
		name, rest, _ := cut(c.name)
		for _, v := range []struct {
			label string
			v1    bool
		}{{"old", true}, {"new", false}} {
			b.Run(name+"/"+v.label+"/"+rest, func(b *testing.B) {
				rowOpsV1, convBackwardV2 = v.v1, !v.v1
				measure(b, be, c.bytes, c.op)
			})
		}
	}
}
