package distill

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"

	"github.com/matsurgery/matsurgery/kernels"
)

// Residual dropout (the recipe's resid_pdrop): in training, each decoder
// layer multiplies its token mixer's output and its MLP's output by an
// inverted-dropout mask — every element kept with probability 1−P and then
// scaled by 1/(1−P), or zeroed — before adding them to the residual
// stream, as PyTorch's nn.Dropout does in train mode in PhiDecoderLayer
// and MaTVLM's PhiMambaDecoderLayer. The same mask multiplies the
// gradient in backward.
//
// A mask is a pure function of (DropoutKey, layer, branch, row): each row
// of d elements is drawn from its own PCG stream seeded from a hash of
// those, so a resumed run draws the masks of an uninterrupted one without
// saving random state, and the masks do not depend on the number of
// workers.

// DropoutKey names one training sample's dropout masks: Forward applies
// residual dropout (Options.Dropout) when Input.Dropout is set.
type DropoutKey struct {
	Seed   uint64 // the run's seed
	Step   int    // the optimiser update, from 0
	Sample int    // the sample's index within the update, from 0
}

// The branches a layer's masks are drawn for: its token mixer and MLP
// outputs on the decoder's path, and the same on the layer term's run of
// the layer on the teacher's input.
const (
	dropMixer = iota
	dropMLP
	dropBranchMixer
	dropBranchMLP
)

// dropMask is one inverted-dropout mask over n rows of d elements: bit j
// of row i (words per row) set means kept, and kept elements are scaled.
type dropMask struct {
	n, d, words int
	bits        []uint64
	scale       float32
}

// streamSeed hashes the key, layer and branch into one 64-bit seed.
func (k DropoutKey) streamSeed(layer, branch int) uint64 {
	h := kernels.SplitMix64(k.Seed ^ 0x6d61747375726765) // "matsurge"
	for _, v := range []uint64{uint64(k.Step), uint64(k.Sample), uint64(layer), uint64(branch)} {
		h = kernels.SplitMix64(h ^ v)
	}
	return h
}

// newDropMask draws the mask of (key, layer, branch) over n rows of d
// elements with drop probability prob in (0, 1): element (i, j) is dropped
// when the j-th draw of row i's stream, as a 53-bit fraction, is below
// prob.
func newDropMask(p *pool, key DropoutKey, prob float64, layer, branch, n, d int) *dropMask {
	words := (d + 63) / 64
	m := &dropMask{n: n, d: d, words: words, bits: make([]uint64, n*words), scale: float32(1 / (1 - prob))}
	seed := key.streamSeed(layer, branch)
	thr := uint64(prob * (1 << 53))
	p.rows(n, grainFor(d), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			src := rand.NewPCG(seed, kernels.SplitMix64(uint64(i)))
			row := m.bits[i*words : (i+1)*words]
			for j := range d {
				if src.Uint64()>>11 >= thr {
					row[j>>6] |= 1 << (j & 63)
				}
			}
		}
	})
	return m
}

// apply multiplies v [n, d] by the mask in place: forward on an output,
// backward on its gradient alike.
func (m *dropMask) apply(p *pool, v []float32) {
	d, words := m.d, m.words
	p.rows(m.n, grainFor(d), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row, bs := v[i*d:(i+1)*d], m.bits[i*words:(i+1)*words]
			for j := range row {
				if bs[j>>6]>>(j&63)&1 != 0 {
					row[j] *= m.scale
				} else {
					row[j] = 0
				}
			}
		}
	})
}

// masked returns a copy of g multiplied by the mask (nil mask: g itself).
func (m *dropMask) masked(p *pool, g []float32) []float32 {
	if m == nil {
		return g
	}
	out := make([]float32, m.n*m.d)
	copy(out, g[:m.n*m.d])
	m.apply(p, out)
	return out
}

// kept counts the kept elements.
func (m *dropMask) kept() int {
	c := 0
	for _, w := range m.bits {
		c += bits.OnesCount64(w)
	}
	return c
}

// layerDropout is what one run of a layer draws its masks from: nil runs
// the layer without dropout.
type layerDropout struct {
	key    DropoutKey
	prob   float64
	branch bool // the layer term's run on the teacher's input
}

// masks draws the token mixer's and the MLP's masks of layer over n rows
// of d elements.
func (ld *layerDropout) masks(p *pool, layer, n, d int) (mix, mlp *dropMask) {
	if ld == nil {
		return nil, nil
	}
	bm, bf := dropMixer, dropMLP
	if ld.branch {
		bm, bf = dropBranchMixer, dropBranchMLP
	}
	return newDropMask(p, ld.key, ld.prob, layer, bm, n, d), newDropMask(p, ld.key, ld.prob, layer, bf, n, d)
}

// checkDropout refuses a probability outside [0, 1).
func checkDropout(prob float64) error {
	if !(prob >= 0 && prob < 1) || math.IsNaN(prob) {
		return fmt.Errorf("dropout probability %g must be in [0, 1)", prob)
	}
	return nil
}
