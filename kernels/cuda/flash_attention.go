package cuda

import (
	"fmt"
	"os"

	"github.com/matsurgery/matsurgery/kernels"
)

// Tensor-core flash attention (flash_attention.cu): SoftmaxAttention and
// SoftmaxAttentionBackward for bf16 q, k and v by mma.sync m16n8k16 tiles,
// FlashAttention-2 style, never holding a score matrix in memory. On by
// default for BF16 q, k, v (all three) with head sizes that are multiples
// of 16 up to 128; everything else keeps the other paths.
// MATSURGERY_CUDA_ATTENTION=blocked, read when the backend is created,
// turns it off (the blocked cuBLAS paths, measured against it in
// BenchmarkFlashAttention*).
// Precision is flash-attention's: the probabilities (and, in the backward,
// dout and the score gradient) are rounded to bf16 as product operands,
// the softmax and every sum run in float32; against the float64 reference
// on the same bf16 inputs the relative error is a few 1e-3.

// attentionEnv names the environment variable that selects the attention
// path of a new Backend: "flash" (the default) or "blocked". It is not
// MATSURGERY_ATTENTION, which the CLI reads as bench's --attention flag.
const attentionEnv = "MATSURGERY_CUDA_ATTENTION"

func init() {
	// Compiled per head size (-DFA_P) and dK/dV query tile (-DFA_BQ).
	moduleFiles["flash_attention"] = []string{"prelude.cu", "flash_attention.cu"}
}

// attentionModeFromEnv reads attentionEnv: true for "flash" or unset,
// false for "blocked", an error for anything else.
func attentionModeFromEnv() (bool, error) {
	switch v := os.Getenv(attentionEnv); v {
	case "", "flash":
		return true, nil
	case "blocked":
		return false, nil
	default:
		return false, fmt.Errorf("%s=%q: want \"flash\" or \"blocked\"", attentionEnv, v)
	}
}

// flashHead says whether flash_attention.cu takes head size p.
func flashHead(p int) bool { return p >= 16 && p <= 128 && p%16 == 0 }

// useFlash says whether an attention call on the checked operands s runs
// the tensor-core flash kernels: the switch is on, q, k and v are BF16
// with a head size flashHead takes, and q, k, v start 16-byte aligned
// (cp.async pieces) and out 8-byte aligned (paired stores), which every
// allocation is.
func (be *Backend) useFlash(s *scan) bool {
	return be.flashAttention && s.C.dtype == kernels.BF16 && s.B.dtype == kernels.BF16 && s.x.dtype == kernels.BF16 && flashHead(s.p) &&
		s.C.ptr%16 == 0 && s.B.ptr%16 == 0 && s.x.ptr%16 == 0 && s.y.ptr%8 == 0
}

// flashRows is the query rows of a forward or dQ block and the keys of a
// dK/dV block (FA_BM in flash_attention.cu).
const flashRows = 64

// flashBQOverride, when not 0, fixes the dK/dV pass's query tile (32 or
// 64; the tests run both). 0 lets flashBQ choose.
var flashBQOverride = 0

// flashBQ is the query rows a step of the dK/dV pass for head size p: 64,
// and 32 above 96, where the two 16×64 score tiles and the dK and dV
// accumulators (p/2 floats each) would not fit the registers together.
// Not yet measured on a GPU.
func flashBQ(p int) int {
	if flashBQOverride != 0 {
		return flashBQOverride
	}
	if p > 96 {
		return 32
	}
	return 64
}

// Dynamic shared memory of the kernels of flash_attention.cu (FWD_SMEM,
// DQ_SMEM, DKV_SMEM there): tiles of 64 rows of pad16(p) bf16.
func flashForwardBytes(p int) int { return 5 * 64 * pad16(p) * 2 }
func flashDQBytes(p int) int      { return 6 * 64 * pad16(p) * 2 }
func flashDKVBytes(p, bq int) int { return 2*64*pad16(p)*2 + 4*bq*pad16(p)*2 + 16*bq }
func flashDefines(p, bq int) []string {
	return []string{fmt.Sprintf("FA_P=%d", p), fmt.Sprintf("FA_BQ=%d", bq)}
}

// flashKernel returns kernel fn of flash_attention.cu for head size p and
// dK/dV tile bq, allowed smem bytes of dynamic shared memory.
func (be *Backend) flashKernel(fn string, p, bq, smem int) (uintptr, error) {
	if smem > be.smemOptin {
		return 0, fmt.Errorf("%s: head size %d needs %d bytes of shared memory, the device allows %d", fn, p, smem, be.smemOptin)
	}
	f, err := be.kernel("flash_attention", fn, flashDefines(p, bq)...)
	if err != nil {
		return 0, err
	}
	if err := be.setMaxDynamicShared(f, smem); err != nil {
		return 0, err
	}
	return f, nil
}

// flashGrid is the grid of the forward and dQ pass: (batch·heads, query
// blocks), the query blocks in y so that rev can order them.
func flashGrid(s *scan) (dims, error) {
	blocks := (s.l + flashRows - 1) / flashRows
	if blocks > 65535 {
		return dims{}, fmt.Errorf("sequence of %d tokens: more than 65535 blocks of %d", s.l, flashRows)
	}
	return dims{s.nb * s.h, blocks, 1}, nil
}

// flashForward runs k_flash_fwd on the checked operands s (q, k, v BF16):
// out, and each row's natural log-sum-exp of the scaled scores into lse
// (F32 [b, H, l]) unless lse is 0; lseOnly computes only lse (out is not
// written). Owner goroutine only.
func (be *Backend) flashForward(what string, s *scan, scale float32, causal bool, lse devPtr, lseOnly bool) error {
	grid, err := flashGrid(s)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	smem := flashForwardBytes(s.p)
	f, err := be.flashKernel("k_flash_fwd", s.p, flashBQ(s.p), smem)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return be.launch(what, f, grid, dims{128, 1, 1}, smem,
		s.y, lse, s.C, s.B, s.x, s.l, s.h, s.hb, scale*log2e32, causal, causal, lseOnly)
}

// log2e32 is log2(e) in float32 (the kernels score in base 2).
const log2e32 = float32(1.4426950408889634)

// flashBackward is SoftmaxAttentionBackward on the tensor cores for the
// checked operands s (q, k, v BF16), dq, dk, dv and dout: the rows'
// log-sum-exp by a forward pass without V (the interface hands no LSE
// over), D = rowsum(dout∘out) with dout rounded to bf16 (k_flash_bwd_prep),
// then dQ (k_flash_bwd_dq) and dK, dV (k_flash_bwd_dkdv), each written by
// one thread in a fixed order: deterministic. Scratch: 8 bytes a (row,
// head) and dout in bf16. Owner goroutine only.
func (be *Backend) flashBackward(what string, s *scan, dq, dk, dv, dout *Tensor, scale float32, causal bool) error {
	grid, err := flashGrid(s)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	rows := s.nb * s.l * s.h
	buf, err := be.drv.alloc(uint64(8*rows+2*rows*s.p), be.stream)
	if err != nil {
		return err
	}
	defer func() { _ = be.drv.free(buf, be.stream) }()
	lse, D, dob := devPtr(buf), devPtr(buf+uint64(4*rows)), devPtr(buf+uint64(8*rows))
	if err := be.flashForward(what+" log-sum-exp", s, scale, causal, lse, true); err != nil {
		return err
	}
	bq := flashBQ(s.p)
	prep, err := be.flashKernel("k_flash_bwd_prep", s.p, bq, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := be.launch(what, prep, dims{be.gridFor(int64(rows)*32, 256), 1, 1}, dims{256, 1, 1}, 0,
		D, dob, dout, dout.bf(), s.y, s.y.bf(), s.nb*s.l, s.l, s.h); err != nil {
		return err
	}
	scale2 := scale * log2e32
	smem := flashDQBytes(s.p)
	fdq, err := be.flashKernel("k_flash_bwd_dq", s.p, bq, smem)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := be.launch(what, fdq, grid, dims{128, 1, 1}, smem,
		dq, s.C, s.B, s.x, dob, lse, D, s.l, s.h, s.hb, scale, scale2, causal, causal); err != nil {
		return err
	}
	smem = flashDKVBytes(s.p, bq)
	fkv, err := be.flashKernel("k_flash_bwd_dkdv", s.p, bq, smem)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return be.launch(what, fkv, dims{s.nb * s.hb, grid.y, 1}, dims{128, 1, 1}, smem,
		dk, dv, s.C, s.B, s.x, dob, lse, D, s.l, s.h, s.hb, scale, scale2, causal)
}
