package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// BenchmarkRowOps runs every row and elementwise operation of the training
// path under the first kernels (old: rowOpsV1 = true) and the second (new)
// on the same inputs, at the distillation's shapes: 1428 tokens of hidden
// 2560 and MLP 10240, the vision tower's 729 rows of 1152 and MLP 4304.
// The medians are CUDA-event times of one operation; GB/s counts bytes
// read plus written. -cuda.small shrinks the rows for the emulator.
//
//	../../bin/cuda.test -test.run '^$' -test.bench 'RowOps' -test.benchtime 20x
func BenchmarkRowOps(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(81, 82))
	text, vision := 1428, 729
	if *benchSmall {
		text, vision = 13, 7
	}
	type rowOp struct {
		name  string
		bytes float64
		op    func() error
	}
	f32 := func(shape ...int) kernels.Tensor { return randomTensor(b, be, rng, kernels.F32, -2, 2, shape...) }
	bf16 := func(shape ...int) kernels.Tensor { return randomTensor(b, be, rng, kernels.BF16, -2, 2, shape...) }
	var cases []rowOp
	for _, s := range []struct{ rows, d, mlp int }{{text, 2560, 10240}, {vision, 1152, 4304}} {
		rows, d, mlp := s.rows, s.d, s.mlp
		x, out, w, bias := f32(rows, d), f32(rows, d), f32(d), f32(d)
		h, hout, hdy := f32(rows, mlp), f32(rows, mlp), f32(rows, mlp)
		hb := bf16(rows, mlp)
		wide := f32(rows, 3*d)
		nd, nh := float64(rows*d), float64(rows*mlp)
		cases = append(cases,
			rowOp{fmt.Sprintf("layernorm/%dx%d", rows, d), 4 * 2 * nd, func() error { return be.LayerNorm(out, x, w, bias, 1e-5) }},
			rowOp{fmt.Sprintf("rmsnorm/%dx%d", rows, d), 4 * 2 * nd, func() error { return be.RMSNorm(out, x, w, 1e-5) }},
			rowOp{fmt.Sprintf("gatedrmsnorm/%dx%d_g%d", rows, d, d/2), 4 * 3 * nd, func() error { return be.GatedRMSNorm(out, x, wide.(*Tensor).rowsView(d), w, d/2, 1e-5) }},
			rowOp{fmt.Sprintf("gelu/%dx%d", rows, mlp), 4 * 2 * nh, func() error { return be.GELU(hout, h, kernels.GELUTanh) }},
			rowOp{fmt.Sprintf("gelu_erf/%dx%d", rows, mlp), 4 * 2 * nh, func() error { return be.GELU(hout, h, kernels.GELUErf) }},
			rowOp{fmt.Sprintf("gelubackward/%dx%d", rows, mlp), 4 * 3 * nh, func() error { return be.GELUBackward(hdy, hout, h, kernels.GELUTanh) }},
			rowOp{fmt.Sprintf("convert_f32_bf16/%dx%d", rows, mlp), 6 * nh, func() error { return be.Convert(hb, h) }},
			rowOp{fmt.Sprintf("convert_bf16_f32/%dx%d", rows, mlp), 6 * nh, func() error { return be.Convert(hout, hb) }},
			rowOp{fmt.Sprintf("addbias/%dx%d", rows, d), 4 * 2 * nd, func() error { return be.AddBias(out, bias) }},
			rowOp{fmt.Sprintf("slicecols/%dx%d_of_%d", rows, d, 3*d), 4 * 2 * nd, func() error { return be.SliceCols(out, wide, d) }},
			rowOp{fmt.Sprintf("dropout/%dx%d", rows, d), 4 * 2 * nd, func() error { return be.Dropout(out, x, 12345, 0.1) }},
		)
	}
	saved := rowOpsV1
	defer func() { rowOpsV1 = saved }()
	for _, c := range cases {
		name, rest, _ := cut(c.name)
		for _, v := range []struct {
			label string
			v1    bool
		}{{"old", true}, {"new", false}} {
			b.Run(name+"/"+v.label+"/"+rest, func(b *testing.B) {
				rowOpsV1 = v.v1
				measure(b, be, c.bytes, c.op)
			})
		}
	}
}

// cut splits "op/shape" at its slash.
func cut(s string) (op, shape string, ok bool) {
	for i := range len(s) {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// rowsView is t's first rows·cols elements seen as [rows, cols] where t is
// [rows, k·cols]: a tensor of the right shape over t's memory (the values
// are whatever t holds; the benchmark needs only a second operand).
func (t *Tensor) rowsView(cols int) *Tensor {
	rows := t.n / t.shape[len(t.shape)-1]
	return &Tensor{be: t.be, ptr: t.ptr, shape: []int{rows, cols}, dtype: t.dtype, n: rows * cols, owner: t}
}
