package cpu

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// The assembly skinny kernels of skinny_amd64.s: groups of four weight
// rows against one (skinnyRows1…) or two (skinnyRows2…) activation rows
// over the first blocks·width elements.

//go:noescape
func skinnyRows1F32AVX512(blocks, groups int, w *float32, ldw int, a0, out0 *float32)

//go:noescape
func skinnyRows2F32AVX512(blocks, groups int, w *float32, ldw int, a0, a1, out0, out1 *float32)

//go:noescape
func skinnyRows1BF16AVX512(blocks, groups int, w *uint16, ldw int, a0, out0 *float32)

//go:noescape
func skinnyRows2BF16AVX512(blocks, groups int, w *uint16, ldw int, a0, a1, out0, out1 *float32)

//go:noescape
func skinnyRows1F32AVX2(blocks, groups int, w *float32, ldw int, a0, out0 *float32)

//go:noescape
func skinnyRows2F32AVX2(blocks, groups int, w *float32, ldw int, a0, a1, out0, out1 *float32)

//go:noescape
func skinnyRows1BF16AVX2(blocks, groups int, w *uint16, ldw int, a0, out0 *float32)

//go:noescape
func skinnyRows2BF16AVX2(blocks, groups int, w *uint16, ldw int, a0, a1, out0, out1 *float32)

func init() {
	switch {
	case cpu.X86.HasAVX512F:
		skinnyF32, skinnyBF16, skinnyName = skinnyF32AVX512, skinnyBF16AVX512, "avx512"
		skinnyMaxRows = skinnyMaxRowsAsm
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		skinnyF32, skinnyBF16, skinnyName = skinnyF32AVX2, skinnyBF16AVX2, "avx2+fma"
		skinnyMaxRows = skinnyMaxRowsAsm
	}
}

// skinnyAsm holds the two assembly kernels of one instruction set for one
// weight dtype (E: float32, or uint16 for bf16 bits), their vector width
// and the widening of one weight element.
type skinnyAsm[E float32 | uint16] struct {
	width int
	one   func(blocks, groups int, w *E, ldw int, a0, out0 *float32)
	two   func(blocks, groups int, w *E, ldw int, a0, a1, out0, out1 *float32)
	value func(E) float32
}

func f32Value(v float32) float32 { return v }

var (
	skinnyAVX512F32  = skinnyAsm[float32]{16, skinnyRows1F32AVX512, skinnyRows2F32AVX512, f32Value}
	skinnyAVX512BF16 = skinnyAsm[uint16]{16, skinnyRows1BF16AVX512, skinnyRows2BF16AVX512, bf16Float}
	skinnyAVX2F32    = skinnyAsm[float32]{8, skinnyRows1F32AVX2, skinnyRows2F32AVX2, f32Value}
	skinnyAVX2BF16   = skinnyAsm[uint16]{8, skinnyRows1BF16AVX2, skinnyRows2BF16AVX2, bf16Float}
)

// run implements skinnyF32Func / skinnyBF16Func: whole groups of four
// rows in one call, each leftover row as a group of four copies of
// itself (row stride 0), then the elements past the last whole vector
// added in order to every product. (A leftover row's results pass through
// a small heap buffer, the kernels being function values: only when the
// row count is not a multiple of four.)
func (s skinnyAsm[E]) run(w []E, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	rows := len(out0)
	if rows == 0 {
		return
	}
	w = w[:rows*k]
	a0 = a0[:k]
	if na == 2 {
		a1, out1 = a1[:k], out1[:rows]
	}
	blocks := k / s.width
	if blocks == 0 {
		clear(out0)
		if na == 2 {
			clear(out1)
		}
	} else {
		size := int(unsafe.Sizeof(w[0]))
		call := func(r, groups, ldw int, o0, o1 *float32) {
			if na == 2 {
				s.two(blocks, groups, &w[r*k], ldw, &a0[0], &a1[0], o0, o1)
			} else {
				s.one(blocks, groups, &w[r*k], ldw, &a0[0], o0)
			}
		}
		full := rows / 4 * 4
		if full > 0 {
			var o1 *float32
			if na == 2 {
				o1 = &out1[0]
			}
			call(0, full/4, k*size, &out0[0], o1)
		}
		for r := full; r < rows; r++ {
			var tmp [2][4]float32
			call(r, 1, 0, &tmp[0][0], &tmp[1][0])
			out0[r] = tmp[0][0]
			if na == 2 {
				out1[r] = tmp[1][0]
			}
		}
	}
	p0 := blocks * s.width
	if p0 == k {
		return
	}
	outs, as := [2][]float32{out0, out1}, [2][]float32{a0, a1}
	for r := range rows {
		wr := w[r*k : (r+1)*k]
		for i := range na {
			sum := outs[i][r]
			for p := p0; p < k; p++ {
				sum += as[i][p] * s.value(wr[p])
			}
			outs[i][r] = sum
		}
	}
}

func skinnyF32AVX512(w []float32, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	skinnyAVX512F32.run(w, k, a0, a1, na, out0, out1)
}

func skinnyBF16AVX512(w []uint16, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	skinnyAVX512BF16.run(w, k, a0, a1, na, out0, out1)
}

func skinnyF32AVX2(w []float32, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	skinnyAVX2F32.run(w, k, a0, a1, na, out0, out1)
}

func skinnyBF16AVX2(w []uint16, k int, a0, a1 []float32, na int, out0, out1 []float32) {
	skinnyAVX2BF16.run(w, k, a0, a1, na, out0, out1)
}
