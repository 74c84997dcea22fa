package main

import (
	"github.com/matsurgery/matsurgery/kernels/cuda"
)

// DevicesCmd is `matsurgery devices`.
type DevicesCmd struct{}

func (DevicesCmd) Run(g *Globals) error {
	ok, why := cuda.Available()
	var rep *cuda.Report
	if ok {
		var err error
		if rep, err = cuda.Info(); err != nil {
			ok, why = false, err.Error()
		}
	}
	if g.JSON {
		return g.printJSON(struct {
			CUDA      bool         `json:"cuda"`
			Why       string       `json:"why,omitempty"`
			Report    *cuda.Report `json:"report,omitempty"`
			CPUDevice string       `json:"cpu"`
		}{ok, why, rep, "cpu"})
	}
	if !ok {
		g.say("cuda: not available: %s\ncpu: available (the default when no GPU is usable)\n", why)
		return nil
	}
	g.say("%s\ncpu: available\n", rep.String())
	return nil
}
