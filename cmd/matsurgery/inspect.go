package main

import (
	"fmt"

	"github.com/matsurgery/matsurgery/inspect"
)

// InspectCmd is `matsurgery inspect`.
type InspectCmd struct {
	Dir string `arg:"" help:"Checkpoint directory (teacher or hybrid)." type:"existingdir"`
}

func (c *InspectCmd) Run(g *Globals) error {
	rep, err := inspect.Dir(c.Dir)
	if err != nil {
		return err
	}
	if g.JSON {
		if err := g.printJSON(rep); err != nil {
			return err
		}
	} else if !g.Quiet {
		if err := rep.WriteText(g.stdout); err != nil {
			return err
		}
	}
	if n := rep.Errors(); n > 0 {
		if !g.JSON {
			fmt.Fprintf(g.stderr, "matsurgery: %s: %d problem(s) found\n", c.Dir, n)
		}
		return exitError{1}
	}
	return nil
}
