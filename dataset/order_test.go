package dataset

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

func isPermutation(p []int, n int) bool {
	if len(p) != n {
		return false
	}
	seen := make([]bool, n)
	for _, v := range p {
		if v < 0 || v >= n || seen[v] {
			return false
		}
		seen[v] = true
	}
	return true
}

func TestPermutation(t *testing.T) {
	for _, n := range []int{1, 2, 7, 1000} {
		for epoch := 0; epoch < 3; epoch++ {
			p := Permutation(n, 42, epoch)
			if !isPermutation(p, n) {
				t.Fatalf("n %d epoch %d: %v is no permutation", n, epoch, p)
			}
			if !slices.Equal(p, Permutation(n, 42, epoch)) {
				t.Fatalf("n %d epoch %d: two calls differ", n, epoch)
			}
		}
	}
	if len(Permutation(0, 1, 0)) != 0 || len(Permutation(-3, 1, 0)) != 0 {
		t.Error("empty permutations")
	}
	a, b, c := Permutation(1000, 42, 0), Permutation(1000, 42, 1), Permutation(1000, 43, 0)
	if slices.Equal(a, b) || slices.Equal(a, c) || slices.Equal(a, Permutation(1000, 42, -1)) {
		t.Error("different epochs or seeds give the same order")
	}
	// The order is pinned: a resumed run built by another Go release must see the same one.
	if got := fmt.Sprint(Permutation(12, 2024, 3)); got != pinnedPermutation {
		t.Errorf("Permutation(12, 2024, 3) = %s, pinned %s", got, pinnedPermutation)
	}
}

const pinnedPermutation = "[9 5 2 10 0 7 8 1 6 11 3 4]"

// TestPermutationUniform: over many epochs each element lands in each position about equally often
// (a chi-square test on 6×6 cells, 5 degrees of freedom per row).
func TestPermutationUniform(t *testing.T) {
	const n, epochs = 6, 60000
	var counts [n][n]int
	for e := 0; e < epochs; e++ {
		for pos, v := range Permutation(n, 7, e) {
			counts[v][pos]++
		}
	}
	expect := float64(epochs) / n
	for v := range counts {
		chi2 := 0.0
		for _, c := range counts[v] {
			chi2 += (float64(c) - expect) * (float64(c) - expect) / expect
		}
		// P(χ²₅ > 25) ≈ 1.4e-4.
		if chi2 > 25 || math.IsNaN(chi2) {
			t.Errorf("element %d: positions %v, χ² = %.1f", v, counts[v], chi2)
		}
	}
}

func TestBatcherCoversEpochs(t *testing.T) {
	for _, c := range []struct {
		n    int
		plan BatchPlan
		spe  int
		last []int // micro-batch sizes of an epoch's last step
	}{
		{17, BatchPlan{Seed: 5, MicroBatch: 3, Accumulation: 2}, 3, []int{3, 2}},
		{17, BatchPlan{Seed: 5, MicroBatch: 3, Accumulation: 2, DropLast: true}, 2, []int{3, 3}},
		{12, BatchPlan{Seed: 5, MicroBatch: 4}, 3, []int{4}},
		{5, BatchPlan{Seed: 5, MicroBatch: 4, Accumulation: 4}, 1, []int{4, 1}},
	} {
		b, err := NewBatcher(c.n, c.plan)
		if err != nil {
			t.Fatal(err)
		}
		if b.StepsPerEpoch() != c.spe {
			t.Fatalf("%+v: %d steps per epoch, want %d", c.plan, b.StepsPerEpoch(), c.spe)
		}
		for epoch := 0; epoch < 3; epoch++ {
			var seen []int
			for k := epoch * c.spe; k < (epoch+1)*c.spe; k++ {
				s, err := b.Step(k)
				if err != nil {
					t.Fatal(err)
				}
				if s.Epoch != epoch {
					t.Fatalf("step %d: epoch %d, want %d", k, s.Epoch, epoch)
				}
				var sizes []int
				for _, m := range s.Micro {
					sizes = append(sizes, len(m))
					seen = append(seen, m...)
				}
				want := []int{c.plan.MicroBatch}
				if k == (epoch+1)*c.spe-1 {
					want = c.last
				} else if c.plan.Accumulation > 1 {
					want = slices.Repeat(want, c.plan.Accumulation)
				}
				if !slices.Equal(sizes, want) || s.Samples() != sum(want) {
					t.Errorf("%+v step %d: micro-batch sizes %v, want %v", c.plan, k, sizes, want)
				}
			}
			// The epoch walks its permutation in order, each sample once (all of them without DropLast).
			order := Permutation(c.n, c.plan.Seed, epoch)
			if !slices.Equal(seen, order[:len(seen)]) {
				t.Errorf("%+v epoch %d: steps %v, want the permutation's prefix %v", c.plan, epoch, seen, order)
			}
			if !c.plan.DropLast && len(seen) != c.n {
				t.Errorf("%+v epoch %d: %d samples, want %d", c.plan, epoch, len(seen), c.n)
			}
		}
	}
}

func sum(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}

// TestBatcherResume: a batcher started fresh at step k (as after a restart) hands out exactly what
// one that ran from step 0 handed out, in any order of asking.
func TestBatcherResume(t *testing.T) {
	plan := BatchPlan{Seed: 99, MicroBatch: 2, Accumulation: 3}
	const n, steps = 23, 40
	run, err := NewBatcher(n, plan)
	if err != nil {
		t.Fatal(err)
	}
	var straight []Step
	for k := 0; k < steps; k++ {
		s, err := run.Step(k)
		if err != nil {
			t.Fatal(err)
		}
		straight = append(straight, s)
	}
	for _, resume := range []int{0, 1, 3, 4, 5, 17, 39} {
		b, err := NewBatcher(n, plan)
		if err != nil {
			t.Fatal(err)
		}
		for k := resume; k < steps; k++ {
			s, err := b.Step(k)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(s) != fmt.Sprint(straight[k]) {
				t.Fatalf("resumed at %d: step %d = %v, uninterrupted %v", resume, k, s, straight[k])
			}
		}
	}
	// Asking backwards (the cache goes back and forth between epochs) changes nothing.
	for k := steps - 1; k >= 0; k-- {
		s, _ := run.Step(k)
		if fmt.Sprint(s) != fmt.Sprint(straight[k]) {
			t.Fatalf("step %d asked again: %v, first %v", k, s, straight[k])
		}
	}
	// A returned step is the caller's: changing it changes no later answer.
	s, _ := run.Step(0)
	s.Micro[0][0] = -1
	if again, _ := run.Step(0); again.Micro[0][0] == -1 {
		t.Error("Step shares its slices with the batcher")
	}
	other, _ := NewBatcher(n, BatchPlan{Seed: 100, MicroBatch: 2, Accumulation: 3})
	if s1, _ := other.Step(0); fmt.Sprint(s1) == fmt.Sprint(straight[0]) {
		t.Error("another seed gives the same first step")
	}
}

func TestBatcherErrors(t *testing.T) {
	for _, c := range []struct {
		n    int
		plan BatchPlan
	}{
		{0, BatchPlan{MicroBatch: 1}},
		{5, BatchPlan{MicroBatch: 0}},
		{5, BatchPlan{MicroBatch: 1, Accumulation: -2}},
		{5, BatchPlan{MicroBatch: 3, Accumulation: 2, DropLast: true}},
	} {
		if _, err := NewBatcher(c.n, c.plan); err == nil {
			t.Errorf("NewBatcher(%d, %+v): no error", c.n, c.plan)
		}
	}
	b, err := NewBatcher(5, BatchPlan{MicroBatch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Step(-1); err == nil {
		t.Error("Step(-1): no error")
	}
}
