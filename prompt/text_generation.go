package prompt

import (
	"fmt"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/tokenizer"
)

// TextGenerationIDs is GenerationIDs for a question asked without a picture:
// the same template, no "<image>" placeholder. A question that holds
// "<image>" is an error (there is no picture to put there).
func (t *Template) TextGenerationIDs(question string, tok *tokenizer.Tokenizer) ([]int, error) {
	special, err := t.lookup(tok)
	if err != nil {
		return nil, err
	}
	ids := tokenizeWithImage(t.text([]string{question}, []*string{nil}), tok, special.bos)
	if n := countPlaceholders(ids); n != 0 {
		return nil, fmt.Errorf("template %s: the question holds %d %q but no image was given", t.Name, n, ImageToken)
	}
	return ids, nil
}

// ForTextGeneration is ForGeneration without a picture.
func ForTextGeneration(family formats.Family, question string, tok *tokenizer.Tokenizer) ([]int, error) {
	t, err := For(family)
	if err != nil {
		return nil, err
	}
	return t.TextGenerationIDs(question, tok)
}
