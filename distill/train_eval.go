package distill

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/generate"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/prompt"
	"github.com/matsurgery/matsurgery/tokenizer"
)

// EvalResult is a checkpoint's score on a short-answer data set.
type EvalResult struct {
	Checkpoint string   `json:"checkpoint"`
	Samples    int      `json:"samples"`
	Correct    int      `json:"correct"`
	Accuracy   float64  `json:"accuracy"`
	Answers    []string `json:"answers,omitempty"` // the generated answers, in data order
	References []string `json:"references,omitempty"`
}

// EvaluateAnswers asks a checkpoint (teacher or hybrid) the first question
// of each of the first n records of a LLaVA data file (n ≤ 0: all), decodes
// greedily up to maxNew tokens on the CPU and scores the answers against
// the references by their first word (dataset.Accuracy).
func EvaluateAnswers(ctx context.Context, checkpoint, data string, n, maxNew, workers int) (*EvalResult, error) {
	dopts, err := dataset.OptionsFor(checkpoint)
	if err != nil {
		return nil, fmt.Errorf("evaluate %s: %w", checkpoint, err)
	}
	d, err := dataset.Open(data, "", dopts)
	if err != nil {
		return nil, fmt.Errorf("evaluate %s: %w", checkpoint, err)
	}
	defer d.Close()
	tok, err := tokenizer.Load(filepath.Join(checkpoint, "tokenizer.json"))
	if err != nil {
		return nil, fmt.Errorf("evaluate %s: %w", checkpoint, err)
	}
	m, err := model.Load(checkpoint, cpu.New(workers), model.Options{})
	if err != nil {
		return nil, fmt.Errorf("evaluate %s: %w", checkpoint, err)
	}
	defer m.Close()
	if n <= 0 || n > d.Len() {
		n = d.Len()
	}
	if maxNew <= 0 {
		maxNew = 8
	}
	res := &EvalResult{Checkpoint: checkpoint, Samples: n}
	stop := generate.StopIDs(tok)
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rec, err := d.Record(i)
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: %w", checkpoint, err)
		}
		q, ref, err := rec.Question()
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: record %d: %w", checkpoint, i, err)
		}
		smp, err := d.Sample(i)
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: %w", checkpoint, err)
		}
		var ids []int
		if smp.Pixels != nil {
			ids, err = prompt.ForGeneration(m.Config.Family, q, tok)
		} else {
			ids, err = prompt.ForTextGeneration(m.Config.Family, q, tok)
		}
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: record %d: %w", checkpoint, i, err)
		}
		g, err := generate.Run(m, tok, smp.Pixels, ids, generate.Options{MaxNewTokens: maxNew, StopIDs: stop}, func(string) error { return nil })
		if err != nil {
			return nil, fmt.Errorf("evaluate %s: record %d: %w", checkpoint, i, err)
		}
		res.Answers = append(res.Answers, g.Text)
		res.References = append(res.References, ref)
		if dataset.Accuracy(g.Text, ref) {
			res.Correct++
		}
	}
	if n > 0 {
		res.Accuracy = float64(res.Correct) / float64(n)
	}
	return res, nil
}
