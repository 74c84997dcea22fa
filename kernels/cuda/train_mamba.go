package cuda

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// The backward of the Mamba-2 mixer's own operations (kernels.MambaGrad):
// train_mamba.cu (conv, dt softplus, gated norm, the scan's passes between
// chunks and the fixed-order parameter sums) and train_mamba_scan.cu (the
// scan's chunk kernels, compiled per shape). Parameter gradients are summed
// without atomics, block partials first and then in block order, so every
// result is the same from run to run.

var _ kernels.MambaGrad = (*Backend)(nil)

func init() {
	moduleFiles["train_mamba"] = []string{"prelude.cu", "train_mamba.cu"}
	// Compiled per shape: -DMB_Q, -DMB_P, -DMB_N, -DMB_T, -DMB_T1.
	moduleFiles["train_mamba_scan"] = []string{"prelude.cu", "train_mamba_scan.cu"}
}

// named is an operand with its name, for the aliasing checks.
type named struct {
	t    *Tensor
	name string
}

// apart fails when an output shares memory with an input or with another
// output (nil operands are skipped): the kernels read their inputs after
// writing some outputs.
func (o *ops) apart(outs, ins []named) {
	for i, a := range outs {
		if a.t == nil {
			continue
		}
		for _, b := range outs[i+1:] {
			if o.err == nil && b.t != nil && a.t.ptr == b.t.ptr {
				o.fail("%s and %s share memory", a.name, b.name)
			}
		}
		for _, b := range ins {
			if o.err == nil && b.t != nil && a.t.ptr == b.t.ptr {
				o.fail("%s must not share memory with %s", a.name, b.name)
			}
		}
	}
}

// mambaLaunch1D launches kernel fn of the train_mamba module over n items
// with a grid-stride loop.
func (be *Backend) mambaLaunch1D(what, fn string, n int64, args ...any) error {
	f, err := be.kernel("train_mamba", fn)
	if err != nil {
		return err
	}
	return be.launch(what, f, dims{be.gridFor(n, blockElementwise), 1, 1}, dims{blockElementwise, 1, 1}, 0, args...)
}

// scratch allocates an F32 (or, by size, double-sized) temporary of n
// elements on the owner goroutine; the caller releases it (stream-ordered).
func (be *Backend) scratch(n int, double bool) (*Tensor, error) {
	if double {
		n *= 2 // a double is two F32 slots
	}
	return be.alloc(kernels.F32, []int{n}, n)
}

// colsum adds the nparts rows of the double partials part [nparts, cols]
// into out [cols], in row order.
func (be *Backend) colsum(what string, out *Tensor, part *Tensor, nparts, cols int) error {
	return be.mambaLaunch1D(what, "k_mamba_colsum", int64(cols), out, part, nparts, cols)
}

// Conv segments: a thread walks convSegMin or more tokens of one channel.
const (
	convBlock  = 128
	convSegMin = 32
	convMaxK   = 8 // longer kernels take the recomputing path
)

// CausalConv1dBackward writes du and accumulates the weight and bias
// gradients (each optional) of CausalConv1d(u, weight, bias, silu) given
// dout; every operand F32. The pre-activation is recomputed in double,
// sums are in double, and the parameter gradients are summed per segment
// of tokens and then over the segments in order (no atomics). dbias may be
// given without bias (it is Σ of the pre-activation gradient either way).
// du must not share memory with an input.
func (be *Backend) CausalConv1dBackward(du, dweight, dbias, dout, u, weight, bias kernels.Tensor, silu bool) error {
	o := be.ops("causalconv1dbackward")
	dut, dwt, dbt := o.out(du, "du"), o.opt(dweight, "dweight"), o.opt(dbias, "dbias")
	dot, ut, wt, bt := o.t(dout, "dout"), o.t(u, "u"), o.t(weight, "weight"), o.opt(bias, "bias")
	var nb, l, c, k int
	if o.err == nil {
		if len(ut.shape) != 3 {
			o.fail("u must be [batch, seqlen, channels], got %v", ut.shape)
		} else {
			nb, l, c = ut.shape[0], ut.shape[1], ut.shape[2]
			o.shape(dut, "du", ut.shape...)
			o.shape(dot, "dout", ut.shape...)
			if len(wt.shape) != 2 || wt.shape[0] != c {
				o.fail("weight must be [%d, k], got %v", c, wt.shape)
			} else {
				k = wt.shape[1]
			}
			o.shape(bt, "bias", c)
			o.shape(dwt, "dweight", c, k)
			o.shape(dbt, "dbias", c)
		}
		o.apart([]named{{dut, "du"}, {dwt, "dweight"}, {dbt, "dbias"}},
			[]named{{dot, "dout"}, {ut, "u"}, {wt, "weight"}, {bt, "bias"}})
	}
	return o.run(func() error {
		if !rowOpsV1 && convBackwardV2 && k <= convMaxK && nb*l > 0 && c > 0 {
			return be.conv1dBackward2(o.op, dut, dwt, dbt, dot, ut, wt, bt, nb, l, c, k, silu)
		}
		// Enough (segment, channel) threads for two waves of the device.
		want := max(1, (2*be.sms*2048+c-1)/c)
		seg := max(convSegMin, (nb*l+want-1)/want)
		nsegb := (l + seg - 1) / seg
		nseg := nb * nsegb
		cblocks := (c + convBlock - 1) / convBlock
		if int64(nseg)*int64(cblocks) > 1<<31-1 {
			return fmt.Errorf("too many segments (%d × %d blocks)", nseg, cblocks)
		}
		var part *Tensor
		if dwt != nil || dbt != nil {
			var err error
			if part, err = be.scratch(nseg*c*(k+1), true); err != nil {
				return err
			}
			defer be.release(part)
		}
		fn, args := fmt.Sprintf("k_conv1d_bwd_%d", k), []any{dut, part, dot, ut, wt, bt, l, c}
		if k > convMaxK {
			fn, args = "k_conv1d_bwd_any", append(args, k)
		}
		args = append(args, seg, nsegb, cblocks, silu)
		f, err := be.kernel("train_mamba", fn)
		if err != nil {
			return err
		}
		if err := be.launch(o.op, f, dims{nseg * cblocks, 1, 1}, dims{convBlock, 1, 1}, 0, args...); err != nil {
			return err
		}
		if part == nil {
			return nil
		}
		return be.mambaLaunch1D(o.op, "k_conv1d_params", int64(c)*int64(k+1), dwt, dbt, part, nseg, c, k)
	})
}

// Blocks of k_conv1d_bwd2: convBwd2CX channel vectors × convBwd2SY
// segments (train_mamba.cu's MB_CONV_CX, MB_CONV_SY), a segment at least
// convBwd2SegMin tokens.
const convBwd2CX, convBwd2SY, convBwd2SegMin = 32, 8, 32

// convBackwardV2 sends CausalConv1dBackward to k_conv1d_bwd2 (with
// rowOpsV1 = false). Off: on the H200 at 1428 × 7680, K 4
// (BenchmarkMambaOps, 2026-11-29) it took 0.184 ms against 0.105 for the
// first kernel. The tests and the benchmark still run it as "new".
var convBackwardV2 = false

// conv1dBackward2 is CausalConv1dBackward on k_conv1d_bwd2 (rowOpsV1 =
// false, k ≤ convMaxK): 4 channels a thread when k ≤ 4, c is a multiple
// of 4 and du, dout and u are 16-byte aligned (else 1), segments of at
// least convBwd2SegMin tokens, enough for two waves of the device; each
// block adds its 8 segments' weight sums in order before
// k_conv1d_params adds the blocks' in order. du has k_conv1d_bwd's bits;
// dweight and dbias are the same sums grouped otherwise (in double).
func (be *Backend) conv1dBackward2(what string, dut, dwt, dbt, dot, ut, wt, bt *Tensor, nb, l, c, k int, silu bool) error {
	cv := 1
	if k <= 4 && c%4 == 0 && vecAligned(dut, dot, ut) {
		cv = 4
	}
	vecs := c / cv
	want := max(1, (2*be.sms*2048+vecs-1)/vecs)
	seg := max(convBwd2SegMin, (nb*l+want-1)/want)
	nsegb := (l + seg - 1) / seg
	nseg := nb * nsegb
	gy := (nseg + convBwd2SY - 1) / convBwd2SY
	gx := (vecs + convBwd2CX - 1) / convBwd2CX
	if gy > 65535 {
		return fmt.Errorf("too many segments (%d blocks of %d)", gy, convBwd2SY)
	}
	var part *Tensor
	if dwt != nil || dbt != nil {
		var err error
		if part, err = be.scratch(gy*c*(k+1), true); err != nil {
			return err
		}
		defer be.release(part)
	}
	f, err := be.kernel("train_mamba", fmt.Sprintf("k_conv1d_bwd2_%d_%d", k, cv))
	if err != nil {
		return err
	}
	if err := be.launch(what, f, dims{gx, gy, 1}, dims{convBwd2CX, convBwd2SY, 1}, 0, dut, part, dot, ut, wt, bt, l, c, seg, nsegb, nseg, silu); err != nil {
		return err
	}
	if part == nil {
		return nil
	}
	return be.mambaLaunch1D(what, "k_conv1d_params", int64(c)*int64(k+1), dwt, dbt, part, gy, c, k)
}

// dtSeg is the rows one thread of the dt softplus backward walks
// (train_mamba.cu's MB_DT_SEG).
const dtSeg = 16

// DtSoftplusBackward writes dRaw = ddt·σ(dtRaw + bias) (σ in double) and
// accumulates Σ over the leading dimensions of dRaw into dbias [h]
// (optional, and allowed without bias), summed per 16 rows and then in
// order. Every operand is F32; dRaw may be ddt or dtRaw itself.
func (be *Backend) DtSoftplusBackward(dRaw, dbias, ddt, dtRaw, bias kernels.Tensor) error {
	o := be.ops("dtsoftplusbackward")
	ot, dbt := o.out(dRaw, "dRaw"), o.opt(dbias, "dbias")
	gt, rt, bt := o.t(ddt, "ddt"), o.t(dtRaw, "dtRaw"), o.opt(bias, "bias")
	var rows, h int
	if o.err == nil {
		o.shape(gt, "ddt", rt.shape...)
		o.shape(ot, "dRaw", rt.shape...)
		rows, h = lastDim(rt)
		o.shape(bt, "bias", h)
		o.shape(dbt, "dbias", h)
		o.apart([]named{{dbt, "dbias"}}, []named{{ot, "dRaw"}, {gt, "ddt"}, {rt, "dtRaw"}, {bt, "bias"}})
		o.apart([]named{{ot, "dRaw"}}, []named{{bt, "bias"}})
	}
	return o.run(func() error {
		nseg := (rows + dtSeg - 1) / dtSeg
		var part *Tensor
		if dbt != nil {
			var err error
			if part, err = be.scratch(nseg*h, true); err != nil {
				return err
			}
			defer be.release(part)
		}
		var err error
		if rowOpsV1 {
			err = be.mambaLaunch1D(o.op, "k_dt_softplus_bwd", int64(nseg)*int64(h), ot, part, gt, rt, bt, int64(rows), h, dtSeg, nseg)
		} else {
			err = be.mambaLaunch1D(o.op, "k_dt_softplus_bwd2", int64(nseg)*int64(h), ot, part, gt, rt, bt, int64(rows), h, nseg)
		}
		if err != nil {
			return err
		}
		if part == nil {
			return nil
		}
		return be.colsum(o.op, dbt, part, nseg, h)
	})
}

// gatedNormWarpV is the most channels a lane k_gated_norm_bwd_w holds:
// groups of up to 32·gatedNormWarpV channels take it (rowOpsV1 = false),
// larger ones k_gated_norm_bwd.
const gatedNormWarpV = 8

// GatedRMSNormBackward writes dy and dz (dz nil exactly when z is nil)
// and accumulates dweight (optional) for GatedRMSNorm(y, z, weight,
// groupSize, eps), every operand F32. Statistics are recomputed and
// everything is evaluated in double; one block takes a run of rows and
// sums each weight channel over them in order, then the blocks' sums are
// added in order. Outputs must not share memory with inputs.
func (be *Backend) GatedRMSNormBackward(dy, dz, dweight, dout, y, z, weight kernels.Tensor, groupSize int, eps float32) error {
	o := be.ops("gatedrmsnormbackward")
	dyt, dzt, dwt := o.out(dy, "dy"), o.opt(dz, "dz"), o.opt(dweight, "dweight")
	dot, yt, zt, wt := o.t(dout, "dout"), o.t(y, "y"), o.opt(z, "z"), o.t(weight, "weight")
	var rows, width int
	if o.err == nil {
		rows, width = lastDim(yt)
		o.shape(dot, "dout", yt.shape...)
		o.shape(dyt, "dy", yt.shape...)
		o.shape(zt, "z", yt.shape...)
		o.shape(dzt, "dz", yt.shape...)
		o.shape(wt, "weight", width)
		o.shape(dwt, "dweight", width)
		switch {
		case o.err != nil:
		case (zt == nil) != (dzt == nil):
			o.fail("dz must be given exactly when z is (z given: %v, dz given: %v)", zt != nil, dzt != nil)
		case groupSize <= 0 || width%groupSize != 0:
			o.fail("group size %d does not divide the last dimension %d", groupSize, width)
		}
		o.apart([]named{{dyt, "dy"}, {dzt, "dz"}, {dwt, "dweight"}},
			[]named{{dot, "dout"}, {yt, "y"}, {zt, "z"}, {wt, "weight"}})
	}
	checkEps(o, eps)
	return o.run(func() error {
		rb := max(1, (rows+2*be.sms-1)/(2*be.sms))
		nblk := (rows + rb - 1) / rb
		var part *Tensor
		if dwt != nil {
			var err error
			if part, err = be.scratch(nblk*width, true); err != nil {
				return err
			}
			defer be.release(part)
		}
		fn, grid := "k_gated_norm_bwd", nblk
		if v := (groupSize + 31) / 32; !rowOpsV1 && v <= gatedNormWarpV {
			// A warp a (group, run of rb rows), 8 warps a block.
			fn, grid = fmt.Sprintf("k_gated_norm_bwd_w%d", v), int((int64(nblk)*int64(width/groupSize)+7)/8)
		}
		f, err := be.kernel("train_mamba", fn)
		if err != nil {
			return err
		}
		if err := be.launch(o.op, f, dims{grid, 1, 1}, dims{256, 1, 1}, 0,
			dyt, dzt, part, dot, yt, zt, wt, int64(rows), width, groupSize, rb, eps); err != nil {
			return err
		}
		if part == nil {
			return nil
		}
		return be.colsum(o.op, dwt, part, nblk, width)
	})
}

// scanGrad holds the checked operands of SSDChunkScanBackward.
type scanGrad struct {
	dx, ddt, dA, dB, dC, dD *Tensor
	dy, x, dt, A, B, C, D   *Tensor
	nb, l, h, p, g, n       int
}

// SSDChunkScanBackward writes dx, ddt, dB and dC and accumulates dA and dD
// (dD optional, and nil when D is) of SSDChunkScan(y, x, dt, A, B, C, D,
// nil, chunk) given dy (kernels.MambaGrad). x, B and C may be F32 or BF16
// (widened exactly), dt, A and D F32 or BF16; dy and the gradients F32.
//
// Chunked, on the CUDA cores in float32, with the C·Bᵀ and gy·xᵀ dot
// products and the decay gradient's sums in double (train_mamba_scan.cu
// says why): pass 1 computes each chunk's own state and state-gradient
// contributions, a pass between chunks turns them into the state entering
// and the gradient leaving each chunk, and pass 2 computes every gradient
// of a chunk from those two; every exponent is ≤ 0 and the decay's
// gradient is a sum of positive-weight terms (no reverse cumulative sum).
// Its temporaries are two float32 states a chunk and head (at batch 8 ×
// 4096, 32 heads of 80×80, chunks of 64: 2 × 839 MB). The gradient does not
// depend on chunk, only its rounding does: the backward works in tiles of
// its own (64 tokens, fewer when shared memory is short), and chunk is
// only checked. A group's dB and dC sum over its heads in head order; dA
// and dD over batch rows and chunks in order.
func (be *Backend) SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D kernels.Tensor, chunk int) error {
	o := be.ops("ssdchunkscanbackward")
	s := &scanGrad{dx: o.out(dx, "dx"), ddt: o.out(ddt, "ddt"), dA: o.out(dA, "dA"), dB: o.out(dB, "dB"), dC: o.out(dC, "dC"), dD: o.opt(dD, "dD"),
		dy: o.t(dy, "dy"), x: o.any(x, "x"), dt: o.any(dt, "dt"), A: o.any(A, "A"), B: o.any(B, "B"), C: o.any(C, "C"), D: o.optAny(D, "D")}
	if o.err == nil {
		switch {
		case len(s.x.shape) != 4:
			o.fail("x must be [batch, seqlen, heads, headdim], got %v", s.x.shape)
		case len(s.B.shape) != 4:
			o.fail("B must be [batch, seqlen, groups, dstate], got %v", s.B.shape)
		case s.D == nil && s.dD != nil:
			o.fail("dD is given but D is nil")
		case chunk <= 0:
			o.fail("chunk length %d, want > 0", chunk)
		}
	}
	if o.err == nil {
		s.nb, s.l, s.h, s.p = s.x.shape[0], s.x.shape[1], s.x.shape[2], s.x.shape[3]
		s.g, s.n = s.B.shape[2], s.B.shape[3]
		if s.h%s.g != 0 {
			o.fail("%d heads is not a multiple of %d groups", s.h, s.g)
		}
		for _, c := range []struct {
			t     *Tensor
			name  string
			shape []int
		}{
			{s.dt, "dt", []int{s.nb, s.l, s.h}}, {s.A, "A", []int{s.h}}, {s.B, "B", []int{s.nb, s.l, s.g, s.n}},
			{s.C, "C", []int{s.nb, s.l, s.g, s.n}}, {s.D, "D", []int{s.h}}, {s.dy, "dy", []int{s.nb, s.l, s.h, s.p}},
			{s.dx, "dx", []int{s.nb, s.l, s.h, s.p}}, {s.ddt, "ddt", []int{s.nb, s.l, s.h}}, {s.dA, "dA", []int{s.h}},
			{s.dB, "dB", []int{s.nb, s.l, s.g, s.n}}, {s.dC, "dC", []int{s.nb, s.l, s.g, s.n}}, {s.dD, "dD", []int{s.h}},
		} {
			o.shape(c.t, c.name, c.shape...)
		}
		o.apart([]named{{s.dx, "dx"}, {s.ddt, "ddt"}, {s.dA, "dA"}, {s.dB, "dB"}, {s.dC, "dC"}, {s.dD, "dD"}},
			[]named{{s.dy, "dy"}, {s.x, "x"}, {s.dt, "dt"}, {s.A, "A"}, {s.B, "B"}, {s.C, "C"}, {s.D, "D"}})
	}
	var plan scanBwdPlan
	if o.err == nil {
		var err error
		if plan, err = be.planScanBackward(s.p, s.n); err != nil {
			o.fail("%v", err)
		}
	}
	return o.run(func() error { return be.scanBackward(o.op, s, plan) })
}

// scanBwdTile, when not 0, forces the tile length of the scan backward
// (a multiple of 4 up to 64; the benchmarks compare them).
var scanBwdTile = 0

// scanBwdPlan is the scan backward's compiled shape: tile length q,
// threads t (pass 2) and t1 (pass 1), and their dynamic shared memory.
type scanBwdPlan struct {
	q, p, n, t, t1, smem, smem1 int
}

func (pl scanBwdPlan) defines() []string {
	return []string{fmt.Sprintf("MB_Q=%d", pl.q), fmt.Sprintf("MB_P=%d", pl.p), fmt.Sprintf("MB_N=%d", pl.n),
		fmt.Sprintf("MB_T=%d", pl.t), fmt.Sprintf("MB_T1=%d", pl.t1)}
}

// mbR4 and mbLD mirror train_mamba_scan.cu's R4 and LDV: a dimension
// rounded up to a multiple of 4, and a row stride that is a multiple of 4
// with an odd number of 16-byte units.
func mbR4(v int) int { return (v + 3) / 4 * 4 }

func mbLD(v int) int {
	r := mbR4(v)
	if r/4%2 == 0 {
		r += 4
	}
	return r
}

// scanBwdShared is k_mamba_scan_bwd's dynamic shared memory (SB_END
// floats) and chunkStatesShared k_mamba_chunk_states' (CS_END floats).
func scanBwdShared(q, p, n int) int {
	ldp, ldn, ldq := mbLD(p), mbLD(n), mbLD(q)
	tp, tn := mbR4(p)/4, mbR4(n)/4
	return 4 * (2*q*ldp + 2*q*ldn + 3*q*ldq + mbR4(p)*ldn + q*(tn+2*tp) + 11*q + 192)
}

func chunkStatesShared(q, p, n int) int { return 4 * (2*q*mbLD(p) + 2*q*mbLD(n) + 3*q) }

// mbThreads is a block size for tasks one-per-thread tasks: whole warps,
// between 64 and 512 (more tasks loop).
func mbThreads(tasks int) int { return min(512, max(64, (tasks+31)/32*32)) }

// planScanBackward picks the tile length (64 tokens, halved until both
// kernels fit in shared memory) and the block sizes: one 4×4 output tile a
// thread in each phase where that takes at most 512 threads.
func (be *Backend) planScanBackward(p, n int) (scanBwdPlan, error) {
	q := 64
	if scanBwdTile != 0 {
		q = scanBwdTile
	}
	for q > 4 && (scanBwdShared(q, p, n) > be.smemOptin || chunkStatesShared(q, p, n) > be.smemOptin) {
		q /= 2
	}
	if scanBwdShared(q, p, n) > be.smemOptin || chunkStatesShared(q, p, n) > be.smemOptin {
		return scanBwdPlan{}, fmt.Errorf("headdim %d and d_state %d: the scan backward needs %d bytes of shared memory, the device has %d",
			p, n, scanBwdShared(q, p, n), be.smemOptin)
	}
	tq, tp, tn := q/4, mbR4(p)/4, mbR4(n)/4
	return scanBwdPlan{q: q, p: p, n: n,
		t:    mbThreads(max(tq*tp, tq*tn, tq*(tq+1))),
		t1:   mbThreads(tp * tn),
		smem: scanBwdShared(q, p, n), smem1: chunkStatesShared(q, p, n)}, nil
}

// scanBwdStage, when not nil, is called on the owner goroutine before the
// scan backward's first kernel ("start") and after each of its stages (a
// benchmark records events there to time them).
var scanBwdStage func(stage string) error

func (be *Backend) scanBackward(what string, s *scanGrad, pl scanBwdPlan) error {
	stage := func(name string) error {
		if scanBwdStage == nil {
			return nil
		}
		return scanBwdStage(name)
	}
	nc := (s.l + pl.q - 1) / pl.q
	nbh := s.nb * s.h
	if int64(nbh)*int64(nc) > 1<<31-1 {
		return fmt.Errorf("too many chunks (%d × %d)", nbh, nc)
	}
	defs := pl.defines()
	k1, err := be.kernel("train_mamba_scan", "k_mamba_chunk_states", defs...)
	if err != nil {
		return err
	}
	k2, err := be.kernel("train_mamba_scan", "k_mamba_scan_bwd", defs...)
	if err != nil {
		return err
	}
	if err := be.setMaxDynamicShared(k1, pl.smem1); err != nil {
		return err
	}
	if err := be.setMaxDynamicShared(k2, pl.smem); err != nil {
		return err
	}
	pn := s.p * s.n
	var tmps []*Tensor
	defer func() {
		for _, t := range tmps {
			be.release(t)
		}
	}()
	tmp := func(n int) (*Tensor, error) {
		t, err := be.scratch(n, false)
		if err == nil {
			tmps = append(tmps, t)
		}
		return t, err
	}
	st, err := tmp(nbh * nc * pn)
	if err != nil {
		return err
	}
	dst, err := tmp(nbh * nc * pn)
	if err != nil {
		return err
	}
	decay, err := tmp(nbh * nc)
	if err != nil {
		return err
	}
	// Per-chunk parts of dA and dD, in double.
	partA, err := tmp(2 * nbh * nc)
	if err != nil {
		return err
	}
	partD, err := tmp(2 * nbh * nc)
	if err != nil {
		return err
	}
	dBo, dCo, ho := s.dB, s.dC, s.g
	if s.g != s.h {
		// Per-head rows first, then each group's sum over its heads.
		if dBo, err = tmp(s.nb * s.l * s.h * s.n); err != nil {
			return err
		}
		if dCo, err = tmp(s.nb * s.l * s.h * s.n); err != nil {
			return err
		}
		ho = s.h
	}
	blocks := nbh * nc
	if err := stage("start"); err != nil {
		return err
	}
	if err := be.launch(what, k1, dims{blocks, 1, 1}, dims{pl.t1, 1, 1}, pl.smem1,
		st, dst, decay, s.dy, s.x, s.x.bf(), s.dt, s.dt.bf(), s.A, s.A.bf(), s.B, s.B.bf(), s.C, s.C.bf(), s.l, s.h, s.g, nc); err != nil {
		return err
	}
	if err := stage("chunk states"); err != nil {
		return err
	}
	if err := be.mambaLaunch1D(what, "k_mamba_state_pass", 2*int64(nbh)*int64(pn), st, dst, decay, int64(nbh)*int64(pn), nc, pn); err != nil {
		return err
	}
	if err := stage("state pass"); err != nil {
		return err
	}
	if err := be.launch(what, k2, dims{blocks, 1, 1}, dims{pl.t, 1, 1}, pl.smem,
		s.dx, s.ddt, dBo, dCo, partA, partD, s.dy, s.x, s.x.bf(), s.dt, s.dt.bf(), s.A, s.A.bf(), s.B, s.B.bf(), s.C, s.C.bf(),
		s.D, s.D.bf(), st, dst, s.l, s.h, s.g, nc, ho); err != nil {
		return err
	}
	if err := stage("chunk gradients"); err != nil {
		return err
	}
	if s.g != s.h {
		total := int64(s.nb) * int64(s.l) * int64(s.g) * int64(s.n)
		for _, pair := range [][2]*Tensor{{s.dB, dBo}, {s.dC, dCo}} {
			if err := be.mambaLaunch1D(what, "k_mamba_group_sum", total, pair[0], pair[1], total, s.h, s.g, s.n); err != nil {
				return err
			}
		}
	}
	if err := be.mambaLaunch1D(what, "k_mamba_scan_params", int64(s.h), s.dA, s.dD, partA, partD, s.nb, s.h, nc); err != nil {
		return err
	}
	return stage("sums")
}
