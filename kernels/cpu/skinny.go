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
// BenchmarkMatMulSkinny on a 2-core AVX-512 Xeon (shared), packed gemm time
// over skinny time: 27× at m = 1, 13× at m = 8, 3× at m = 64 and 1.4× at
// m = 128 for a 2560→2560 weight, but only 1.2× at m = 96 and 0.85× at
// m = 128 for 10240→2560 (the rows of a no longer fit in L2), and 0.7–0.9×
// from m = 192 on: 64 keeps a margin of 2× on every shape measured.
var skinnyMaxRows = 64

// Task sizing of the skinny path: about skinnyTasksPerWorker tasks per
// worker (uneven cores balance through the shared task counter), each of
// at least skinnyMinTaskBytes of weights so that small products stay on
// few goroutines.
const (
	skinnyTasksPerWorker = 4
	skinnyMinTaskBytes   = 64 << 10
)

// skinnyF32Func computes out[i*4+r] = Σ_{p<k} a[i][p]·w[r][p] for r < 4 and
// i < na (1 or 2), k = len(w[r]) = len(a[i]); out[4:] is unspecified when
// na is 1. Every output element is computed the same way whatever its
// position (see skinny_amd64.s).
type skinnyF32Func func(w *[4][]float32, a *[2][]float32, na int, out *[8]float32)

// skinnyBF16Func is skinnyF32Func for weight rows of bf16 bits.
type skinnyBF16Func func(w *[4][]uint16, a *[2][]float32, na int, out *[8]float32)

// The skinny kernels in use: assembly where the CPU has it
// (skinny_amd64.go), portable Go otherwise.
var (
	skinnyF32  skinnyF32Func  = skinnyF32Go
	skinnyBF16 skinnyBF16Func = skinnyBF16Go
	skinnyName                = "go"
)

// matmulSkinny computes out[m,n] = a[m,k]·bᵀ for a weight b [n,k] of
// either dtype, in tasks of whole groups of four weight rows; within a
// group the rows of a are taken two at a time while the group's rows are
// in cache.
func (be *Backend) matmulSkinny(m, n, k int, a []float32, b *Tensor, out []float32) {
	rowBytes := k * b.dtype.Size()
	per := (n + be.workers*skinnyTasksPerWorker - 1) / (be.workers * skinnyTasksPerWorker)
	per = roundUp(max(per, skinnyMinTaskBytes/rowBytes, 1), 4)
	tasks := (n + per - 1) / per
	f32, bf16 := skinnyF32, skinnyBF16
	be.parallelTasks(tasks, func(_, t int) {
		j0, j1 := t*per, min(n, (t+1)*per)
		// One allocation: the kernels are called through function values,
		// so their operands escape.
		g := new(struct {
			res [8]float32
			ar  [2][]float32
			wf  [4][]float32
			wb  [4][]uint16
		})
		res, ar, wf, wb := &g.res, &g.ar, &g.wf, &g.wb
		for j := j0; j < j1; j += 4 {
			nr := min(4, j1-j)
			for r := range 4 {
				// Past the last row, repeat it: the kernel's extra
				// results are dropped.
				jr := j + min(r, nr-1)
				if b.dtype == kernels.BF16 {
					wb[r] = b.bf16[jr*k : (jr+1)*k]
				} else {
					wf[r] = b.f32[jr*k : (jr+1)*k]
				}
			}
			for i := 0; i < m; i += 2 {
				na := min(2, m-i)
				ar[0] = a[i*k : (i+1)*k]
				ar[1] = a[(i+na-1)*k : (i+na)*k]
				if b.dtype == kernels.BF16 {
					bf16(wb, ar, na, res)
				} else {
					f32(wf, ar, na, res)
				}
				for ii := range na {
					copy(out[(i+ii)*n+j:(i+ii)*n+j+nr], res[ii*4:ii*4+nr])
				}
			}
		}
	})
}

// skinnyF32Go is the portable skinny kernel: each weight row against the
// activation rows at once, four partial sums per product.
func skinnyF32Go(w *[4][]float32, a *[2][]float32, na int, out *[8]float32) {
	for r := range 4 {
		if na == 2 {
			out[r], out[4+r] = dot2F32(a[0], a[1], w[r])
		} else {
			out[r], _ = dot2F32(a[0], a[0], w[r])
		}
	}
}

// skinnyBF16Go is skinnyF32Go for bf16 weight rows, widened on the fly.
func skinnyBF16Go(w *[4][]uint16, a *[2][]float32, na int, out *[8]float32) {
	for r := range 4 {
		if na == 2 {
			out[r], out[4+r] = dot2BF16(a[0], a[1], w[r])
		} else {
			out[r], _ = dot2BF16(a[0], a[0], w[r])
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
