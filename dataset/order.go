package dataset

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
)

// Permutation returns a permutation of [0, n) that depends only on (seed, epoch, n): a Fisher–Yates
// shuffle driven by a PCG-DXSM generator (math/rand/v2's PCG, whose output is fixed by its
// definition) seeded from seed and epoch, with Lemire's unbiased bounded draws written out here, so
// that the order does not change with the Go release either. Different epochs give unrelated
// orders. n ≤ 0 gives an empty permutation.
func Permutation(n int, seed uint64, epoch int) []int {
	if n <= 0 {
		return []int{}
	}
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	r := newStream(seed, uint64(epoch))
	for i := n - 1; i > 0; i-- {
		j := int(r.below(uint64(i) + 1))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// Order is Permutation(d.Len(), seed, epoch): the order in which an epoch visits the samples.
func (d *Dataset) Order(seed uint64, epoch int) []int { return Permutation(d.Len(), seed, epoch) }

// stream is a seeded source of uniform draws.
type stream struct{ pcg *rand.PCG }

// newStream seeds a PCG from a seed and a stream number, both mixed so that neighbouring values give
// unrelated streams.
func newStream(seed, number uint64) stream {
	return stream{pcg: rand.NewPCG(mix64(seed), mix64(seed^mix64(number+0x9e3779b97f4a7c15)))}
}

// mix64 is SplitMix64's output function.
func mix64(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// below returns a uniform integer in [0, m), m > 0 (Lemire's multiply-and-reject).
func (s stream) below(m uint64) uint64 {
	hi, lo := bits.Mul64(s.pcg.Uint64(), m)
	if lo < m {
		threshold := -m % m
		for lo < threshold {
			hi, lo = bits.Mul64(s.pcg.Uint64(), m)
		}
	}
	return hi
}

// between returns a uniform integer in [lo, hi], lo ≤ hi.
func (s stream) between(lo, hi int) int { return lo + int(s.below(uint64(hi-lo)+1)) }

// BatchPlan says how samples are grouped into optimiser steps.
type BatchPlan struct {
	Seed uint64
	// MicroBatch is the number of samples of one forward and backward pass.
	MicroBatch int
	// Accumulation is the number of micro-batches whose gradients make one optimiser step (0 means 1).
	// A step takes MicroBatch × Accumulation samples.
	Accumulation int
	// DropLast leaves out the samples of each epoch's last step when there are too few of them to
	// fill it. Without it that step is shorter: fewer micro-batches, the last of them possibly shorter.
	DropLast bool
}

// Batcher hands out the sample indices of each optimiser step. What it returns for a step is a pure
// function of (plan, step, n): each epoch walks Permutation(n, Seed, epoch) in order, cut into steps
// of MicroBatch × Accumulation samples and those into micro-batches, so a trainer resuming at step k
// gets exactly what an uninterrupted run got at step k. It is safe for concurrent use.
type Batcher struct {
	n    int
	plan BatchPlan

	mu    sync.Mutex
	epoch int   // epoch of order
	order []int // the last epoch's permutation, nil before the first Step
}

// NewBatcher plans the steps over n samples.
func NewBatcher(n int, plan BatchPlan) (*Batcher, error) {
	if plan.Accumulation == 0 {
		plan.Accumulation = 1
	}
	switch {
	case n <= 0:
		return nil, fmt.Errorf("batcher: %d samples, want at least one", n)
	case plan.MicroBatch <= 0:
		return nil, fmt.Errorf("batcher: micro-batch size %d must be positive", plan.MicroBatch)
	case plan.Accumulation < 0:
		return nil, fmt.Errorf("batcher: accumulation %d is negative", plan.Accumulation)
	case plan.DropLast && n < plan.MicroBatch*plan.Accumulation:
		return nil, fmt.Errorf("batcher: %d samples do not fill one step of %d×%d with DropLast", n, plan.MicroBatch, plan.Accumulation)
	}
	return &Batcher{n: n, plan: plan}, nil
}

// StepSize is the number of samples of a full step.
func (b *Batcher) StepSize() int { return b.plan.MicroBatch * b.plan.Accumulation }

// StepsPerEpoch is the number of optimiser steps of one epoch.
func (b *Batcher) StepsPerEpoch() int {
	g := b.StepSize()
	if b.plan.DropLast {
		return b.n / g
	}
	return (b.n + g - 1) / g
}

// Step is one optimiser step's samples.
type Step struct {
	Epoch int     // epoch the step belongs to, from 0
	Micro [][]int // dataset indices, one slice per micro-batch
}

// Samples is the number of samples of the step.
func (s Step) Samples() int {
	n := 0
	for _, m := range s.Micro {
		n += len(m)
	}
	return n
}

// Step returns the indices of step k (from 0; epochs follow one another).
func (b *Batcher) Step(k int) (Step, error) {
	if k < 0 {
		return Step{}, fmt.Errorf("batcher: step %d is negative", k)
	}
	spe := b.StepsPerEpoch()
	epoch, within := k/spe, k%spe
	b.mu.Lock()
	if b.order == nil || b.epoch != epoch {
		b.order, b.epoch = Permutation(b.n, b.plan.Seed, epoch), epoch
	}
	order := b.order
	b.mu.Unlock()
	g := b.StepSize()
	idx := order[within*g : min((within+1)*g, b.n)]
	s := Step{Epoch: epoch}
	for len(idx) > 0 {
		m := min(b.plan.MicroBatch, len(idx))
		s.Micro = append(s.Micro, append([]int(nil), idx[:m]...))
		idx = idx[m:]
	}
	return s, nil
}
