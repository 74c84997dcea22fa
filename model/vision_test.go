package model

import (
	"math/rand/v2"
	"testing"
)

// im2col followed by a product with the weight [out, C·p·p] is the
// stride-p convolution without padding, also when the image size is not a
// multiple of the patch (SigLIP: 384 px, patch 14 → 27×27, 6 px unused).
func TestIm2colIsStridedConv(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct{ channels, size, patch, out int }{{3, 28, 7, 5}, {3, 30, 7, 4}, {2, 13, 4, 3}, {1, 5, 5, 2}} {
		px := make([]float32, c.channels*c.size*c.size)
		for i := range px {
			px[i] = float32(rng.NormFloat64())
		}
		w := make([]float64, c.out*c.channels*c.patch*c.patch)
		for i := range w {
			w[i] = rng.NormFloat64()
		}
		grid, cpp := c.size/c.patch, c.channels*c.patch*c.patch
		cols := im2col(px, c.channels, c.size, c.patch)
		if len(cols) != grid*grid*cpp {
			t.Fatalf("%+v: %d values, want %d", c, len(cols), grid*grid*cpp)
		}
		for py := range grid {
			for pxi := range grid {
				r := py*grid + pxi
				for o := range c.out {
					var conv, prod float64
					for ch := range c.channels {
						for i := range c.patch {
							for j := range c.patch {
								wv := w[((o*c.channels+ch)*c.patch+i)*c.patch+j]
								conv += wv * float64(px[(ch*c.size+py*c.patch+i)*c.size+pxi*c.patch+j])
							}
						}
					}
					for k := range cpp {
						prod += w[o*cpp+k] * float64(cols[r*cpp+k])
					}
					if d := conv - prod; d > 1e-9 || d < -1e-9 {
						t.Fatalf("%+v: patch (%d,%d) channel %d: conv %g, im2col product %g", c, py, pxi, o, conv, prod)
					}
				}
			}
		}
	}
}
