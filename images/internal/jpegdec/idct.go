package jpegdec

// The inverse DCT is libjpeg's "accurate integer" method (JDCT_ISLOW, the default of libjpeg and
// libjpeg-turbo, whose SIMD versions give identical results): the Loeffler–Ligtenberg–Moschytz
// factorisation with 13-bit fixed-point constants, a column pass keeping 2 extra bits of precision, a
// row pass, and a final clamp through libjpeg's range-limit table (10-bit wrap, then clamp to 0..255).

const (
	constBits = 13
	pass1Bits = 2
)

// Fixed-point constants: round(c · 2^13).
const (
	fix0_298631336 = 2446
	fix0_390180644 = 3196
	fix0_541196100 = 4433
	fix0_765366865 = 6270
	fix0_899976223 = 7373
	fix1_175875602 = 9633
	fix1_501321110 = 12299
	fix1_847759065 = 15137
	fix1_961570560 = 16069
	fix2_053119869 = 16819
	fix2_562915447 = 20995
	fix3_072711026 = 25172
)

// descale is libjpeg's DESCALE: a rounding arithmetic right shift.
func descale(x int64, n uint) int64 { return (x + 1<<(n-1)) >> n }

// rangeLimit maps the row pass output (centred on 0) to a sample as libjpeg's IDCT range-limit table
// does: the value is wrapped to 10 bits (x & 1023, read as signed), shifted by 128 and clamped.
func rangeLimit(x int64) uint8 {
	v := x & 1023
	if v >= 512 {
		v -= 1024
	}
	v += 128
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// idctBlock transforms one block of quantised coefficients (natural order) with its quantisation
// table (natural order) into 8×8 samples written to dst with the given stride.
func idctBlock(coef *[64]int16, quant *[64]uint16, dst []uint8, stride int) {
	var ws [64]int32

	// Pass 1: columns, from the dequantised input into the work array.
	for c := 0; c < 8; c++ {
		if coef[8+c] == 0 && coef[16+c] == 0 && coef[24+c] == 0 && coef[32+c] == 0 &&
			coef[40+c] == 0 && coef[48+c] == 0 && coef[56+c] == 0 {
			dc := int32(int64(coef[c])*int64(quant[c])) << pass1Bits
			for r := 0; r < 8; r++ {
				ws[8*r+c] = dc
			}
			continue
		}
		deq := func(r int) int64 { return int64(coef[8*r+c]) * int64(quant[8*r+c]) }

		// Even part.
		z2, z3 := deq(2), deq(6)
		z1 := (z2 + z3) * fix0_541196100
		tmp2 := z1 + z3*-fix1_847759065
		tmp3 := z1 + z2*fix0_765366865
		z2, z3 = deq(0), deq(4)
		tmp0 := (z2 + z3) << constBits
		tmp1 := (z2 - z3) << constBits
		tmp10, tmp13 := tmp0+tmp3, tmp0-tmp3
		tmp11, tmp12 := tmp1+tmp2, tmp1-tmp2

		// Odd part.
		tmp0, tmp1, tmp2, tmp3 = deq(7), deq(5), deq(3), deq(1)
		z1, z2 = tmp0+tmp3, tmp1+tmp2
		z3, z4 := tmp0+tmp2, tmp1+tmp3
		z5 := (z3 + z4) * fix1_175875602
		tmp0 *= fix0_298631336
		tmp1 *= fix2_053119869
		tmp2 *= fix3_072711026
		tmp3 *= fix1_501321110
		z1 *= -fix0_899976223
		z2 *= -fix2_562915447
		z3 *= -fix1_961570560
		z4 *= -fix0_390180644
		z3 += z5
		z4 += z5
		tmp0 += z1 + z3
		tmp1 += z2 + z4
		tmp2 += z2 + z3
		tmp3 += z1 + z4

		const s = constBits - pass1Bits
		ws[8*0+c] = int32(descale(tmp10+tmp3, s))
		ws[8*7+c] = int32(descale(tmp10-tmp3, s))
		ws[8*1+c] = int32(descale(tmp11+tmp2, s))
		ws[8*6+c] = int32(descale(tmp11-tmp2, s))
		ws[8*2+c] = int32(descale(tmp12+tmp1, s))
		ws[8*5+c] = int32(descale(tmp12-tmp1, s))
		ws[8*3+c] = int32(descale(tmp13+tmp0, s))
		ws[8*4+c] = int32(descale(tmp13-tmp0, s))
	}

	// Pass 2: rows, from the work array to samples.
	for r := 0; r < 8; r++ {
		w := ws[8*r : 8*r+8 : 8*r+8]
		out := dst[r*stride : r*stride+8 : r*stride+8]
		if w[1] == 0 && w[2] == 0 && w[3] == 0 && w[4] == 0 && w[5] == 0 && w[6] == 0 && w[7] == 0 {
			v := rangeLimit(descale(int64(w[0]), pass1Bits+3))
			for i := range out {
				out[i] = v
			}
			continue
		}

		// Even part.
		z2, z3 := int64(w[2]), int64(w[6])
		z1 := (z2 + z3) * fix0_541196100
		tmp2 := z1 + z3*-fix1_847759065
		tmp3 := z1 + z2*fix0_765366865
		tmp0 := (int64(w[0]) + int64(w[4])) << constBits
		tmp1 := (int64(w[0]) - int64(w[4])) << constBits
		tmp10, tmp13 := tmp0+tmp3, tmp0-tmp3
		tmp11, tmp12 := tmp1+tmp2, tmp1-tmp2

		// Odd part.
		tmp0, tmp1, tmp2, tmp3 = int64(w[7]), int64(w[5]), int64(w[3]), int64(w[1])
		z1, z2 = tmp0+tmp3, tmp1+tmp2
		z3, z4 := tmp0+tmp2, tmp1+tmp3
		z5 := (z3 + z4) * fix1_175875602
		tmp0 *= fix0_298631336
		tmp1 *= fix2_053119869
		tmp2 *= fix3_072711026
		tmp3 *= fix1_501321110
		z1 *= -fix0_899976223
		z2 *= -fix2_562915447
		z3 *= -fix1_961570560
		z4 *= -fix0_390180644
		z3 += z5
		z4 += z5
		tmp0 += z1 + z3
		tmp1 += z2 + z4
		tmp2 += z2 + z3
		tmp3 += z1 + z4

		const s = constBits + pass1Bits + 3
		out[0] = rangeLimit(descale(tmp10+tmp3, s))
		out[7] = rangeLimit(descale(tmp10-tmp3, s))
		out[1] = rangeLimit(descale(tmp11+tmp2, s))
		out[6] = rangeLimit(descale(tmp11-tmp2, s))
		out[2] = rangeLimit(descale(tmp12+tmp1, s))
		out[5] = rangeLimit(descale(tmp12-tmp1, s))
		out[3] = rangeLimit(descale(tmp13+tmp0, s))
		out[4] = rangeLimit(descale(tmp13-tmp0, s))
	}
}
