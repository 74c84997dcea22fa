package trainlog

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Losses are one update's loss terms (SPEC §1): the KL divergence to the
// teacher's logits, the summed layer L2 distances, the cross-entropy on
// the labels, and the weighted total that was minimised.
type Losses struct {
	KL, L2, CE, Total float64
}

// Record is one line of metrics.jsonl.
type Record struct {
	Step         int     // updates completed, counting this one
	Epoch        float64 // epochs completed, fractional
	Losses       Losses
	LR           float64 // the learning rate of this update
	GradNorm     float64 // the global gradient norm before clipping
	TokensPerSec float64
	Elapsed      time.Duration // training time since the run began, across resumes
}

// number is a float64 that writes NaN and ±Inf as JSON strings, which
// encoding/json refuses to write as numbers.
type number float64

func (n number) MarshalJSON() ([]byte, error) {
	f := float64(n)
	switch {
	case math.IsNaN(f):
		return []byte(`"NaN"`), nil
	case math.IsInf(f, 1):
		return []byte(`"Infinity"`), nil
	case math.IsInf(f, -1):
		return []byte(`"-Infinity"`), nil
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

func (n *number) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case `"NaN"`:
		*n = number(math.NaN())
		return nil
	case `"Infinity"`:
		*n = number(math.Inf(1))
		return nil
	case `"-Infinity"`:
		*n = number(math.Inf(-1))
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("%s is not a number", b)
	}
	*n = number(f)
	return nil
}

// wireLosses and wireRecord are the JSON form.
type wireLosses struct {
	KL    number `json:"kl"`
	L2    number `json:"l2"`
	CE    number `json:"ce"`
	Total number `json:"total"`
}

type wireRecord struct {
	Step         *int       `json:"step"`
	Epoch        number     `json:"epoch"`
	Losses       wireLosses `json:"losses"`
	LR           number     `json:"lr"`
	GradNorm     number     `json:"grad_norm"`
	TokensPerSec number     `json:"tokens_per_s"`
	Elapsed      number     `json:"elapsed_s"`
}

// MarshalJSON writes the record as one line's object.
func (r Record) MarshalJSON() ([]byte, error) {
	step := r.Step
	return json.Marshal(wireRecord{
		Step:  &step,
		Epoch: number(r.Epoch),
		Losses: wireLosses{
			KL: number(r.Losses.KL), L2: number(r.Losses.L2), CE: number(r.Losses.CE), Total: number(r.Losses.Total),
		},
		LR:           number(r.LR),
		GradNorm:     number(r.GradNorm),
		TokensPerSec: number(r.TokensPerSec),
		Elapsed:      number(r.Elapsed.Seconds()),
	})
}

// UnmarshalJSON reads one line's object. The step is required; other
// fields that are missing read as 0, and unknown fields are ignored.
func (r *Record) UnmarshalJSON(b []byte) error {
	var w wireRecord
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.Step == nil {
		return fmt.Errorf("no step")
	}
	*r = Record{
		Step:  *w.Step,
		Epoch: float64(w.Epoch),
		Losses: Losses{
			KL: float64(w.Losses.KL), L2: float64(w.Losses.L2), CE: float64(w.Losses.CE), Total: float64(w.Losses.Total),
		},
		LR:           float64(w.LR),
		GradNorm:     float64(w.GradNorm),
		TokensPerSec: float64(w.TokensPerSec),
		Elapsed:      seconds(float64(w.Elapsed)),
	}
	return nil
}

// seconds converts back to a Duration, rounding to the nanosecond;
// non-finite or out-of-range values saturate.
func seconds(s float64) time.Duration {
	ns := math.Round(s * 1e9)
	switch {
	case math.IsNaN(ns):
		return 0
	case ns >= math.MaxInt64:
		return math.MaxInt64
	case ns <= math.MinInt64:
		return math.MinInt64
	}
	return time.Duration(ns)
}
