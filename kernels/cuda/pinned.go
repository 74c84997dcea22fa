package cuda

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/matsurgery/matsurgery/kernels"
)

var _ kernels.Pinner = (*Backend)(nil)

// Pinned runs f on the owner goroutine; the backend calls f makes run
// there directly instead of being handed over one by one (see
// kernels.Pinner).
func (be *Backend) Pinned(f func() error) error { return be.do(pinnedOp, f) }

const pinnedOp = "pinned"

// onOwner reports whether the calling goroutine is the owner: the owner is
// locked to its OS thread, so the thread identifies it.
func (be *Backend) onOwner() bool {
	tid := threadID()
	return tid > 0 && tid == be.tid.Load()
}

// runJob runs f, turning a panic (a bug) into an error.
func runJob(what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cuda %s: internal error: %v", what, r)
		}
	}()
	return f()
}

// profile is MATSURGERY_CUDA_PROFILE's per-operation account: with it set,
// every operation is followed by a stream synchronisation and its wall
// time (host launch work plus device execution) is summed by name; Close
// prints the table to stderr. Timings change the program's overlap of
// host and device work, so they show where time goes, not the total.
type profile struct {
	mu   sync.Mutex
	ops  map[string]*profileEntry
	wall time.Duration
}

type profileEntry struct {
	n   int
	dur time.Duration
	all []time.Duration // every call's, for the median
}

func newProfile() *profile {
	if v := os.Getenv("MATSURGERY_CUDA_PROFILE"); v == "" || v == "0" {
		return nil
	}
	return &profile{ops: map[string]*profileEntry{}}
}

// time runs f, synchronises the stream and records the wall time under what.
func (p *profile) time(be *Backend, what string, f func() error) error {
	t0 := time.Now()
	err := f()
	if serr := be.drv.syncStream(be.stream); err == nil {
		err = serr
	}
	d := time.Since(t0)
	// Operations are named "op" or "op detail"; the first word groups them.
	name, _, _ := strings.Cut(what, " ")
	p.mu.Lock()
	e := p.ops[name]
	if e == nil {
		e = &profileEntry{}
		p.ops[name] = e
	}
	e.n++
	e.dur += d
	e.all = append(e.all, d)
	p.wall += d
	p.mu.Unlock()
	return err
}

// report writes the table, the most expensive operations first.
func (p *profile) report(be *Backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	names := make([]string, 0, len(p.ops))
	for n := range p.ops {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return p.ops[names[i]].dur > p.ops[names[j]].dur })
	fmt.Fprintf(os.Stderr, "MATSURGERY_CUDA_PROFILE %s: %.3f s in operations (each synchronised)\n", be.Name(), p.wall.Seconds())
	w := tabwriter.NewWriter(os.Stderr, 0, 2, 2, ' ', tabwriter.AlignRight)
	// The median and the total without the slowest call tell a first
	// call's one-time work (NVRTC compilation, library set-up) apart.
	fmt.Fprintln(w, "operation\tcalls\ttotal ms\tshare\tmedian µs\tslowest ms\ttotal ms without it\t")
	for _, n := range names {
		e := p.ops[n]
		slices.Sort(e.all)
		slowest := e.all[len(e.all)-1]
		fmt.Fprintf(w, "%s\t%d\t%.1f\t%.1f%%\t%.1f\t%.2f\t%.1f\t\n", n, e.n, float64(e.dur)/1e6, 100*float64(e.dur)/float64(p.wall),
			float64(e.all[len(e.all)/2])/1e3, float64(slowest)/1e6, float64(e.dur-slowest)/1e6)
	}
	w.Flush()
}
