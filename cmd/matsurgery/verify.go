package main

import (
	"fmt"
	"time"

	"github.com/matsurgery/matsurgery/backends"
	"github.com/matsurgery/matsurgery/verify"
)

// VerifyCmd is `matsurgery verify`.
type VerifyCmd struct {
	Hybrid  string `arg:"" help:"Hybrid checkpoint directory (written by convert)." type:"existingdir"`
	Teacher string `help:"The teacher it was converted from: checks the mapping against it and that untouched tensors are bit-identical." type:"existingdir"`
	Device  string `help:"Compute device: auto, cpu, cuda, cuda:N." default:"auto"`
	SeqLen  int    `help:"Tokens per random test sequence." default:"256"`
	Batch   int    `help:"Random test sequences per layer." default:"1"`
	Chunk   int    `help:"Chunk length of the chunked scan." default:"64"`
	Seed    uint64 `help:"Seed of the random hidden states." default:"0"`
}

func (c *VerifyCmd) Run(g *Globals) error {
	be, note, err := backends.Open(c.Device)
	if err != nil {
		return err
	}
	defer be.Close()
	if note != "" && !g.Quiet {
		fmt.Fprintln(g.stderr, "note:", note)
	}
	start := time.Now()
	rep, err := verify.Run(g.ctx, verify.Options{Hybrid: c.Hybrid, Teacher: c.Teacher, Backend: be, SeqLen: c.SeqLen,
		Batch: c.Batch, Seed: c.Seed, Chunk: c.Chunk})
	if err != nil {
		return err
	}
	rep.Stages["total"] = time.Since(start).Seconds()
	if g.JSON {
		if err := g.printJSON(rep); err != nil {
			return err
		}
	} else if !g.Quiet {
		rep.WriteText(g.stdout)
	}
	if !rep.Pass {
		if !g.JSON {
			fmt.Fprintln(g.stderr, "matsurgery: verify FAILED:", rep.FirstFailure())
		}
		return exitError{1}
	}
	return nil
}
