package verify

import (
	"testing"

	"github.com/matsurgery/matsurgery/formats"
)

func BenchmarkAllFiniteRawBF16(b *testing.B) {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i*7) & 0x3f
	}
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		if !allFiniteRaw(formats.BF16, buf) {
			b.Fatal("flagged")
		}
	}
}
