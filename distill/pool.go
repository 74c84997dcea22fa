package distill

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/matsurgery/matsurgery/kernels/cpu"
)

// pool runs work on at most workers goroutines. Results never depend on
// how tasks are assigned to goroutines: each output element is computed by
// one task, in a fixed order of operations, and reductions across tasks
// are made afterwards in a fixed order.
//
// Large matrix products go through be, the CPU backend of package
// kernels/cpu, whose blocked AVX-512/AVX2 kernels are several times faster
// than gonum's sgemm (see linear.go); its results do not depend on the
// number of workers either.
type pool struct {
	workers int
	be      *cpu.Backend
}

func newPool(workers int) *pool {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &pool{workers: workers, be: cpu.New(workers)}
}

// tasks runs fn(w, i) for every i in [0, n). w in [0, p.workers) names the
// goroutine running the task, so that fn may use per-worker scratch.
func (p *pool) tasks(n int, fn func(w, i int)) {
	if n <= 0 {
		return
	}
	nw := min(p.workers, n)
	if nw <= 1 {
		for i := range n {
			fn(0, i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range nw {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(w, i)
			}
		}()
	}
	wg.Wait()
}

// rows runs fn(lo, hi) over consecutive ranges of at most grain items
// covering [0, n).
func (p *pool) rows(n, grain int, fn func(lo, hi int)) {
	grain = max(1, grain)
	p.tasks((n+grain-1)/grain, func(_, c int) {
		fn(c*grain, min(n, (c+1)*grain))
	})
}

// grainFor is the number of rows of width cols that makes a task of about
// 16K elements: small enough to spread, large enough to be worth a task.
func grainFor(cols int) int { return max(1, (1<<14)/max(1, cols)) }
