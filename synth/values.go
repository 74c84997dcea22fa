package synth

import (
	"encoding/binary"
	"hash/fnv"
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
func Stream(seed uint64, name string, chunk int64) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(chunk))
	h.Write(b[:])
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// Fill draws elements [chunk·ChunkElems, chunk·ChunkElems+len(dst)) of a
// tensor into dst (len(dst) ≤ ChunkElems), with math/rand's exact
// (ziggurat) normal sampler.
func Fill(dst []float32, seed uint64, name string, chunk int64, d Distribution) {
	r := Stream(seed, name, chunk)
	for i := range dst {
		dst[i] = float32(d.Mean + d.Std*r.NormFloat64())
	}
}
