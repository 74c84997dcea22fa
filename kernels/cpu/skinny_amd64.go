package cpu

import "golang.org/x/sys/cpu"

// The assembly skinny kernels of skinny_amd64.s: four weight rows against
// one (skinny1…) or two (skinny2…) activation rows over the first
// blocks·width elements.
//
//go:noescape
func skinny1F32AVX512(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny2F32AVX512(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny1BF16AVX512(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny2BF16AVX512(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny1F32AVX2(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny2F32AVX2(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny1BF16AVX2(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)

//go:noescape
func skinny2BF16AVX2(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)

func init() {
	switch {
	case cpu.X86.HasAVX512F:
		skinnyF32, skinnyBF16, skinnyName = skinnyF32AVX512, skinnyBF16AVX512, "avx512"
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		skinnyF32, skinnyBF16, skinnyName = skinnyF32AVX2, skinnyBF16AVX2, "avx2+fma"
	}
}

type skinnyAsmF32 func(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)
type skinnyAsmBF16 func(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)

// skinnyF32Asm runs a pair of assembly kernels of vector width width over
// the multiple-of-width part of the rows and adds the rest in order.
func skinnyF32Asm(width int, one, two skinnyAsmF32, w *[4][]float32, a *[2][]float32, na int, out *[8]float32) {
	k := len(a[0])
	w0, w1, w2, w3 := w[0][:k], w[1][:k], w[2][:k], w[3][:k]
	a0, a1 := a[0], a[1][:k]
	if k < width {
		clear(out[:])
	} else {
		blocks := k / width
		if na == 2 {
			two(blocks, &w0[0], &w1[0], &w2[0], &w3[0], &a0[0], &a1[0], out)
		} else {
			one(blocks, &w0[0], &w1[0], &w2[0], &w3[0], &a0[0], &a0[0], out)
		}
	}
	if p0 := k / width * width; p0 < k {
		for i := range na {
			ai := a[i][:k]
			for r, wr := range [4][]float32{w0, w1, w2, w3} {
				s := out[i*4+r]
				for p := p0; p < k; p++ {
					s += ai[p] * wr[p]
				}
				out[i*4+r] = s
			}
		}
	}
}

// skinnyBF16Asm is skinnyF32Asm for bf16 weight rows.
func skinnyBF16Asm(width int, one, two skinnyAsmBF16, w *[4][]uint16, a *[2][]float32, na int, out *[8]float32) {
	k := len(a[0])
	w0, w1, w2, w3 := w[0][:k], w[1][:k], w[2][:k], w[3][:k]
	a0, a1 := a[0], a[1][:k]
	if k < width {
		clear(out[:])
	} else {
		blocks := k / width
		if na == 2 {
			two(blocks, &w0[0], &w1[0], &w2[0], &w3[0], &a0[0], &a1[0], out)
		} else {
			one(blocks, &w0[0], &w1[0], &w2[0], &w3[0], &a0[0], &a0[0], out)
		}
	}
	if p0 := k / width * width; p0 < k {
		for i := range na {
			ai := a[i][:k]
			for r, wr := range [4][]uint16{w0, w1, w2, w3} {
				s := out[i*4+r]
				for p := p0; p < k; p++ {
					s += ai[p] * bf16Float(wr[p])
				}
				out[i*4+r] = s
			}
		}
	}
}

func skinnyF32AVX512(w *[4][]float32, a *[2][]float32, na int, out *[8]float32) {
	skinnyF32Asm(16, skinny1F32AVX512, skinny2F32AVX512, w, a, na, out)
}

func skinnyBF16AVX512(w *[4][]uint16, a *[2][]float32, na int, out *[8]float32) {
	skinnyBF16Asm(16, skinny1BF16AVX512, skinny2BF16AVX512, w, a, na, out)
}

func skinnyF32AVX2(w *[4][]float32, a *[2][]float32, na int, out *[8]float32) {
	skinnyF32Asm(8, skinny1F32AVX2, skinny2F32AVX2, w, a, na, out)
}

func skinnyBF16AVX2(w *[4][]uint16, a *[2][]float32, na int, out *[8]float32) {
	skinnyBF16Asm(8, skinny1BF16AVX2, skinny2BF16AVX2, w, a, na, out)
}
