package optim

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// Param is one trainable tensor as the optimiser sees it: its float32
// master values, the gradient accumulated for them, and whether weight
// decay applies. The slices are the caller's: the optimiser updates Data
// and (when clipping) Grad in place and keeps no reference between calls.
type Param struct {
	Name string // the checkpoint key; errors and saved state name it
	Data []float32
	Grad []float32
	// Decay applies weight decay. The MaTVLM recipe decays matrices only:
	// no decay on 1-D tensors, biases, A_log, D, dt_bias or norm weights.
	Decay bool
}

// ZeroGrad clears every parameter's gradient.
func ZeroGrad(params []Param) {
	forChunks(chunksOf(params), 0, func(_ int, c chunk) { clear(params[c.param].Grad[c.lo:c.hi]) })
}

// checkParams reports parameters that cannot be optimised: an empty or
// repeated name, or a gradient whose length differs from the values'.
func checkParams(params []Param) error {
	seen := make(map[string]int, len(params))
	for i, p := range params {
		if p.Name == "" {
			return fmt.Errorf("parameter %d has no name", i)
		}
		if j, dup := seen[p.Name]; dup {
			return fmt.Errorf("parameter %s appears twice (positions %d and %d)", p.Name, j, i)
		}
		seen[p.Name] = i
		if len(p.Grad) != len(p.Data) {
			return fmt.Errorf("parameter %s: %d values but %d gradients", p.Name, len(p.Data), len(p.Grad))
		}
	}
	return nil
}

// chunkLen is the number of elements one task handles: large enough to
// amortise scheduling, small enough to balance 100M elements over many
// cores. It also fixes the grouping of the norm's partial sums, so it must
// not depend on the number of workers.
const chunkLen = 1 << 16

// chunk is the element range [lo, hi) of params[param].
type chunk struct{ param, lo, hi int }

// chunksOf cuts every parameter into ranges of at most chunkLen elements,
// in parameter order.
func chunksOf(params []Param) []chunk {
	n := 0
	for _, p := range params {
		n += (len(p.Data) + chunkLen - 1) / chunkLen
	}
	cs := make([]chunk, 0, n)
	for i, p := range params {
		for lo := 0; lo < len(p.Data); lo += chunkLen {
			cs = append(cs, chunk{i, lo, min(len(p.Data), lo+chunkLen)})
		}
	}
	return cs
}

// forChunks runs fn(k, cs[k]) for every chunk on at most workers
// goroutines (0: GOMAXPROCS). Which goroutine runs a chunk is left to
// scheduling: fn must write only to its own chunk's elements or to
// per-chunk slots indexed by k.
func forChunks(cs []chunk, workers int, fn func(k int, c chunk)) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, len(cs))
	if workers <= 1 {
		for k, c := range cs {
			fn(k, c)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= len(cs) {
					return
				}
				fn(k, cs[k])
			}
		})
	}
	wg.Wait()
}
