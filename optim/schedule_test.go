package optim

import (
	"math"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-15*math.Max(math.Abs(a), math.Abs(b)) }

// TestSchedules checks every schedule at its breakpoints and in the middle
// of each phase; the expected values are worked out by hand from the
// definitions (peak 1e-3, min 1e-5).
func TestSchedules(t *testing.T) {
	const peak, lo = 1e-3, 1e-5
	cos := func(p float64) float64 { return lo + (peak-lo)*0.5*(1+math.Cos(math.Pi*p)) }
	cases := []struct {
		name  string
		s     Schedule
		steps map[int]float64
	}{
		{"constant", Constant{Peak: peak}, map[int]float64{-3: peak, 0: peak, 7: peak, 1 << 40: peak}},
		{"warmup", Warmup{Peak: peak, WarmupSteps: 10}, map[int]float64{-1: 0, 0: 0, 1: peak / 10, 5: peak / 2, 9: 9 * peak / 10, 10: peak, 11: peak, 1000: peak}},
		{"warmup 0", Warmup{Peak: peak}, map[int]float64{0: peak, 5: peak}},
		{"cosine", Cosine{Peak: peak, Min: lo, WarmupSteps: 10, TotalSteps: 110}, map[int]float64{
			0: 0, 5: peak / 2, 10: peak, 35: cos(0.25), 60: (peak + lo) / 2, 85: cos(0.75), 109: cos(0.99), 110: lo, 200: lo, 300: lo}},
		{"cosine no warmup", Cosine{Peak: peak, TotalSteps: 4}, map[int]float64{0: peak, 2: peak / 2, 4: 0}},
		{"wsd cosine", WSD{Peak: peak, Min: lo, WarmupSteps: 10, DecaySteps: 20, TotalSteps: 100}, map[int]float64{
			0: 0, 3: 3 * peak / 10, 10: peak, 50: peak, 79: peak, 80: peak, 85: cos(0.25), 90: (peak + lo) / 2, 95: cos(0.75), 99: cos(0.95), 100: lo, 1000: lo}},
		{"wsd linear", WSD{Peak: peak, Min: lo, WarmupSteps: 10, DecaySteps: 20, TotalSteps: 100, Shape: DecayLinear}, map[int]float64{
			10: peak, 80: peak, 85: lo + (peak-lo)*0.75, 90: (peak + lo) / 2, 99: lo + (peak-lo)*0.05, 100: lo}},
		{"wsd no decay", WSD{Peak: peak, Min: lo, WarmupSteps: 2, TotalSteps: 5}, map[int]float64{1: peak / 2, 4: peak, 5: lo}},
		{"wsd all decay", WSD{Peak: peak, DecaySteps: 4, TotalSteps: 4, Shape: DecayLinear}, map[int]float64{0: peak, 1: 0.75 * peak, 3: 0.25 * peak, 4: 0}},
	}
	for _, c := range cases {
		if err := c.s.Validate(); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		for step, want := range c.steps {
			if got := c.s.LR(step); !near(got, want) {
				t.Errorf("%s: LR(%d) = %.17g, want %.17g", c.name, step, got, want)
			}
		}
	}
}

// TestWSDRecipe: the MaTVLM numbers in updates (1000 warmup, 1000 decay of
// 10396): the stable phase is what is left, the rate is the peak through
// it and 0 after the end.
func TestWSDRecipe(t *testing.T) {
	s := WSD{Peak: 2e-4, WarmupSteps: 1000, DecaySteps: 1000, TotalSteps: 10396}
	if s.StableSteps() != 8396 {
		t.Errorf("stable steps %d, want 8396", s.StableSteps())
	}
	if s.LR(1000) != 2e-4 || s.LR(9396) != 2e-4 || s.LR(10396) != 0 || !near(s.LR(9896), 1e-4) {
		t.Errorf("LR at 1000, 9396, 9896, 10396: %g %g %g %g", s.LR(1000), s.LR(9396), s.LR(9896), s.LR(10396))
	}
	// Monotone: never rises after the warmup.
	prev := s.LR(1000)
	for step := 1001; step <= 10400; step++ {
		if lr := s.LR(step); lr > prev {
			t.Fatalf("LR rises at step %d: %g after %g", step, lr, prev)
		} else {
			prev = lr
		}
	}
}

func TestScheduleConfig(t *testing.T) {
	s, err := ScheduleConfig{Kind: "wsd", Peak: 1, WarmupSteps: 10, TotalSteps: 1000, DecayFraction: 0.1, DecayShape: "linear"}.New()
	if err != nil {
		t.Fatal(err)
	}
	if w := (WSD{Peak: 1, WarmupSteps: 10, DecaySteps: 100, TotalSteps: 1000, Shape: DecayLinear}); s != w {
		t.Errorf("got %+v, want %+v", s, w)
	}
	good := map[string]Schedule{
		"constant": Constant{Peak: 1},
		"warmup":   Warmup{Peak: 1, WarmupSteps: 10},
		"cosine":   Cosine{Peak: 1, Min: 0.5, WarmupSteps: 10, TotalSteps: 1000},
		"WSD":      WSD{Peak: 1, Min: 0.5, WarmupSteps: 10, DecaySteps: 7, TotalSteps: 1000},
	}
	for kind, want := range good {
		s, err := ScheduleConfig{Kind: kind, Peak: 1, Min: 0.5, WarmupSteps: 10, TotalSteps: 1000, DecaySteps: 7}.New()
		if err != nil || s != want {
			t.Errorf("%s: %+v, %v; want %+v", kind, s, err, want)
		}
	}
	bad := map[string]ScheduleConfig{
		"unknown schedule":      {Kind: "step"},
		"above the peak":        {Kind: "cosine", Peak: 1, Min: 2, TotalSteps: 10},
		"do not fit":            {Kind: "wsd", Peak: 1, WarmupSteps: 10, DecaySteps: 10, TotalSteps: 15},
		"decay fraction":        {Kind: "wsd", Peak: 1, TotalSteps: 15, DecayFraction: 1.5},
		"unknown decay shape":   {Kind: "wsd", Peak: 1, TotalSteps: 15, DecayShape: "exp"},
		"not a non-negative":    {Kind: "constant", Peak: math.Inf(1)},
		"warmup steps do not":   {Kind: "cosine", Peak: 1, WarmupSteps: 20, TotalSteps: 10},
		"-1 warmup steps":       {Kind: "warmup", Peak: 1, WarmupSteps: -1},
		"learning rate -0.5 is": {Kind: "warmup", Peak: -0.5},
	}
	for want, c := range bad {
		if _, err := c.New(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: error %v, want one mentioning %q", c, err, want)
		}
	}
}
