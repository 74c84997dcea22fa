package optim

import "fmt"

// Moments is one parameter's AdamW state: its first and second moments,
// in the parameter's element order.
type Moments struct {
	Name  string
	Decay bool
	M, V  []float32
}

// State returns the number of updates made and each parameter's moments,
// in the order Step was given the parameters (none before the first Step).
// The slices are copies. With SetState it lets an optimiser that runs
// elsewhere — package distill's device student keeps its moments on the
// GPU — save and resume through Save and Load's format.
func (o *AdamW) State() (steps int64, ms []Moments) {
	ms = make([]Moments, len(o.state))
	for i, s := range o.state {
		ms[i] = Moments{Name: s.name, Decay: s.decay, M: append([]float32(nil), s.m...), V: append([]float32(nil), s.v...)}
	}
	return o.steps, ms
}

// SetState replaces the update count and the moments with copies of the
// given ones; later Steps must pass the same parameters in the same order.
// Moments with no parameters reset the state (the next Step creates it).
// On error nothing changes.
func (o *AdamW) SetState(steps int64, ms []Moments) error {
	if steps < 0 {
		return fmt.Errorf("adamw: set state: %d updates", steps)
	}
	seen := make(map[string]bool, len(ms))
	state := make([]moments, len(ms))
	for i, m := range ms {
		switch {
		case m.Name == "":
			return fmt.Errorf("adamw: set state: parameter %d has no name", i)
		case seen[m.Name]:
			return fmt.Errorf("adamw: set state: parameter %s appears twice", m.Name)
		case len(m.M) != len(m.V):
			return fmt.Errorf("adamw: set state: parameter %s has %d first and %d second moments", m.Name, len(m.M), len(m.V))
		}
		seen[m.Name] = true
		state[i] = moments{name: m.Name, decay: m.Decay, m: append([]float32(nil), m.M...), v: append([]float32(nil), m.V...)}
	}
	if len(state) == 0 {
		state = nil
	}
	o.steps, o.state = steps, state
	return nil
}
