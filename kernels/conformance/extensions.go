package conformance

import (
	"math"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// RunExtensions checks the optional Backend extensions (kernels/cached.go)
// that the backend from newBackend implements; a subtest for an extension
// it lacks is skipped, saying so.
func RunExtensions(t *testing.T, newBackend func() kernels.Backend, tol Tolerances) {
	t.Helper()
	be := newBackend()
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Name(), err)
		}
	})
	s := &suite{be: be, tol: tol}
	rows, hasRows := be.(kernels.RowCopier)
	cached, hasCached := be.(kernels.CachedAttention)
	for _, c := range []struct {
		name string
		has  bool
		fn   func(*env)
	}{
		{"CopyRows", hasRows, func(e *env) { s.copyRows(e, rows) }},
		{"GatherRows", hasRows, func(e *env) { s.gatherRows(e, rows) }},
		{"SoftmaxAttentionCached", hasCached, func(e *env) { s.softmaxAttentionCached(e, cached) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !c.has {
				t.Skipf("backend %s does not implement %s", be.Name(), c.name)
			}
			c.fn(s.env(t))
		})
	}
}

func (s *suite) copyRows(e *env, rc kernels.RowCopier) {
	cases := []struct {
		dst, src          []int
		dstRow, srcRow, n int
		srcBF16           bool
	}{
		{[]int{1, 9, 7}, []int{5, 7}, 2, 1, 4, false},
		{[]int{12, 5}, []int{2, 3, 5}, 0, 0, 6, true},
		{[]int{4, 33}, []int{4, 33}, 3, 0, 1, false},
		{[]int{3, 8}, []int{2, 8}, 1, 0, 0, false},
	}
	for _, c := range cases {
		dst := e.rand(-1, 1, c.dst...)
		src := e.rand(-2, 2, c.src...)
		dt := e.up(dst)
		st := e.upAs(src, map[bool]kernels.DType{false: kernels.F32, true: kernels.BF16}[c.srcBF16])
		e.must("copyrows", rc.CopyRows(dt, c.dstRow, st, c.srcRow, c.n))
		want := e.want(reference.CopyRows(dst, c.dstRow, src, c.srcRow, c.n))
		e.exact(name("copyrows %v←%v rows %d←%d ×%d bf16=%v", c.dst, c.src, c.dstRow, c.srcRow, c.n, c.srcBF16), e.down(dt), want)
	}
	// Within one tensor, disjoint ranges.
	a := e.rand(-1, 1, 10, 6)
	at := e.up(a)
	e.must("copyrows within", rc.CopyRows(at, 6, at, 1, 4))
	e.exact("copyrows within one tensor", e.down(at), e.want(reference.CopyRows(a, 6, a, 1, 4)))

	d := e.up(e.rand(-1, 1, 4, 6))
	src := e.up(e.rand(-1, 1, 3, 6))
	e.fails("copyrows past the end of dst", func() error { return rc.CopyRows(d, 2, src, 0, 3) })
	e.fails("copyrows past the end of src", func() error { return rc.CopyRows(d, 0, src, 1, 3) })
	e.fails("copyrows negative row", func() error { return rc.CopyRows(d, -1, src, 0, 1) })
	e.fails("copyrows rows of other width", func() error { return rc.CopyRows(d, 0, e.up(e.rand(-1, 1, 3, 5)), 0, 1) })
	e.fails("copyrows overlapping ranges", func() error { return rc.CopyRows(d, 1, d, 0, 2) })
	e.fails("copyrows into bf16", func() error { return rc.CopyRows(e.upBF16(e.rand(-1, 1, 4, 6)), 0, src, 0, 1) })
}

func (s *suite) gatherRows(e *env, rc kernels.RowCopier) {
	for _, bf16 := range []bool{false, true} {
		table := e.rand(-1, 1, 37, 11)
		dt := kernels.F32
		if bf16 {
			dt = kernels.BF16
		}
		tt := e.upAs(table, dt)
		ids := make([]int32, 15)
		for i := range ids {
			ids[i] = int32(e.rng.IntN(37))
		}
		ids[0], ids[len(ids)-1] = 0, 36
		out := e.poisoned(1, 15, 11)
		e.must("gatherrows", rc.GatherRows(out, tt, ids))
		e.exact(name("gatherrows bf16=%v", bf16), e.down(out), withShape(e, e.want(reference.GatherRows(table, ids)), 1, 15, 11))
	}
	table := e.up(e.rand(-1, 1, 5, 4))
	e.fails("gatherrows id past the vocabulary", func() error { return rc.GatherRows(e.poisoned(2, 4), table, []int32{1, 5}) })
	e.fails("gatherrows negative id", func() error { return rc.GatherRows(e.poisoned(2, 4), table, []int32{-1, 0}) })
	e.fails("gatherrows wrong id count", func() error { return rc.GatherRows(e.poisoned(2, 4), table, []int32{1}) })
	e.fails("gatherrows wrong width", func() error { return rc.GatherRows(e.poisoned(2, 3), table, []int32{1, 2}) })
}

func (s *suite) softmaxAttentionCached(e *env, ca kernels.CachedAttention) {
	cases := []struct{ b, lq, pos0, capacity, h, hkv, p int }{
		{1, 1, 0, 1, 2, 2, 8},      // the first token
		{1, 1, 40, 64, 4, 2, 16},   // a decode step, GQA, spare capacity
		{2, 3, 17, 20, 6, 3, 5},    // a few new queries at once
		{1, 70, 0, 70, 2, 1, 20},   // a whole prefill
		{1, 1, 300, 301, 3, 1, 80}, // long cache, Phi-2's head size
	}
	for _, c := range cases {
		for _, scale := range []float64{1 / math.Sqrt(float64(c.p)), 8} {
			q := e.rand(-1, 1, c.b, c.lq, c.h, c.p)
			k := e.rand(-1, 1, c.b, c.capacity, c.hkv, c.p)
			v := e.rand(-1, 1, c.b, c.capacity, c.hkv, c.p)
			// Rows past pos0+lq must be ignored: make them NaN.
			for _, a := range []*reference.Array{k, v} {
				for b := range c.b {
					for r := c.pos0 + c.lq; r < c.capacity; r++ {
						row := a.Data[((b*c.capacity+r)*c.hkv)*c.p:][:c.hkv*c.p]
						for i := range row {
							row[i] = math.NaN()
						}
					}
				}
			}
			sc := float64(float32(scale))
			out := e.poisoned(c.b, c.lq, c.h, c.p)
			e.must("softmaxattentioncached", ca.SoftmaxAttentionCached(out, e.up(q), e.up(k), e.up(v), c.pos0, float32(sc)))
			e.check(name("softmaxattentioncached %+v scale=%.3g", c, sc), e.down(out), e.want(reference.SoftmaxAttentionCached(q, k, v, c.pos0, sc)), e.tol.F32)
			if c.pos0 == 0 && c.capacity == c.lq {
				e.check(name("softmaxattentioncached %+v = causal softmax attention", c), e.down(out), e.want(reference.SoftmaxAttention(q, k, v, sc, true)), e.tol.F32)
			}
		}
	}
	q := e.up(e.rand(-1, 1, 1, 2, 2, 4))
	k := e.up(e.rand(-1, 1, 1, 5, 1, 4))
	e.fails("softmaxattentioncached past the cache", func() error { return ca.SoftmaxAttentionCached(e.poisoned(1, 2, 2, 4), q, k, k, 4, 1) })
	e.fails("softmaxattentioncached negative position", func() error { return ca.SoftmaxAttentionCached(e.poisoned(1, 2, 2, 4), q, k, k, -1, 1) })
	e.fails("softmaxattentioncached head size", func() error {
		return ca.SoftmaxAttentionCached(e.poisoned(1, 2, 2, 4), q, e.up(e.rand(-1, 1, 1, 5, 1, 3)), e.up(e.rand(-1, 1, 1, 5, 1, 3)), 0, 1)
	})
	e.fails("softmaxattentioncached heads not a multiple", func() error {
		return ca.SoftmaxAttentionCached(e.poisoned(1, 2, 2, 4), q, e.up(e.rand(-1, 1, 1, 5, 3, 4)), e.up(e.rand(-1, 1, 1, 5, 3, 4)), 0, 1)
	})
	e.fails("softmaxattentioncached NaN scale", func() error {
		return ca.SoftmaxAttentionCached(e.poisoned(1, 2, 2, 4), q, k, k, 0, float32(math.NaN()))
	})
}
