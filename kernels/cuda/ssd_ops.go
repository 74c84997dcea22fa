package cuda

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// scan holds the checked operands of a scan (SSD or linear attention).
type scan struct {
	y, x, dt, A, B, C, D, state *Tensor
	nb, l, h, p, n              int
	hx, hb, hc                  int // heads of x, groups of B and of C
}

func (be *Backend) ssdOperands(o *ops, y, x, dt, A, B, C, D, state kernels.Tensor) *scan {
	s := &scan{y: o.out(y, "y"), x: o.any(x, "x"), dt: o.any(dt, "dt"), A: o.any(A, "A"), B: o.any(B, "B"), C: o.any(C, "C"),
		D: o.optAny(D, "D"), state: o.opt(state, "state")}
	if o.err != nil {
		return s
	}
	if len(s.x.shape) != 4 {
		o.fail("x must be [batch, seqlen, heads, headdim], got %v", s.x.shape)
		return s
	}
	if len(s.B.shape) != 4 {
		o.fail("B must be [batch, seqlen, groups, dstate], got %v", s.B.shape)
		return s
	}
	s.nb, s.l, s.h, s.p = s.x.shape[0], s.x.shape[1], s.x.shape[2], s.x.shape[3]
	g := s.B.shape[2]
	s.n = s.B.shape[3]
	if s.h%g != 0 {
		o.fail("%d heads is not a multiple of %d groups", s.h, g)
		return s
	}
	s.hx, s.hb, s.hc = s.h, g, g
	o.shape(s.y, "y", s.nb, s.l, s.h, s.p)
	o.shape(s.dt, "dt", s.nb, s.l, s.h)
	o.shape(s.A, "A", s.h)
	o.shape(s.B, "B", s.nb, s.l, g, s.n)
	o.shape(s.C, "C", s.nb, s.l, g, s.n)
	o.shape(s.D, "D", s.h)
	o.shape(s.state, "state", s.nb, s.h, s.p, s.n)
	for _, in := range []struct {
		t    *Tensor
		name string
	}{{s.x, "x"}, {s.dt, "dt"}, {s.B, "B"}, {s.C, "C"}, {s.state, "state"}} {
		o.noAlias(s.y, in.t, in.name)
	}
	return s
}

// SSDRecurrence runs the Mamba-2 recurrence token by token: one warp per
// (batch, head, headdim row), state and sums in double (d_state ≤ 256).
func (be *Backend) SSDRecurrence(y, x, dt, A, B, C, D, state kernels.Tensor) error {
	o := be.ops("ssdrecurrence")
	s := be.ssdOperands(o, y, x, dt, A, B, C, D, state)
	if o.err == nil && s.n > 256 {
		o.fail("d_state %d > 256 is not supported", s.n)
	}
	return o.run(func() error { return be.recurrence(o.op, s) })
}

func (be *Backend) recurrence(what string, s *scan) error {
	npl := 1
	for npl*32 < s.n {
		npl *= 2
	}
	f, err := be.kernel("core", fmt.Sprintf("k_ssd_recurrence_%d", npl))
	if err != nil {
		return err
	}
	warps := int64(s.nb) * int64(s.h) * int64(s.p)
	const block = 256
	grid := (warps*32 + block - 1) / block
	if grid > 1<<31-1 {
		return fmt.Errorf("%s: too many rows (%d)", what, warps)
	}
	return be.launch(what, f, dims{int(grid), 1, 1}, dims{block, 1, 1}, 0,
		s.y, s.x, s.x.bf(), s.dt, s.dt.bf(), s.A, s.A.bf(), s.B, s.B.bf(), s.C, s.C.bf(), s.D, s.D.bf(), s.state,
		s.nb, s.l, s.h, s.p, s.n, s.hx, s.hb, s.hc)
}

// maxChunkTile is the longest chunk a kernel holds in shared memory.
// Longer chunks are processed in pieces of defaultChunkTile tokens, which
// is the same chunked algorithm with a shorter chunk: the function is the
// same, only rounding differs.
const (
	maxChunkTile     = 128
	defaultChunkTile = 64
)

// SSDChunkScan computes SSDRecurrence's function by the chunked algorithm
// (SPEC §3) with chunk length chunk (above 128, pieces of 64 tokens: see
// maxChunkTile). bf16 x, B and C with headdim and d_state multiples of 16
// and a chunk that is a multiple of 32 run on the tensor cores
// (ssd_tc.cu); everything else on the CUDA cores (ssd_cc.cu). Both keep
// dt, the cumulative sums and the state in float32, every exponent ≤ 0.
func (be *Backend) SSDChunkScan(y, x, dt, A, B, C, D, state kernels.Tensor, chunk int) error {
	o := be.ops("ssdchunkscan")
	s := be.ssdOperands(o, y, x, dt, A, B, C, D, state)
	if chunk <= 0 {
		o.fail("chunk length %d, want > 0", chunk)
	}
	return o.run(func() error { return be.chunkScan(o.op, s, chunk, tcW1) })
}

// chunkScan runs the chunked scan; w1 lets chunks of 64 on bf16 x, B and
// C take the bf16-precision W of ssd_tc2.cu (tcW1: SSDChunkScan passes
// the switch, LinearAttention false).
func (be *Backend) chunkScan(what string, s *scan, chunk int, w1 bool) error {
	q := chunk
	if q > maxChunkTile {
		q = defaultChunkTile
	}
	if s.x.dtype == kernels.BF16 && s.B.dtype == kernels.BF16 && s.C.dtype == kernels.BF16 &&
		s.p%16 == 0 && s.n%16 == 0 && q%32 == 0 {
		w1 = w1 && tcPipelinedFor(q)
		if pb := be.pickSplit(s, 16, func(pb int) int { return tcBlockBytesW1(q, pb, s.n, w1) }); pb > 0 {
			return be.scanTC(what, s, q, pb, w1)
		}
	}
	// A chunk too long for shared memory with this d_state is halved: the
	// same algorithm with a shorter chunk.
	for ; q >= 1; q /= 2 {
		if pb := be.pickSplit(s, 1, func(pb int) int { return ccSharedBytes(q, pb, s.n) }); pb > 0 {
			return be.scanCC(what, s, q, pb)
		}
	}
	return fmt.Errorf("%s: d_state %d does not fit in %d bytes of shared memory", what, s.n, be.smemOptin)
}

// pickSplit chooses how many headdim columns one block takes: the largest
// divisor of P that is a multiple of unit and fits in shared memory, made
// smaller while there are fewer blocks than multiprocessors. 0: none fits.
func (be *Backend) pickSplit(s *scan, unit int, smem func(pb int) int) int {
	best := 0
	for pb := s.p; pb >= unit; pb-- {
		if s.p%pb != 0 || pb%unit != 0 || smem(pb) > be.smemOptin {
			continue
		}
		best = pb
		if s.nb*s.h*(s.p/pb) >= be.sms {
			break
		}
	}
	return best
}

// ccSharedBytes is ssd_cc.cu's dynamic shared memory.
func ccSharedBytes(q, pb, n int) int {
	return 4 * (q*pb + 2*q*(n+1) + q*(q+1) + pb*(n+1) + 4*q)
}

// pad16 mirrors ssd_tc.cu's PAD16: a row of w bf16 padded to an odd number
// of 16-byte units.
func pad16(w int) int {
	u := (w + 7) / 8
	if u%2 == 0 {
		u++
	}
	return 8 * u
}

// tcSharedBytes is ssd_tc.cu's dynamic shared memory.
func tcSharedBytes(q, pb, n int) int {
	sx, sn, sq := pad16(pb), pad16(n), pad16(q)
	return 2*(2*q*sx+2*q*sn+q*sn+2*q*sq) + 4*8*q
}

// tcBlockBytes is the dynamic shared memory of the tensor-core scan the
// backend runs for chunks of q (tc2SharedBytes when tcPipelinedFor(q),
// else tcSharedBytes) for the splits it accepts, and math.MaxInt (fits
// nowhere) for the others: its pb/cw warps copy a row of B (n/8 pieces of
// 16 bytes) in one pass, so n ≤ 256·pb/cw.
func tcBlockBytes(q, pb, n int) int { return tcBlockBytesW1(q, pb, n, false) }

// tcBlockBytesW1 is tcBlockBytes, with w1 for ssd_tc2.cu's SSD_W1 variant
// (tc2W1SharedBytes; w1 is only ever true with tcPipelinedFor(q)).
func tcBlockBytesW1(q, pb, n int, w1 bool) int {
	if n > 256*pb/tcCols(q, pb) {
		return math.MaxInt
	}
	if w1 {
		return tc2W1SharedBytes(q, pb, n)
	}
	if tcPipelinedFor(q) {
		return tc2SharedBytes(q, pb, n)
	}
	return tcSharedBytes(q, pb, n)
}

// tcPipelined is the switch to ssd_tc2.cu (k_ssd_tc2): the same scan and
// rounding as ssd_tc.cu, software-pipelined to one barrier a chunk (W of
// chunk c+1 computed during chunk c). On for chunks of 64 only: on the
// H200 at the Phi-2 layer size (BenchmarkSSDChunkScanVariants, 2026-11-29)
// tc2 with 8 columns took 0.428 ms against 0.440–0.448 for ssd_tc.cu,
// while at chunks of 32 ssd_tc.cu with 16 columns stays the faster (0.412
// against 0.428). The kernel itself takes chunks of 32 too (its tests run
// both).
var tcPipelined = true

// tcPipelinedFor reports whether chunks of q run on ssd_tc2.cu.
func tcPipelinedFor(q int) bool { return tcPipelined && q == 64 }

// tcW1 is the switch to ssd_tc2.cu's bf16-precision variant (SSD_W1=1):
// W, the decayed C·Bᵀ inside a chunk, rounded to one bf16 term instead of
// hi + lo, and W·x in one mma pass instead of two (at the Phi-2 size,
// chunk 64, 8 columns a warp: 100 mma a warp a chunk instead of 110, and
// 10 KB less shared memory). Y_off and the state stay hi + lo, so the
// error does not grow with the sequence: 0.7–1.5e-3 relative on y on the
// emulator against ~2e-6 (flash-attention class: FlashAttention rounds P
// to bf16 likewise), tested at 5e-3 (TestChunkScanTC2W1). Off by default; when on, SSDChunkScan with
// bf16 x, B and C at chunks of 64 (and longer chunks, run as 64) while
// tcPipelined takes it. LinearAttention and the f32-input paths never do.
// Not yet measured on the H200: the "tc2w1-" variants of
// BenchmarkSSDChunkScanVariants.
var tcW1 = false

// tc2SharedBytes is ssd_tc2.cu's dynamic shared memory: x in two stages,
// B and C in three, W (its causal 16×16 blocks, hi and lo) in two, and
// three stages of the chunk scalars.
func tc2SharedBytes(q, pb, n int) int { return tc2SharedBytesTerms(q, pb, n, 2) }

// tc2W1SharedBytes is the dynamic shared memory of ssd_tc2.cu with
// SSD_W1=1: W as one bf16 term, half the W buffers.
func tc2W1SharedBytes(q, pb, n int) int { return tc2SharedBytesTerms(q, pb, n, 1) }

// tc2SharedBytesTerms is ssd_tc2.cu's dynamic shared memory with W held as
// wterms bf16 terms (its WTERMS).
func tc2SharedBytesTerms(q, pb, n, wterms int) int {
	sx, sn := pad16(pb), pad16(n)
	lb := q / 16
	gb := lb * (lb + 1) / 2
	return 2*(2*q*sx+6*q*sn) + wterms*2*gb*512 + 3*4*4*q
}

func (be *Backend) scanCC(what string, s *scan, q, pb int) error {
	f, err := be.kernel("core", "k_ssd_cc")
	if err != nil {
		return err
	}
	smem := ccSharedBytes(q, pb, s.n)
	if err := be.setMaxDynamicShared(f, smem); err != nil {
		return err
	}
	return be.launch(what, f, dims{s.nb * s.h, s.p / pb, 1}, dims{256, 1, 1}, smem,
		s.y, s.x, s.x.bf(), s.dt, s.dt.bf(), s.A, s.A.bf(), s.B, s.B.bf(), s.C, s.C.bf(), s.D, s.D.bf(), s.state,
		s.l, s.h, s.p, s.n, s.hx, s.hb, s.hc, q, pb)
}

// tcWarpCols, when not 0, forces the headdim columns each warp of
// ssd_tc.cu owns (8 or 16; the tests run both). 0 lets tcCols choose.
var tcWarpCols = 0

// tcCols is the headdim columns a warp of ssd_tc.cu owns (SSD_CW) for
// chunks of q tokens and blocks of pb columns. With 16, every fragment of
// C, W and Bᵀ read from shared memory serves two n8 tiles, at half the
// warps and more registers: on the H200 at the Phi-2 layer size it is the
// faster at chunks of 32 (0.408 against 0.435 ms), as fast at 64 (0.446
// against 0.432–0.446 ms) and slower at 128 (0.79 against 0.63 ms, where
// 16 spills), see NOTES.md.
func tcCols(q, pb int) int {
	cw := tcWarpCols
	if cw == 0 {
		cw = 8
		if q <= 32 {
			cw = 16
		} else if tcPipelinedFor(q) {
			cw = tcPipelinedCols
		}
	}
	return min(cw, pb)
}

// tcPipelinedCols is the headdim columns a warp of ssd_tc2.cu at chunks
// of 64 (tcPipelined): 8 as ssd_tc.cu until measured; 16 if the
// "tc2-cw16" variant of BenchmarkSSDChunkScanVariants is the faster.
var tcPipelinedCols = 8

// scanTC launches ssd_tc.cu, or ssd_tc2.cu when tcPipelinedFor(q) (its
// SSD_W1 variant when w1, which chunkScan sets only then); extra are
// further -D definitions (the benchmarks compare variants with them).
func (be *Backend) scanTC(what string, s *scan, q, pb int, w1 bool, extra ...string) error {
	cw := tcCols(q, pb)
	if w1 {
		return be.launchTC(what, "ssd_tc2", "k_ssd_tc2", tc2W1SharedBytes(q, pb, s.n), s, q, pb, cw,
			append([]string{fmt.Sprintf("SSD_CW=%d", cw), "SSD_W1=1"}, extra...)...)
	}
	if tcPipelinedFor(q) {
		return be.launchTC(what, "ssd_tc2", "k_ssd_tc2", tc2SharedBytes(q, pb, s.n), s, q, pb, cw,
			append([]string{fmt.Sprintf("SSD_CW=%d", cw)}, extra...)...)
	}
	return be.launchTC(what, "ssd_tc", "k_ssd_tc", tcSharedBytes(q, pb, s.n), s, q, pb, cw,
		append([]string{fmt.Sprintf("SSD_CW=%d", cw)}, extra...)...)
}

// launchTC launches kernel fn of module mod (ssd_tc.cu, ssd_tc2.cu, or
// the previous version for the benchmarks) with smem bytes of dynamic shared memory
// and cw headdim columns a warp.
func (be *Backend) launchTC(what, mod, fn string, smem int, s *scan, q, pb, cw int, extra ...string) error {
	defs := append([]string{fmt.Sprintf("SSD_Q=%d", q), fmt.Sprintf("SSD_PB=%d", pb), fmt.Sprintf("SSD_N=%d", s.n)}, extra...)
	f, err := be.kernel(mod, fn, defs...)
	if err != nil {
		return err
	}
	if err := be.setMaxDynamicShared(f, smem); err != nil {
		return err
	}
	return be.launch(what, f, dims{s.nb * s.h, s.p / pb, 1}, dims{pb / cw * 32, 1, 1}, smem,
		s.y, s.x, s.dt, s.dt.bf(), s.A, s.A.bf(), s.B, s.C, s.D, s.D.bf(), s.state,
		s.l, s.h, s.p, s.hx, s.hb, s.hc)
}

// attnOperands checks out and q [b,l,H,p], k and v [b,l,Hkv,p].
func (be *Backend) attnOperands(o *ops, out, q, k, v kernels.Tensor) *scan {
	s := &scan{y: o.out(out, "out"), C: o.any(q, "q"), B: o.any(k, "k"), x: o.any(v, "v")}
	if o.err != nil {
		return s
	}
	if len(s.C.shape) != 4 || len(s.B.shape) != 4 {
		o.fail("q %v and k %v must be [batch, seqlen, heads, headdim]", s.C.shape, s.B.shape)
		return s
	}
	s.nb, s.l, s.h, s.p = s.C.shape[0], s.C.shape[1], s.C.shape[2], s.C.shape[3]
	s.n = s.p
	hkv := s.B.shape[2]
	o.shape(s.B, "k", s.nb, s.l, hkv, s.p)
	o.shape(s.x, "v", s.nb, s.l, hkv, s.p)
	o.shape(s.y, "out", s.nb, s.l, s.h, s.p)
	if o.err == nil && s.h%hkv != 0 {
		o.fail("%d heads is not a multiple of %d kv heads", s.h, hkv)
	}
	s.hx, s.hb, s.hc = hkv, hkv, s.h
	o.noAlias(s.y, s.C, "q")
	o.noAlias(s.y, s.B, "k")
	o.noAlias(s.y, s.x, "v")
	return s
}

// LinearAttention writes the causal, softmax-free, unscaled attention
// out_t = Σ_{s≤t} (q_t·k_s)·v_s: the chunked scan with x = v, B = k,
// C = q, dt = 1, A = 0 (chunks of 64).
func (be *Backend) LinearAttention(out, q, k, v kernels.Tensor) error {
	o := be.ops("linearattention")
	s := be.attnOperands(o, out, q, k, v)
	return o.run(func() error { return be.chunkScan(o.op, s, defaultChunkTile, false) })
}

// maxAttentionHead is the largest head size of SoftmaxAttention (its tiles
// live in static shared memory).
const maxAttentionHead = 128

// attention launches k_softmax_attention: queries s.l rows at positions
// qpos0.., keys the first lk of kvRows rows.
func (be *Backend) attention(what string, f uintptr, s *scan, kvRows, lk, qpos0 int, scale float32, causal bool) error {
	return be.launch(what, f, dims{(s.l + 15) / 16, s.nb * s.h, 1}, dims{128, 1, 1}, 0,
		s.y, s.C, s.C.bf(), s.B, s.B.bf(), s.x, s.x.bf(), s.l, kvRows, lk, qpos0, s.h, s.hb, s.p, scale, causal)
}

// SoftmaxAttention writes Σ_s softmax_s(scale·q_t·k_s)·v_s (s ≤ t when
// causal) by an online softmax in float32 (attention.cu); long causal
// sequences by blocked products instead (useAttentionGEMM).
func (be *Backend) SoftmaxAttention(out, q, k, v kernels.Tensor, scale float32, causal bool) error {
	o := be.ops("softmaxattention")
	s := be.attnOperands(o, out, q, k, v)
	if o.err == nil && s.p > maxAttentionHead {
		o.fail("head size %d > %d is not supported", s.p, maxAttentionHead)
	}
	return o.run(func() error {
		if be.useFlash(s) { // flash unless MATSURGERY_CUDA_ATTENTION=blocked (flash_attention.go)
			return be.flashForward(o.op, s, scale, causal, 0, false)
		}
		if useAttentionGEMM(s, causal) {
			return be.softmaxAttentionGEMM(o.op, s, scale, causal)
		}
		f, err := be.kernel("core", "k_softmax_attention")
		if err != nil {
			return err
		}
		return be.attention(o.op, f, s, s.l, s.l, 0, scale, causal)
	})
}
