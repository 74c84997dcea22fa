package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// BenchmarkDecodeAttention times one decode step's attention (batch 1, one
// query, 32 heads × 80, Phi-2's layer) against caches of 1K to 32K keys,
// F32 and BF16 k/v, with k_softmax_attention ("flash", the split-key path
// switched off) and with the split-key kernels ("split", including the
// partials' allocation and the merge). GB/s counts the K and V rows read
// once. On a GPU machine:
//
//	./cuda.test -test.run '^$' -test.bench DecodeAttention -test.benchtime 20x
func BenchmarkDecodeAttention(b *testing.B) {
	const heads, headdim = 32, 80
	be := testBackend(b)
	rng := rand.New(rand.NewPCG(91, 92))
	scale := float32(1 / math.Sqrt(headdim))
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, keys := range []int{1 << 10, 4 << 10, 16 << 10, 32 << 10} {
			q := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, 1, heads, headdim)
			k := randomTensor(b, be, rng, dt, -1, 1, 1, keys, heads, headdim)
			v := randomTensor(b, be, rng, dt, -1, 1, 1, keys, heads, headdim)
			out := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, 1, heads, headdim)
			bytes := float64(2 * keys * heads * headdim * dt.Size())
			for _, kernel := range []string{"flash", "split"} {
				name := fmt.Sprintf("%s/keys=%d/%s", dt, keys, kernel)
				b.Run(name, func(b *testing.B) {
					saved := decodeSplitMinKeys
					defer func() { decodeSplitMinKeys = saved }()
					if kernel == "flash" {
						decodeSplitMinKeys = math.MaxInt
					} else {
						decodeSplitMinKeys = 1
						splits, chunk := decodeSplits(keys, heads, be.sms)
						b.Logf("%d splits of %d keys on %d multiprocessors", splits, chunk, be.sms)
					}
					measure(b, be, bytes, func() error {
						return be.SoftmaxAttentionCached(out, q, k, v, keys-1, scale)
					})
				})
			}
		}
	}
}
