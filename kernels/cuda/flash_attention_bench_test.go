package cuda

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

// Benchmarks of the tensor-core flash attention (flash_attention.cu)
// against the current paths, one sequence of 32 heads of 80 (Phi-2's
// attention; -cuda.flashp changes the head size), causal, CUDA-event
// medians. Each path is chosen by setting the backend's switch for the
// call, so no environment variable is needed. -cuda.small shrinks them for
// the emulator.

var benchFlashP = flag.Int("cuda.flashp", 80, "head size of the flash attention benchmarks (a multiple of 16 up to 128)")

// BenchmarkFlashAttentionForward: SoftmaxAttention, causal, at l = 1428,
// 4096, 16384, 32768: flash (bf16 q, k, v on flash_attention.cu), gemm-bf16
// (the blocked cuBLAS products on bf16 operands), gemm-f32 (the same on
// float32 copies, the precision reference) and, up to 4096, cc (the
// CUDA-core flash kernel of attention.cu, f32). TFLOP/s counts 4·p·scores
// a head over the unmasked scores; the flash run also reports
// relerr-vs-f32, its relative difference from gemm-f32's output on the
// same (bf16-valued) inputs, and flash-lse the time of the log-sum-exp
// pass the backward runs first.
func BenchmarkFlashAttentionForward(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(87, 88))
	h, p := 32, *benchFlashP
	ls := []int{1428, 4096, 16384, 32768}
	if *benchSmall {
		h, ls = 2, []int{200}
	}
	if !flashHead(p) {
		b.Fatalf("-cuda.flashp=%d: not a head size of the flash kernels", p)
	}
	saved := be.flashAttention
	defer func() { be.flashAttention = saved }()
	scale := float32(1 / math.Sqrt(float64(p)))
	for _, l := range ls {
		q, q32 := benchPair(b, be, rng, 1, l, h, p)
		k, k32 := benchPair(b, be, rng, 1, l, h, p)
		v, v32 := benchPair(b, be, rng, 1, l, h, p)
		out := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		flops := 4 * float64(h*p) * attnScores(l, true)
		var ref []float64 // gemm-f32's output
		paths := []string{"gemm-f32", "gemm-bf16", "flash"}
		if l <= 4096 {
			paths = append(paths, "cc")
		}
		for _, path := range paths {
			b.Run(fmt.Sprintf("l=%d/p=%d/%s", l, p, path), func(b *testing.B) {
				op := func() error {
					switch path {
					case "flash":
						be.flashAttention = true
						return be.SoftmaxAttention(out, q, k, v, scale, true)
					case "gemm-bf16":
						be.flashAttention = false
						return be.SoftmaxAttention(out, q, k, v, scale, true)
					case "gemm-f32":
						be.flashAttention = false
						return be.SoftmaxAttention(out, q32, k32, v32, scale, true)
					default: // cc
						return be.do("attention", func() error {
							o := be.ops("softmaxattention")
							s := be.attnOperands(o, out, q32, k32, v32)
							if o.err != nil {
								return o.err
							}
							f, err := be.kernel("core", "k_softmax_attention")
							if err != nil {
								return err
							}
							return be.attention(o.op, f, s, s.l, s.l, 0, scale, true)
						})
					}
				}
				ms := measure(b, be, 0, op)
				b.ReportMetric(flops/(ms*1e-3)/1e12, "TFLOP/s")
				got := download(b, be, out)
				if path == "gemm-f32" {
					ref = got
				} else if ref != nil {
					b.ReportMetric(conformance.RelErr(got, ref), "relerr-vs-f32")
				}
				if path == "flash" {
					lse, err := be.Alloc(kernels.F32, 1, h, l)
					if err != nil {
						b.Fatal(err)
					}
					defer be.Free(lse)
					tm := newTimer(b, be)
					lseMS, err := tm.ms(func() error {
						return be.do("flash lse", func() error {
							o := be.ops("softmaxattention")
							s := be.attnOperands(o, out, q, k, v)
							if o.err != nil {
								return o.err
							}
							return be.flashForward(o.op, s, scale, true, devPtr(lse.(*Tensor).ptr), true)
						})
					})
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(lseMS, "flash-lse-ms")
				}
			})
		}
	}
}

// BenchmarkFlashAttentionBackward: SoftmaxAttentionBackward, causal, at
// l = 1428 and 4096: flash (bf16, flash_attention.cu, the log-sum-exp
// pass included), blocked-bf16 and blocked-f32 (the cuBLAS paths of
// train_dense_attention.go). TFLOP/s counts 10·p·scores a head (the five
// products of the usual count; the flash backward recomputes the scores
// in both passes and runs a log-sum-exp pass, so it does more); relerr-
// vs-f32 is the largest relative difference of dq, dk, dv from
// blocked-f32 on the same (bf16-valued) inputs.
func BenchmarkFlashAttentionBackward(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(89, 90))
	h, p := 32, *benchFlashP
	ls := []int{1428, 4096}
	if *benchSmall {
		h, ls = 2, []int{200}
	}
	if !flashHead(p) {
		b.Fatalf("-cuda.flashp=%d: not a head size of the flash kernels", p)
	}
	saved := be.flashAttention
	defer func() { be.flashAttention = saved }()
	scale := float32(1 / math.Sqrt(float64(p)))
	for _, l := range ls {
		q, q32 := benchPair(b, be, rng, 1, l, h, p)
		k, k32 := benchPair(b, be, rng, 1, l, h, p)
		v, v32 := benchPair(b, be, rng, 1, l, h, p)
		out := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		be.flashAttention = false
		if err := be.SoftmaxAttention(out, q32, k32, v32, scale, true); err != nil {
			b.Fatal(err)
		}
		dout := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		grads := make([]kernels.Tensor, 3)
		for i := range grads {
			grads[i] = randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		}
		var ref [3][]float64
		for _, path := range []string{"blocked-f32", "blocked-bf16", "flash"} {
			b.Run(fmt.Sprintf("l=%d/p=%d/%s", l, p, path), func(b *testing.B) {
				qq, kk, vv := q, k, v
				if path == "blocked-f32" {
					qq, kk, vv = q32, k32, v32
				}
				ms := measure(b, be, 0, func() error {
					be.flashAttention = path == "flash"
					return be.SoftmaxAttentionBackward(grads[0], grads[1], grads[2], dout, qq, kk, vv, out, scale, true)
				})
				b.ReportMetric(10*float64(h*p)*attnScores(l, true)/(ms*1e-3)/1e12, "TFLOP/s")
				var worst float64
				for i, g := range grads {
					got := download(b, be, g)
					if path == "blocked-f32" {
						ref[i] = got
						continue
					}
					worst = max(worst, conformance.RelErr(got, ref[i]))
				}
				if path != "blocked-f32" && ref[0] != nil {
					b.ReportMetric(worst, "relerr-vs-f32")
				}
			})
		}
	}
}

// benchPair uploads the same uniform values in [-1, 1) as BF16 and as
// their exact F32 copy.
func benchPair(b *testing.B, be *Backend, rng *rand.Rand, shape ...int) (bf, f32 kernels.Tensor) {
	bf = randomTensor(b, be, rng, kernels.BF16, -1, 1, shape...)
	f32, err := be.Alloc(kernels.F32, shape...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Free(f32) })
	if err := be.Convert(f32, bf); err != nil {
		b.Fatal(err)
	}
	return bf, f32
}
