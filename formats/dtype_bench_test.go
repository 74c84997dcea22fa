package formats

import (
	"math/rand/v2"
	"testing"
)

// Bulk conversion throughput on one core. SetBytes counts the bytes of the 16-bit side,
// so MB/s reads as "MB of bf16/f16 tensor data per second" (the float32 side is twice that).
// Inputs look like weights: N(0, 0.02²).

const benchElements = 1 << 22 // 4 Mi elements: 8 MiB of bf16, 16 MiB of f32 (beyond L2)

func benchWeights(seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	w := make([]float32, benchElements)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.02)
	}
	return w
}

func benchDecode(b *testing.B, dt DType) {
	raw := make([]byte, 2*benchElements)
	if err := EncodeFloat32(dt, benchWeights(1), raw); err != nil {
		b.Fatal(err)
	}
	dst := make([]float32, benchElements)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := DecodeFloat32(dt, raw, dst); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEncode(b *testing.B, dt DType) {
	src := benchWeights(2)
	raw := make([]byte, 2*benchElements)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := EncodeFloat32(dt, src, raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBF16(b *testing.B) { benchDecode(b, BF16) }
func BenchmarkEncodeBF16(b *testing.B) { benchEncode(b, BF16) }
func BenchmarkDecodeF16(b *testing.B)  { benchDecode(b, F16) }
func BenchmarkEncodeF16(b *testing.B)  { benchEncode(b, F16) }
