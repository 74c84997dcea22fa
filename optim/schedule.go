package optim

import (
	"fmt"
	"math"
	"strings"
)

// A Schedule gives the learning rate of an update as a pure function of
// step, the number of updates already made: step 0 is the first update.
// As with transformers' LambdaLR schedules, a warmup's first update has
// rate 0. A negative step is read as 0.
type Schedule interface {
	LR(step int) float64
	// Validate reports settings that make no schedule: negative or
	// non-finite rates, a minimum above the peak, phases that do not fit.
	Validate() error
}

// Constant is the same rate at every step.
type Constant struct{ Peak float64 }

// LR implements Schedule.
func (s Constant) LR(int) float64 { return s.Peak }

// Validate implements Schedule.
func (s Constant) Validate() error { return checkRates("constant", s.Peak, 0) }

// Warmup rises linearly from 0 over WarmupSteps updates, then stays at Peak
// (transformers' constant schedule with warmup): Peak·step/WarmupSteps
// before, Peak from step WarmupSteps on.
type Warmup struct {
	Peak        float64
	WarmupSteps int
}

// LR implements Schedule.
func (s Warmup) LR(step int) float64 {
	step = max(step, 0)
	if step < s.WarmupSteps {
		return s.Peak * float64(step) / float64(s.WarmupSteps)
	}
	return s.Peak
}

// Validate implements Schedule.
func (s Warmup) Validate() error {
	if s.WarmupSteps < 0 {
		return fmt.Errorf("warmup schedule: %d warmup steps", s.WarmupSteps)
	}
	return checkRates("warmup", s.Peak, 0)
}

// Cosine is a linear warmup to Peak over WarmupSteps, then a half cosine
// from Peak down to Min, reached at TotalSteps and kept after it
// (transformers' cosine schedule with warmup and min_lr; transformers would
// let the cosine rise again past TotalSteps, this one does not).
type Cosine struct {
	Peak, Min   float64
	WarmupSteps int
	TotalSteps  int
}

// LR implements Schedule.
func (s Cosine) LR(step int) float64 {
	step = max(step, 0)
	if step < s.WarmupSteps {
		return s.Peak * float64(step) / float64(s.WarmupSteps)
	}
	if step >= s.TotalSteps {
		return s.Min
	}
	progress := float64(step-s.WarmupSteps) / float64(max(1, s.TotalSteps-s.WarmupSteps))
	return s.Min + (s.Peak-s.Min)*0.5*(1+math.Cos(math.Pi*progress))
}

// Validate implements Schedule.
func (s Cosine) Validate() error {
	if s.WarmupSteps < 0 || s.TotalSteps < s.WarmupSteps {
		return fmt.Errorf("cosine schedule: %d warmup steps do not fit in %d total steps", s.WarmupSteps, s.TotalSteps)
	}
	return checkRates("cosine", s.Peak, s.Min)
}

// DecayShape is the curve of a WSD schedule's decay phase.
type DecayShape int

const (
	// DecayCosine is a half cosine, transformers' default and the MaTVLM
	// recipe's.
	DecayCosine DecayShape = iota
	// DecayLinear is a straight line (MiniCPM's WSD).
	DecayLinear
)

// String names the shape as ParseDecayShape reads it.
func (d DecayShape) String() string {
	switch d {
	case DecayCosine:
		return "cosine"
	case DecayLinear:
		return "linear"
	}
	return fmt.Sprintf("DecayShape(%d)", int(d))
}

// ParseDecayShape reads "cosine" or "linear".
func ParseDecayShape(name string) (DecayShape, error) {
	switch strings.ToLower(name) {
	case "cosine", "cos":
		return DecayCosine, nil
	case "linear":
		return DecayLinear, nil
	}
	return 0, fmt.Errorf("unknown decay shape %q (want cosine or linear)", name)
}

// WSD is warmup–stable–decay, as transformers 4.43's get_wsd_schedule,
// which the MaTVLM reference trainer (train_tinyllava_mamba2/train_hybrid.py,
// lr_scheduler_type warmup_stable_decay) uses:
//
//	step < W:               Peak·step/W                     (linear warmup from 0)
//	step < T − D:           Peak                            (stable)
//	step < T:               Min + (Peak − Min)·f(p),  p = (step − (T − D))/D
//	                        f(p) = ½(1 + cos πp) (DecayCosine) or 1 − p (DecayLinear)
//	otherwise:              Min
//
// with W = WarmupSteps, D = DecaySteps, T = TotalSteps; the stable phase
// is whatever is left, T − W − D. The recipe's Min is 0 (transformers'
// default min_lr_ratio) and its decay cosine. Its config gives
// warmup_steps = decay_steps = 64000 counted in samples: with a global
// batch of 64 that is 1000 updates each, of about 10.4K in its one epoch
// over 665K samples (the decay is the last ~10% of training).
type WSD struct {
	Peak, Min   float64
	WarmupSteps int
	DecaySteps  int
	TotalSteps  int
	Shape       DecayShape
}

// StableSteps is the length of the stable phase.
func (s WSD) StableSteps() int { return s.TotalSteps - s.WarmupSteps - s.DecaySteps }

// LR implements Schedule.
func (s WSD) LR(step int) float64 {
	step = max(step, 0)
	if step < s.WarmupSteps {
		return s.Peak * float64(step) / float64(s.WarmupSteps)
	}
	decayStart := s.TotalSteps - s.DecaySteps
	if step < decayStart {
		return s.Peak
	}
	if step >= s.TotalSteps {
		return s.Min
	}
	p := float64(step-decayStart) / float64(s.DecaySteps)
	f := 1 - p
	if s.Shape == DecayCosine {
		f = 0.5 * (1 + math.Cos(math.Pi*p))
	}
	return s.Min + (s.Peak-s.Min)*f
}

// Validate implements Schedule.
func (s WSD) Validate() error {
	if s.WarmupSteps < 0 || s.DecaySteps < 0 || s.StableSteps() < 0 {
		return fmt.Errorf("wsd schedule: %d warmup and %d decay steps do not fit in %d total steps", s.WarmupSteps, s.DecaySteps, s.TotalSteps)
	}
	if s.Shape != DecayCosine && s.Shape != DecayLinear {
		return fmt.Errorf("wsd schedule: unknown decay shape %v", s.Shape)
	}
	return checkRates("wsd", s.Peak, s.Min)
}

// checkRates reports a negative or non-finite rate, or a minimum above the
// peak.
func checkRates(kind string, peak, minLR float64) error {
	for _, r := range []float64{peak, minLR} {
		if math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
			return fmt.Errorf("%s schedule: learning rate %g is not a non-negative finite number", kind, r)
		}
	}
	if minLR > peak {
		return fmt.Errorf("%s schedule: minimum learning rate %g is above the peak %g", kind, minLR, peak)
	}
	return nil
}

// ScheduleConfig describes a schedule by name, the way a command line or a
// config file gives it; New builds and validates it.
type ScheduleConfig struct {
	Kind        string  // constant, warmup, cosine or wsd
	Peak, Min   float64 // Min: cosine and wsd
	WarmupSteps int     // warmup, cosine, wsd
	TotalSteps  int     // cosine, wsd
	// WSD's decay length: DecaySteps, or when it is 0, DecayFraction of
	// TotalSteps, rounded to the nearest step.
	DecaySteps    int
	DecayFraction float64
	DecayShape    string // wsd: cosine (default) or linear
}

// New builds the schedule the config names and validates it.
func (c ScheduleConfig) New() (Schedule, error) {
	var s Schedule
	switch strings.ToLower(c.Kind) {
	case "constant":
		s = Constant{Peak: c.Peak}
	case "warmup", "linear-warmup":
		s = Warmup{Peak: c.Peak, WarmupSteps: c.WarmupSteps}
	case "cosine":
		s = Cosine{Peak: c.Peak, Min: c.Min, WarmupSteps: c.WarmupSteps, TotalSteps: c.TotalSteps}
	case "wsd", "warmup-stable-decay", "warmup_stable_decay":
		shape := DecayCosine
		if c.DecayShape != "" {
			var err error
			if shape, err = ParseDecayShape(c.DecayShape); err != nil {
				return nil, fmt.Errorf("wsd schedule: %w", err)
			}
		}
		decay := c.DecaySteps
		if decay == 0 && c.DecayFraction != 0 {
			if !(c.DecayFraction > 0 && c.DecayFraction <= 1) {
				return nil, fmt.Errorf("wsd schedule: decay fraction %g is outside (0, 1]", c.DecayFraction)
			}
			decay = int(math.Round(c.DecayFraction * float64(c.TotalSteps)))
		}
		s = WSD{Peak: c.Peak, Min: c.Min, WarmupSteps: c.WarmupSteps, DecaySteps: decay, TotalSteps: c.TotalSteps, Shape: shape}
	default:
		return nil, fmt.Errorf("unknown schedule %q (want constant, warmup, cosine or wsd)", c.Kind)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}
