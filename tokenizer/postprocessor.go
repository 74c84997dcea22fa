package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
)

// postProcessor adds the special tokens around an encoded sequence when asked to.
type postProcessor interface {
	process(ids []int, addSpecial bool) []int
}

func parsePostProcessor(m json.RawMessage) (postProcessor, error) {
	typ, err := componentType(m)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "ByteLevel":
		// It only trims offsets; ids are untouched.
		return byteLevelPost{}, nil
	case "TemplateProcessing":
		tp, err := parseTemplate(m)
		if err != nil {
			return nil, fmt.Errorf("TemplateProcessing: %w", err)
		}
		return tp, nil
	case "Sequence":
		var c struct {
			Processors []json.RawMessage `json:"processors"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("Sequence: %w", err)
		}
		seq := make(postSequence, 0, len(c.Processors))
		for i, sub := range c.Processors {
			p, err := parsePostProcessor(sub)
			if err != nil {
				return nil, fmt.Errorf("Sequence[%d]: %w", i, err)
			}
			seq = append(seq, p)
		}
		return seq, nil
	case "":
		return nil, errors.New("component without a type")
	}
	return nil, fmt.Errorf("post-processor %q is not supported (supported: ByteLevel, TemplateProcessing, Sequence)", typ)
}

type byteLevelPost struct{}

func (byteLevelPost) process(ids []int, _ bool) []int { return ids }

type postSequence []postProcessor

func (q postSequence) process(ids []int, addSpecial bool) []int {
	for _, p := range q {
		ids = p.process(ids, addSpecial)
	}
	return ids
}

// templateProcessing lays out a single sequence as its "single" template says, e.g. "<s> $A".
type templateProcessing struct {
	before, after []int // special ids around the sequence
}

func parseTemplate(m json.RawMessage) (*templateProcessing, error) {
	type ref struct {
		ID     string `json:"id"`
		TypeID int    `json:"type_id"`
	}
	var c struct {
		Single []struct {
			SpecialToken *ref `json:"SpecialToken"`
			Sequence     *ref `json:"Sequence"`
		} `json:"single"`
		SpecialTokens map[string]struct {
			ID  string `json:"id"`
			IDs []int  `json:"ids"`
		} `json:"special_tokens"`
	}
	if err := json.Unmarshal(m, &c); err != nil {
		return nil, err
	}
	tp := &templateProcessing{}
	seen := false
	for i, item := range c.Single {
		switch {
		case item.Sequence != nil:
			if item.Sequence.ID != "A" {
				return nil, fmt.Errorf("single[%d]: sequence %q in the single template (want A)", i, item.Sequence.ID)
			}
			if seen {
				return nil, fmt.Errorf("single[%d]: sequence A appears twice", i)
			}
			seen = true
		case item.SpecialToken != nil:
			st, ok := c.SpecialTokens[item.SpecialToken.ID]
			if !ok {
				return nil, fmt.Errorf("single[%d]: special token %q is not in special_tokens", i, item.SpecialToken.ID)
			}
			if len(st.IDs) == 0 {
				return nil, fmt.Errorf("special token %q has no ids", item.SpecialToken.ID)
			}
			if seen {
				tp.after = append(tp.after, st.IDs...)
			} else {
				tp.before = append(tp.before, st.IDs...)
			}
		default:
			return nil, fmt.Errorf("single[%d]: neither SpecialToken nor Sequence", i)
		}
	}
	if !seen {
		return nil, errors.New("the single template has no $A")
	}
	return tp, nil
}

// checkPostProcessor makes sure every special id a template adds names a token of t.
func checkPostProcessor(p postProcessor, t *Tokenizer) error {
	switch p := p.(type) {
	case *templateProcessing:
		for _, ids := range [][]int{p.before, p.after} {
			for _, id := range ids {
				if _, ok := t.IDToken(id); !ok {
					return fmt.Errorf("TemplateProcessing: special id %d is not a token", id)
				}
			}
		}
	case postSequence:
		for i, sub := range p {
			if err := checkPostProcessor(sub, t); err != nil {
				return fmt.Errorf("Sequence[%d]: %w", i, err)
			}
		}
	}
	return nil
}

func (tp *templateProcessing) process(ids []int, addSpecial bool) []int {
	if !addSpecial {
		return ids
	}
	out := make([]int, 0, len(tp.before)+len(ids)+len(tp.after))
	out = append(out, tp.before...)
	out = append(out, ids...)
	return append(out, tp.after...)
}
