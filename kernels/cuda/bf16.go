package cuda

import "math"

// roundBF16 rounds a float32 to bf16 bits, nearest even; NaN stays a quiet
// NaN (the same rule as the kernels' f32_to_bf16 and the CPU backend).
func roundBF16(f float32) uint16 {
	bits := math.Float32bits(f)
	if bits&0x7FFFFFFF > 0x7F800000 {
		return uint16(bits>>16) | 0x0040
	}
	return uint16((bits + 0x7FFF + (bits>>16)&1) >> 16)
}

func roundBF16Slice(src []float32) []uint16 {
	out := make([]uint16, len(src))
	for i, f := range src {
		out[i] = roundBF16(f)
	}
	return out
}

// widenBF16 converts bf16 bits to float32 (exact).
func widenBF16(dst []float32, src []uint16) {
	for i, b := range src[:len(dst)] {
		dst[i] = math.Float32frombits(uint32(b) << 16)
	}
}
