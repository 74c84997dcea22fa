package cpu

import (
	"math"

	"github.com/matsurgery/matsurgery/kernels"
)

// The skinny MatMul path: a[m,k]·bᵀ with b a [n,k] weight (F32 or BF16)
// and few rows m, as in decoding one token at a time. The packed gemm
// repacks all of b on every call, which costs more than the product
// itself when m is small; this path reads each weight row once, in place,
// and takes dot products with the rows of a (kept in cache).
//
// Each output element is one dot product computed by a fixed sequence of
// operations that depends only on k and on the kernel set in use (never on
// m, on the worker count or on where a task starts), so results are
// bit-identical for any number of workers.

// skinnyMaxRows is the largest m that MatMul sends down the skinny path
// (transB only); 0 disables the path (benchmarks compare with it off).
// It is skinnyMaxRowsAsm with assembly kernels, skinnyMaxRowsGo without.
var skinnyMaxRows = skinnyMaxRowsGo

// BenchmarkMatMulSkinny on a 2-core AVX-512 Xeon (shared with other
// work), packed gemm time over skinny time, F32 weights 2560→2560,
// 2560→10240 and 10240→2560: 25–30× at m = 1, 6–13× at m = 8, 4–5× at
// m = 32, 1.2–3× at m = 64; from m = 96 the order depends on the shape
// (0.85–2.2×) and from m = 192 the packed gemm mostly wins (0.8–1.1×).
// The portable kernels against gonum's sgemm (its SSE dot products, or
// pure Go with -tags noasm), 2560→2560: ahead at m = 1 and 2 (F32 about
// 1.1–1.4×, BF16 about 2× as gonum needs the weights widened), behind
// or even from m = 4.
const (
	skinnyMaxRowsAsm = 64
	skinnyMaxRowsGo  = 2
)

// Task sizing of the skinny path: about skinnyTasksPerWorker tasks per
// worker (uneven cores balance through the shared task counter), each of
// at least skinnyMinTaskBytes of weights so that small products stay on
// few goroutines. With more than two rows of a, a task takes its weight
// rows in panels of about skinnyPanelBytes, which stay in cache while
// every pair of rows of a passes over them.
const (
	skinnyTasksPerWorker = 4
	skinnyMinTaskBytes   = 64 << 10
	skinnyPanelBytes     = 16 << 10
)

// skinnyF32Func computes out_i[r] = Σ_{p<k} a_i[p]·w[r·k+p] for the
// rows = len(out0) weight rows held in w and the na (1 or 2) activation
// rows a0, a1 of length k; out1 (and a1) are not touched when na is 1.
// Every product is computed the same way whatever its row, the number of
// rows and na (see skinny_amd64.s).
type skinnyF32Func func(w []float32, k int, a0, a1 []float32, na int, out0, out1 []float32)

// skinnyBF16Func is skinnyF32Func for weight rows of bf16 bits.
type skinnyBF16Func func(w []uint16, k int, a0, a1 []float32, na int, out0, out1 []float32)

// The skinny kernels in use: assembly where the CPU has it
// (skinny_amd64.go), portable Go otherwise.
var (
	skinnyF32  skinnyF32Func  = skinnyF32Go
	skinnyBF16 skinnyBF16Func = skinnyBF16Go
	skinnyName                = "go"
)

// matmulSkinny computes out[m,n] = a[m,k]·bᵀ for a weight b [n,k] of
// either dtype: tasks of consecutive weight rows, each read once from
// memory; rows of a two at a time.
func (be *Backend) matmulSkinny(m, n, k int, a []float32, b *Tensor, out []float32) {
	rowBytes := k * b.dtype.Size()
	per := (n + be.workers*skinnyTasksPerWorker - 1) / (be.workers * skinnyTasksPerWorker)
	per = roundUp(max(per, skinnyMinTaskBytes/rowBytes, 1), 4)
	tasks := (n + per - 1) / per
	panel := per
	if m > 2 {
		panel = roundUp(max(skinnyPanelBytes/rowBytes, 1), 4)
	}
	f32, bf16 := skinnyF32, skinnyBF16
	be.parallelTasks(tasks, func(_, t int) {
		for j0, j1 := t*per, min(n, (t+1)*per); j0 < j1; j0 += panel {
			je := min(j1, j0+panel)
			for i := 0; i < m; i += 2 {
				na := min(2, m-i)
				i1 := i + na - 1
				a0, a1 := a[i*k:(i+1)*k], a[i1*k:(i1+1)*k]
				o0, o1 := out[i*n+j0:i*n+je], out[i1*n+j0:i1*n+je]
				if b.dtype == kernels.BF16 {
					bf16(b.bf16[j0*k:je*k], k, a0, a1, na, o0, o1)
				} else {
					f32(b.f32[j0*k:je*k], k, a0, a1, na, o0, o1)
				}
			}
		}
	})
}

// skinnyF32Go is the portable skinny kernel: each weight row against the
// activation rows at once, four partial sums per product.
func skinnyF32Go(w []float32, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	if na == 1 {
		a1 = a0
	}
	for r := range out0 {
		s, t := dot2F32(a0, a1, w[r*k:(r+1)*k])
		out0[r] = s
		if na == 2 {
			out1[r] = t
		}
	}
}

// skinnyBF16Go is skinnyF32Go for bf16 weight rows, widened on the fly.
func skinnyBF16Go(w []uint16, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	if na == 1 {
		a1 = a0
	}
	for r := range out0 {
		s, t := dot2BF16(a0, a1, w[r*k:(r+1)*k])
		out0[r] = s
		if na == 2 {
			out1[r] = t
		}
	}
}

// dot2F32 returns a0·w and a1·w, each as four interleaved partial sums
// combined pairwise, then the tail of fewer than four terms in order.
func dot2F32(a0, a1, w []float32) (float32, float32) {
	k := len(w)
	a0, a1 = a0[:k], a1[:k]
	var s0, s1, s2, s3, t0, t1, t2, t3 float32
	p := 0
	for ; p+4 <= k; p += 4 {
		w0, w1, w2, w3 := w[p], w[p+1], w[p+2], w[p+3]
		s0 += a0[p] * w0
		s1 += a0[p+1] * w1
		s2 += a0[p+2] * w2
		s3 += a0[p+3] * w3
		t0 += a1[p] * w0
		t1 += a1[p+1] * w1
		t2 += a1[p+2] * w2
		t3 += a1[p+3] * w3
	}
	s, t := (s0+s1)+(s2+s3), (t0+t1)+(t2+t3)
	for ; p < k; p++ {
		s += a0[p] * w[p]
		t += a1[p] * w[p]
	}
	return s, t
}

// dot2BF16 is dot2F32 for a bf16 weight row.
func dot2BF16(a0, a1 []float32, w []uint16) (float32, float32) {
	k := len(w)
	a0, a1 = a0[:k], a1[:k]
	var s0, s1, s2, s3, t0, t1, t2, t3 float32
	p := 0
	for ; p+4 <= k; p += 4 {
		w0, w1, w2, w3 := bf16Float(w[p]), bf16Float(w[p+1]), bf16Float(w[p+2]), bf16Float(w[p+3])
		s0 += a0[p] * w0
		s1 += a0[p+1] * w1
		s2 += a0[p+2] * w2
		s3 += a0[p+3] * w3
		t0 += a1[p] * w0
		t1 += a1[p+1] * w1
		t2 += a1[p+2] * w2
		t3 += a1[p+3] * w3
	}
	s, t := (s0+s1)+(s2+s3), (t0+t1)+(t2+t3)
	for ; p < k; p++ {
		wp := bf16Float(w[p])
		s += a0[p] * wp
		t += a1[p] * wp
	}
	return s, t
}

// bf16Float widens bf16 bits to float32 (exact).
func bf16Float(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }
