package prompt

import (
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/tokenizer"
)

func TestTextGenerationIDs(t *testing.T) {
	tok, err := tokenizer.Load("../testdata/fixtures/phi-tiny/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := ForTextGeneration(formats.Phi, "What is red?", tok)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, -200) {
		t.Error("text-only prompt holds an image placeholder")
	}
	text := tok.Decode(ids, false)
	if !strings.HasSuffix(text, "USER: What is red? ASSISTANT:") || !strings.HasPrefix(text, "A chat between") {
		t.Errorf("prompt text %q", text)
	}
	withImage, err := ForGeneration(formats.Phi, "What is red?", tok)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(withImage, -200) {
		t.Error("image prompt lacks its placeholder")
	}
	if _, err := ForTextGeneration(formats.Phi, "<image>\nWhat?", tok); err == nil {
		t.Error("placeholder without an image accepted")
	}
}
