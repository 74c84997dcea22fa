package synth

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
)

// Std is the standard deviation of every random value (the usual
// initializer_range of the families).
const Std = 0.02

// ChunkElems is the number of elements drawn from one random stream. A
// tensor's element i comes from the stream of chunk i/ChunkElems, so chunks
// can be drawn in parallel and the values never depend on the number of
// workers.
const ChunkElems = 1 << 20

// Distribution is the law of a tensor's values: Normal(Mean, Std).
type Distribution struct {
	Mean, Std float64
}

// DistributionOf says how a tensor is drawn: norm weights 1+N(0, 0.02), every
// other tensor (matrices, embeddings, biases, norm biases) N(0, 0.02), so
// that forward passes stay finite and well scaled.
func DistributionOf(name string, shape []int64) Distribution {
	if isNormWeight(name, shape) {
		return Distribution{Mean: 1, Std: Std}
	}
	return Distribution{Mean: 0, Std: Std}
}

// isNormWeight reports whether a tensor is the scale of a normalisation
// layer: a vector named "<…norm…>.weight" (input_layernorm, layer_norm1,
// post_attention_layernorm, model.norm, final_layernorm, post_layernorm,
// head.layernorm, mamba.norm).
func isNormWeight(name string, shape []int64) bool {
	if len(shape) != 1 {
		return false
	}
	stem, ok := strings.CutSuffix(name, ".weight")
	if !ok {
		return false
	}
	last := stem[strings.LastIndexByte(stem, '.')+1:]
	return strings.Contains(last, "norm")
}

// Stream is the random stream of one chunk of one tensor: PCG seeded by the
// seed and an FNV-1a hash of (tensor name, chunk index).
func Stream(seed uint64, name string, chunk int64) *rand.PCG {
	h := fnv.New64a()
	h.Write([]byte(name))
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(chunk))
	h.Write(b[:])
	return rand.NewPCG(seed, h.Sum64())
}

// Fill draws elements [chunk·ChunkElems, chunk·ChunkElems+len(dst)) of a
// tensor into dst (len(dst) ≤ ChunkElems).
func Fill(dst []float32, seed uint64, name string, chunk int64, d Distribution) {
	src := Stream(seed, name, chunk)
	mean, std := float32(d.Mean), float32(d.Std)
	i := 0
	// The ziggurat's fast path, written out for the two draws of each PCG
	// output (a call per draw costs more than the draw). The explicit
	// float32 conversions forbid fused multiply-adds, so the values are the
	// same on every architecture.
	for ; i+1 < len(dst); i += 2 {
		u := src.Uint64()
		w0, w1 := uint32(u), uint32(u>>32)
		j0, j1 := int32(w0)>>8, int32(w1)>>8
		m0, m1 := j0>>31, j1>>31
		var x0, x1 float32
		if k := w0 & (zigLayers - 1); uint32((j0^m0)-m0) < zigK[k] {
			x0 = float32(j0) * zigW[k]
		} else {
			x0 = float32(normalSlow(w0, src))
		}
		if k := w1 & (zigLayers - 1); uint32((j1^m1)-m1) < zigK[k] {
			x1 = float32(j1) * zigW[k]
		} else {
			x1 = float32(normalSlow(w1, src))
		}
		dst[i] = mean + float32(std*x0)
		dst[i+1] = mean + float32(std*x1)
	}
	if i < len(dst) {
		dst[i] = mean + float32(std*float32(normalSlow(uint32(src.Uint64()), src)))
	}
}

// The standard normal sampler is a 128-layer ziggurat (Marsaglia and Tsang,
// 2000) spending 32 random bits per draw in the common case, so one PCG
// output gives two draws: bits 0–6 pick the layer and bits 8–31 are a signed
// 24-bit abscissa (bit 7 is unused), disjoint so that the layer and the value
// are independent, and signed so that no branch depends on the sign. It is
// 2–3× faster than math/rand's NormFloat64 here, which matters because the
// generator is bound by it. 24 bits of abscissa exceed what BF16, F16 and
// F32 storage keep.
const (
	zigLayers = 128
	zigR      = 3.442619855899      // where the tail starts
	zigV      = 9.91256303526217e-3 // area of each layer
	zigScale  = 1 << 23             // |abscissa| < 2^23
)

var (
	zigX [zigLayers + 1]float64 // layer edges: zigX[0] = V/f(R) (the base strip and its tail), zigX[1] = R, …, zigX[128] = 0
	zigF [zigLayers + 1]float64 // f(zigX[i]) = exp(−x²/2)
	zigW [zigLayers]float32     // zigX[i] / 2^23: the abscissa step of layer i
	zigK [zigLayers]uint32      // ⌊2^23 · zigX[i+1]/zigX[i]⌋: below it a point of layer i lies under the curve
)

func init() {
	f := func(x float64) float64 { return math.Exp(-x * x / 2) }
	zigX[0] = zigV / f(zigR)
	zigX[1] = zigR
	for i := 1; i < zigLayers-1; i++ {
		zigX[i+1] = math.Sqrt(-2 * math.Log(zigV/zigX[i]+f(zigX[i])))
	}
	zigX[zigLayers] = 0
	for i := range zigX {
		zigF[i] = f(zigX[i])
	}
	for i := 0; i < zigLayers; i++ {
		zigW[i] = float32(zigX[i] / zigScale)
		zigK[i] = uint32(math.Floor(zigScale * zigX[i+1] / zigX[i]))
	}
}

// unit is uniform in (0, 1), 53 bits.
func unit(src *rand.PCG) float64 { return (float64(src.Uint64()>>11) + 0.5) / (1 << 53) }

// normalSlow turns 32 random bits into a standard normal draw, taking more
// bits from src when the point falls outside its layer's rectangle (3% of
// draws): into the tail of the base strip, or the wedge of a layer, where a
// rejected point starts over with fresh bits.
func normalSlow(w uint32, src *rand.PCG) float64 {
	for {
		i := w & (zigLayers - 1)
		j := int32(w) >> 8
		m := j >> 31
		a := uint32((j ^ m) - m)
		x := float64(j) * zigX[i] / zigScale
		switch {
		case a < zigK[i]:
			return x
		case i == 0: // beyond R: Marsaglia's exponential method for the tail
			for {
				t := -math.Log(unit(src)) / zigR
				e := -math.Log(unit(src))
				if 2*e >= t*t {
					if j < 0 {
						return -(zigR + t)
					}
					return zigR + t
				}
			}
		default: // the wedge between the rectangle and the curve
			if zigF[i]+unit(src)*(zigF[i+1]-zigF[i]) < math.Exp(-x*x/2) {
				return x
			}
		}
		w = uint32(src.Uint64())
	}
}
