package formats

import "math"

// Scalar conversions between float32 and the narrow float formats.
//
// Rounding rules (float32 → narrow): round to nearest, ties to even, as PyTorch does;
// values too large for the format become ±Inf; results below the smallest normal are
// rounded correctly into the format's subnormals (or to ±0). A NaN stays a NaN and comes
// out quiet: it keeps its sign and the top payload bits, and the quiet bit is set.
// Decoding (narrow → float32) is exact; an F16 signalling NaN comes back quiet,
// BF16 is a plain 16-bit shift (bit-exact, as PyTorch).

// BF16ToF32 widens a bfloat16 bit pattern to float32 (exact).
func BF16ToF32(u uint16) float32 { return math.Float32frombits(uint32(u) << 16) }

// F32ToBF16 rounds f to the nearest bfloat16 (ties to even) and returns its bit pattern.
func F32ToBF16(f float32) uint16 { return f32BitsToBF16(math.Float32bits(f)) }

func f32BitsToBF16(b uint32) uint16 {
	if b&0x7fffffff > 0x7f800000 { // NaN: keep sign and top payload bits, set the quiet bit
		return uint16(b>>16) | 0x40
	}
	// Adding 0x7fff plus the lowest kept bit rounds to nearest even; a carry out of the
	// mantissa correctly bumps the exponent, up to and including Inf.
	return uint16((b + 0x7fff + ((b >> 16) & 1)) >> 16)
}

// F16ToF32 widens an IEEE binary16 bit pattern to float32 (exact; NaNs come back quiet).
func F16ToF32(h uint16) float32 { return math.Float32frombits(f16BitsToF32Bits(h)) }

func f16BitsToF32Bits(h uint16) uint32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0x1f:
		if mant == 0 {
			return sign | 0x7f800000
		}
		return sign | 0x7fc00000 | mant<<13
	case 0:
		if mant == 0 {
			return sign
		}
		// Subnormal: mant·2^-24. Normalise so that the leading 1 lands on bit 10.
		e := uint32(113) // biased float32 exponent of 2^-14
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return sign | e<<23 | (mant&0x3ff)<<13
	}
	return sign | (exp+112)<<23 | mant<<13
}

// F32ToF16 rounds f to the nearest IEEE binary16 (ties to even) and returns its bit pattern.
func F32ToF16(f float32) uint16 { return f32BitsToF16(math.Float32bits(f)) }

func f32BitsToF16(x uint32) uint16 {
	sign := uint16(x>>16) & 0x8000
	x &= 0x7fffffff
	switch {
	case x >= 0x477ff000: // ≥ 65520 rounds to Inf; also Inf and NaN
		if x > 0x7f800000 {
			return sign | 0x7e00 | uint16(x>>13)&0x3ff
		}
		return sign | 0x7c00
	case x >= 0x38800000: // ≥ 2^-14: normal binary16
		x -= 112 << 23 // rebias the exponent from 127 to 15
		x += 0xfff + ((x >> 13) & 1)
		return sign | uint16(x>>13)
	case x <= 0x33000000: // ≤ 2^-25: rounds to zero (2^-25 itself is a tie, to even = 0)
		return sign
	}
	// Subnormal binary16: the result is round(m · 2^(e-126)) in units of 2^-24,
	// with shift = 126 - e in [14, 24].
	e := x >> 23
	m := x&0x7fffff | 0x800000
	shift := 126 - e
	r := m >> shift
	rem := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || (rem == half && r&1 == 1) {
		r++ // may become 0x400, the smallest normal: still the right encoding
	}
	return sign | uint16(r)
}

// F8E4M3ToF32 decodes an OCP FP8 E4M3 ("fn") byte (exact).
func F8E4M3ToF32(b uint8) float32 { return f8e4m3Table[b] }

// F8E5M2ToF32 decodes an OCP FP8 E5M2 byte (exact).
func F8E5M2ToF32(b uint8) float32 { return f8e5m2Table[b] }

// F8E8M0ToF32 decodes an OCP MX E8M0 scale byte: 2^(b-127), 0xFF is NaN (exact).
func F8E8M0ToF32(b uint8) float32 { return f8e8m0Table[b] }

var (
	f8e4m3Table = buildF8Table(func(b uint8) float64 {
		e, m := int(b>>3)&0xf, float64(b&7)
		switch {
		case e == 15 && m == 7:
			return math.NaN()
		case e == 0:
			return math.Ldexp(m, -9)
		}
		return math.Ldexp(8+m, e-10)
	})
	f8e5m2Table = buildF8Table(func(b uint8) float64 {
		e, m := int(b>>2)&0x1f, float64(b&3)
		switch {
		case e == 31 && m == 0:
			return math.Inf(1)
		case e == 31:
			return math.NaN()
		case e == 0:
			return math.Ldexp(m, -16)
		}
		return math.Ldexp(4+m, e-17)
	})
	f8e8m0Table = func() (t [256]float32) {
		for i := range 255 {
			t[i] = float32(math.Ldexp(1, i-127))
		}
		t[255] = float32(math.NaN())
		return t
	}()
)

// buildF8Table tabulates a signed 8-bit format from the magnitude of its low 7 bits.
func buildF8Table(magnitude func(b uint8) float64) (t [256]float32) {
	for i := range 256 {
		b := uint8(i)
		v := float32(magnitude(b & 0x7f))
		bits := math.Float32bits(v)
		if b&0x80 != 0 {
			bits |= 0x80000000
		}
		t[i] = math.Float32frombits(bits)
	}
	return t
}
